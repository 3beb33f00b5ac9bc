"""``oprm demo``: the paper's overflow curve (its Fig. 1), offline, on the recurrent model that ships with oprm.

It sweeps the number of facts in an associative-recall document from the model's training length to 64x it and runs
three lines through the ``oprm eval`` runner (so predictions are resumable JSONL with the usual results files):
vanilla, OPRM as the paper configures it (token chunks of the training length, first-token entropy, the IDK filter)
and OPRM with oprm's measured defaults (boundary-safe sentence chunks, look-ahead support selection, the chunk size
measured best on the model; or the options given). It prints a
table, writes a PNG plot and a JSON of the numbers, and walks through one long example chunk by chunk.
``--model smollm2`` runs the same comparison as context extension on SmolLM2-135M-Instruct (a transformer with an
8192-position window): a secret number planted in Moby-Dick at 2x and 4x its window, asked with ``oprm ask``'s
default prompt.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

SHIPPED_MODEL = "oprm-ar-mamba2"
SMOLLM2_CHUNK_SIZE = 2000
# engine options the demo fixes: it compares the modes itself, the AR prompts name the IDK word, --seed seeds both,
# and every document is asked once, so keeping its chunk states would only cost memory (peak RSS 4.3 -> 2.1 GB)
OWN_FLAGS = ("mode", "max_input_tokens", "idk", "seed", "document_cache_bytes", "cache_dir")


def add_parser(sub) -> None:
    from .cli import add_model_arguments
    from .config import add_config_arguments

    p = sub.add_parser("demo", help="offline demo: vanilla vs OPRM as the context overflows the state")
    add_model_arguments(p, default=SHIPPED_MODEL,
                        model_help=f"shipped model name or folder (default {SHIPPED_MODEL}); 'smollm2' for the GGUF "
                                   "context-extension demo")
    p.add_argument("--samples", type=int, default=None, help="episodes per point (default 30; smollm2: 3)")
    p.add_argument("--multiples", default=None, help="context lengths as multiples of the training length "
                                                     "(default 1,2,4,8,16,32,64; smollm2: of its window, 2,4)")
    p.add_argument("--output-path", default="oprm-demo", help="folder for predictions, table, plot and JSON")
    p.add_argument("--seed", type=int, default=0, help="seeds the episodes and the engine")
    add_config_arguments(p, exclude=OWN_FLAGS,
                         later={"chunk_size": "the size measured best on the model (chunk_sizes.json in its folder), "
                                              f"else its training length; {SMOLLM2_CHUNK_SIZE} for smollm2. The paper "
                                              "line always chunks at the training length"})
    p.set_defaults(func=run_demo)


def training_length(folder: str | Path, default: int = 128) -> int:
    """The context length the shipped model was trained on (``max_ctx_tokens`` of its training_meta.json)."""
    path = Path(folder) / "training_meta.json"
    if path.is_file():
        return int(json.loads(path.read_text()).get("max_ctx_tokens", default))
    return default


def _parse_multiples(text: str | None) -> list[int]:
    from .errors import OPRMUsageError
    from .tasks.synthetic import OVERFLOW_MULTIPLES

    if not text:
        return list(OVERFLOW_MULTIPLES)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OPRMUsageError(f"--multiples takes comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise OPRMUsageError("--multiples takes positive integers")
    return values


def run_demo(args) -> int:
    from .cli import engine_from_args
    from .config import config_from_args
    from .errors import OPRMUsageError
    from .models import measured_chunk_size, resolve_model

    if args.samples is None:
        args.samples = 3 if args.model == "smollm2" else 30
    if args.samples <= 0:
        raise OPRMUsageError(f"--samples must be positive, got {args.samples}")
    if args.chunk_size is None and args.model == "smollm2":
        args.chunk_size = SMOLLM2_CHUNK_SIZE
    elif args.chunk_size is None:
        args.chunk_size = measured_chunk_size(args.model) or training_length(resolve_model(args.model)[0])
    config = config_from_args(args).replace(document_cache_bytes=0)  # every option checked before the model loads
    _parse_multiples(args.multiples)
    engine = engine_from_args(args, config=config)
    if args.model == "smollm2":
        return _demo_context_extension(args, engine)
    return _demo_overflow(args, engine)


def _three_lines(engine, task: str, settings: dict, args, paper_chunk_size: int,
                 **eval_options) -> tuple[dict, dict]:
    """Vanilla and OPRM as the paper configures it (chunks of ``paper_chunk_size``), then OPRM with the engine's own
    options (unless they are the paper's): one results folder, accumulated. Returns (by_setting per line, the
    results of the last run)."""
    from .config import IDK_WORD
    from .eval.runner import evaluate

    options = engine.config
    paper = options.replace(chunking="tokens", chunk_size=paper_chunk_size, overlap=0, selection="entropy",
                            idk=IDK_WORD)
    lines = {}
    engine.config = paper
    try:
        results = evaluate(engine, task, modes=("vanilla", "oprm"), chunk_sizes=[paper.chunk_size],
                           output_path=args.output_path, seed=args.seed, synthetic_options=settings, **eval_options)
        names = {c["config"]["mode"]: name for name, c in results["configs"].items()}
        lines["vanilla"], lines["paper"] = names["vanilla"], names["oprm"]
        if options != paper:
            engine.config = options
            results = evaluate(engine, task, modes=("oprm",), chunk_sizes=[options.chunk_size],
                               output_path=args.output_path, seed=args.seed, synthetic_options=settings,
                               **eval_options)
            lines["oprm"] = next(n for n, c in results["configs"].items()
                                 if c["config"]["mode"] == "oprm" and n != lines["paper"])
    finally:
        engine.config = options
    by_line = {line: results["configs"][name]["tasks"][task]["by_setting"] for line, name in lines.items()}
    return by_line, results


def _demo_overflow(args, engine) -> int:
    from .models import resolve_model
    from .report import explain, markdown_table
    from .synthetic.ar import make_ar_episode, tokens_per_fact

    start = time.perf_counter()
    folder, _ = resolve_model(args.model)
    train_len = training_length(folder)
    chunk_size = engine.config.chunk_size
    per_fact = tokens_per_fact(engine.tokenizer, 1.0)
    multiples = _parse_multiples(args.multiples)
    facts = [max(1, round(m * train_len / per_fact)) for m in multiples]
    print(f"model {args.model}: trained on documents of <= {train_len} tokens; OPRM chunk size {chunk_size} "
          f"(the paper line: {train_len}); "
          f"{args.samples} episodes per point")
    by_line, results = _three_lines(engine, "ar", {"ar_num_facts": facts, "samples_per_setting": args.samples}, args,
                                    train_len, model_name=Path(folder).name, plots=True)
    rows, points = [], []
    for m, f in zip(multiples, facts):
        accs = {line: by_line[line].get(str(f)) for line in by_line}
        rows.append([f"{m}x", f, round(f * per_fact)] + [f"{accs[line]:.0f}" for line in by_line])
        points.append({"multiple": m, "num_facts": f, "approx_context_tokens": round(f * per_fact), **accs})
    print()
    print(markdown_table(["length", "facts", "≈ tokens"] + [LINE_NAMES[line] for line in by_line], rows))

    # one example, chunk by chunk: the longest point with at most 16 chunks (or the shortest point)
    m = max([x for x in multiples if x * train_len <= 16 * chunk_size] or multiples[:1])
    episode = make_ar_episode(random.Random(f"{args.seed}-walkthrough"), facts[multiples.index(m)])
    kwargs = dict(episode.prompt_kwargs(), max_new_tokens=8)
    vanilla = engine.generate(mode="vanilla", **kwargs)
    oprm = engine.generate(**kwargs)
    print(f"\nOne example at {m}x the training length ({len(oprm.chunks)} chunks of {chunk_size} tokens)")
    print(f"question: {episode.question}\ngold answer: {episode.answer}\n")
    print(explain(oprm, episode.context, opening_words=16))
    print(f"\nvanilla answer: {vanilla.text!r}    OPRM answer: {oprm.text!r}    gold: {episode.answer!r}")

    out = Path(results["paths"]["root"])
    summary = {"model": args.model, "train_len": train_len, "chunk_size": chunk_size, "samples": args.samples,
               "seed": args.seed, "lines": {line: LINE_NAMES[line] for line in by_line}, "points": points,
               "options": engine.config.to_dict(), "seconds": round(time.perf_counter() - start, 1),
               "walkthrough": {"question": episode.question, "gold": episode.answer, "vanilla": vanilla.text,
                               "oprm": oprm.text, "chosen": oprm.chosen}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    plot = next(p for p in results["paths"]["plots"] if p.endswith("ar_accuracy_vs_facts.png"))
    print(f"\nwrote {out / 'demo.json'}, {plot} and the predictions under {out}  "
          f"({summary['seconds']:.0f}s)")
    return 0


LINE_NAMES = {"vanilla": "vanilla acc %", "paper": "OPRM (paper) acc %", "oprm": "OPRM (oprm) acc %"}


def _demo_context_extension(args, engine) -> int:
    from .report import markdown_table

    start = time.perf_counter()
    chunk_size = engine.config.chunk_size
    window = engine.model.config.max_position_embeddings
    multiples = [2, 4] if not args.multiples else _parse_multiples(args.multiples)
    lengths = [int(m * window) for m in multiples]
    print(f"SmolLM2-135M-Instruct: a transformer with a {window}-position window; OPRM chunk size {chunk_size}; "
          f"{args.samples} episodes per point")
    by_line, results = _three_lines(engine, "secret_number", {"lengths": lengths, "samples_per_setting": args.samples},
                                    args, chunk_size, model_name="smollm2", max_new_tokens=24)
    rows, points = [], []
    for n in lengths:
        accs = {line: by_line[line].get(str(n)) for line in by_line}
        rows.append([n, f"{n / window:.0f}x"] + [f"{accs[line]:.0f}" for line in by_line])
        points.append({"context_tokens": n, **accs})
    print(markdown_table(["context tokens", "× window"] + [LINE_NAMES[line] for line in by_line], rows))
    out = Path(results["paths"]["root"])
    (out / "demo.json").write_text(json.dumps({"model": "smollm2", "window": window, "chunk_size": chunk_size,
                                               "samples": args.samples, "points": points,
                                               "options": engine.config.to_dict(),
                                               "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    print(f"wrote {out / 'demo.json'} and the predictions under {out}")
    return 0
