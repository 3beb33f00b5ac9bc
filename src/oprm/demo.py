"""``oprm demo``: the paper's overflow curve (its Fig. 1), offline, on the recurrent model that ships with oprm.

It sweeps the number of facts in an associative-recall document from the model's training length to 64x it, runs
vanilla and OPRM through the ``oprm eval`` runner (so predictions are resumable JSONL with the usual results files),
prints a table, writes a PNG plot and a JSON of the numbers, and walks through one long example chunk by chunk.
``--model smollm2`` runs the same comparison as context extension on SmolLM2-135M-Instruct (a transformer with an
8192-position window) on needle-in-a-haystack documents.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

SHIPPED_MODEL = "oprm-ar-mamba2"
SMOLLM2_CHUNK_SIZE = 2000
# engine options the demo fixes: it compares the modes itself, the AR prompts name the IDK word, --seed seeds both
OWN_FLAGS = ("mode", "max_input_tokens", "idk", "seed")


def add_parser(sub) -> None:
    from .cli import add_model_arguments
    from .config import OPRMConfig, add_config_arguments

    p = sub.add_parser("demo", help="offline demo: vanilla vs OPRM as the context overflows the state")
    add_model_arguments(p, default=SHIPPED_MODEL,
                        model_help=f"shipped model name or folder (default {SHIPPED_MODEL}); 'smollm2' for the GGUF "
                                   "context-extension demo")
    p.add_argument("--samples", type=int, default=None, help="episodes per point (default 25; smollm2: 2)")
    p.add_argument("--multiples", default=None, help="context lengths as multiples of the training length "
                                                     "(default 1,2,4,8,16,32,64)")
    p.add_argument("--output-path", default="oprm-demo", help="folder for predictions, table, plot and JSON")
    p.add_argument("--seed", type=int, default=0, help="seeds the episodes and the engine")
    add_config_arguments(p, exclude=OWN_FLAGS, defaults=OPRMConfig.paper().to_dict(),
                         later={"chunk_size": f"the model's training length; {SMOLLM2_CHUNK_SIZE} for smollm2"})
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
    from .models import resolve_model

    if args.samples is None:
        args.samples = 2 if args.model == "smollm2" else 25
    if args.samples <= 0:
        raise OPRMUsageError(f"--samples must be positive, got {args.samples}")
    if args.chunk_size is None:
        args.chunk_size = SMOLLM2_CHUNK_SIZE if args.model == "smollm2" else training_length(resolve_model(args.model)[0])
    config = config_from_args(args)  # every option checked before the model loads
    _parse_multiples(args.multiples)
    engine = engine_from_args(args, config=config)
    if args.model == "smollm2":
        return _demo_context_extension(args, engine)
    return _demo_overflow(args, engine)


def _demo_overflow(args, engine) -> int:
    from .eval.runner import evaluate
    from .models import resolve_model
    from .report import explain, markdown_table
    from .synthetic.ar import make_ar_episode
    from .synthetic.measure import tokens_per_fact

    start = time.perf_counter()
    folder, _ = resolve_model(args.model)
    train_len = training_length(folder)
    chunk_size = engine.config.chunk_size
    per_fact = tokens_per_fact(engine.tokenizer, 1.0)
    multiples = _parse_multiples(args.multiples)
    facts = [max(1, round(m * train_len / per_fact)) for m in multiples]
    print(f"model {args.model}: trained on documents of <= {train_len} tokens; OPRM chunk size {chunk_size}; "
          f"{args.samples} episodes per point")
    results = evaluate(engine, "ar", modes=("vanilla", "oprm"), chunk_sizes=[chunk_size], output_path=args.output_path,
                       seed=args.seed, model_name=Path(folder).name, plots=True,
                       synthetic_options={"ar_num_facts": facts, "samples_per_setting": args.samples})
    by_mode = {c["config"]["mode"]: c["tasks"]["ar"]["by_setting"] for c in results["configs"].values()}
    rows, points = [], []
    for m, f in zip(multiples, facts):
        van, opr = by_mode["vanilla"].get(str(f)), by_mode["oprm"].get(str(f))
        tokens = round(f * per_fact)
        rows.append([f"{m}x", f, tokens, f"{van:.0f}", f"{opr:.0f}"])
        points.append({"multiple": m, "num_facts": f, "approx_context_tokens": tokens, "vanilla": van, "oprm": opr})
    print()
    print(markdown_table(["length", "facts", "≈ tokens", "vanilla acc %", "OPRM acc %"], rows))

    # one example, chunk by chunk, at 16x the training length (or the longest point below it)
    m = max([x for x in multiples if x <= 16] or multiples[:1])
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
               "seed": args.seed, "points": points, "seconds": round(time.perf_counter() - start, 1),
               "walkthrough": {"question": episode.question, "gold": episode.answer, "vanilla": vanilla.text,
                               "oprm": oprm.text, "chosen": oprm.chosen}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    plot = next(p for p in results["paths"]["plots"] if p.endswith("ar_accuracy_vs_facts.png"))
    print(f"\nwrote {out / 'demo.json'}, {plot} and the predictions under {out}  "
          f"({summary['seconds']:.0f}s)")
    return 0


def _demo_context_extension(args, engine) -> int:
    from .eval.runner import evaluate
    from .report import markdown_table

    start = time.perf_counter()
    chunk_size = engine.config.chunk_size
    window = engine.model.config.max_position_embeddings
    lengths = [int(m * window) for m in ((0.5, 1.5) if not args.multiples else _parse_multiples(args.multiples))]
    print(f"SmolLM2-135M-Instruct: a transformer with a {window}-position window; OPRM chunk size {chunk_size}")
    results = evaluate(engine, "niah_single", modes=("vanilla", "oprm"), chunk_sizes=[chunk_size],
                       output_path=args.output_path, seed=args.seed, model_name="smollm2", max_new_tokens=16,
                       synthetic_options={"lengths": lengths, "samples_per_setting": args.samples,
                                          "haystack": "filler"})
    by_mode = {c["config"]["mode"]: c["tasks"]["niah_single"]["by_setting"] for c in results["configs"].values()}
    rows, points = [], []
    for n in lengths:
        van, opr = by_mode["vanilla"].get(str(n)), by_mode["oprm"].get(str(n))
        rows.append([n, f"{n / window:.1f}x", f"{van:.0f}", f"{opr:.0f}"])
        points.append({"context_tokens": n, "vanilla": van, "oprm": opr})
    print(markdown_table(["context tokens", "× window", "vanilla acc %", "OPRM acc %"], rows))
    out = Path(results["paths"]["root"])
    (out / "demo.json").write_text(json.dumps({"model": "smollm2", "window": window, "chunk_size": chunk_size,
                                               "points": points,
                                               "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    print(f"wrote {out / 'demo.json'} and the predictions under {out}")
    return 0
