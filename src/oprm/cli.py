"""The ``oprm`` command: a thin shell over the Python API.

    oprm ask --model PATH --context FILE --question TEXT [--question ...] [--explain | --json]
    oprm encode --model PATH --context FILE --output doc.oprm;  oprm ask --document doc.oprm --question TEXT
    oprm demo | eval | score | bench | train-ar | serve | lm-eval
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import OPRMUsageError


def add_model_arguments(p: argparse.ArgumentParser, *, default: str | None = None, model_help: str | None = None,
                        thread_sweep: bool = False, required: bool = True) -> None:
    """The model flags of every command (--model, --dtype, --device, --threads, --trust-remote-code).

    ``default`` (or ``required=False``) makes --model optional; ``thread_sweep`` lets --threads take a comma list
    (``oprm bench``)."""
    p.add_argument("--model", required=required and default is None, default=default,
                   help=model_help or "hub id, local folder, .gguf file, or a shipped model's name")
    p.add_argument("--dtype", default="auto", help="auto (default: bfloat16 for the families measured faster in it "
                                                   "on CPUs with native bf16 matmul, else float32; docs/speed.md), "
                                                   "float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    if thread_sweep:
        p.add_argument("--threads", default=None, help="torch CPU threads, comma-separated for a sweep (default: the "
                                                       "measured best for the model's family)")
    else:
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: the measured best for the model's family)")
    p.add_argument("--trust-remote-code", action="store_true")


# the --chunk-size default of ask, encode and serve
MEASURED_CHUNK_SIZE = "the size measured best on the model (chunk_sizes.json in its folder), else 2000"
# one question in a process that ends after it: no later question reads a memory cache, and without one the
# chunks of the default `support` selection run tier by tier (docs/speed.md)
ONE_SHOT_CACHE = "0 for one question without a cache folder, else 1 GiB"


def engine_from_args(args, config=None, **extra):
    """The engine the flags describe: the model (--model, --dtype, --device, ...) and every OPRMConfig flag
    (or ``config``, when the command builds it itself)."""
    from .config import config_from_args
    from .engine import OPRM
    from .runtime import set_threads

    if getattr(args, "chunk_size", 0) is None:  # --chunk-size not given: the model's measured best, else the default
        from .models import default_chunk_size

        args.chunk_size = default_chunk_size(args.model)
    config = config or config_from_args(args)  # every option checked before the model loads
    set_threads(args.threads)  # loading (e.g. GGUF de-quantization) runs on these threads too
    engine = OPRM.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                  trust_remote_code=args.trust_remote_code, config=config, **extra)
    set_threads(args.threads, engine.model)  # the default depends on the architecture family
    return engine


def read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise OPRMUsageError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OPRMUsageError(f"cannot read {what} file {path}: {e}") from None


# --- ask and encode ---------------------------------------------------------------------------------------------
def add_ask(sub) -> None:
    from .config import add_config_arguments, add_generation_arguments

    p = sub.add_parser("ask", help="answer questions about a long text with OPRM")
    add_model_arguments(p, required=False)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="text file with the context, or - for standard input")
    source.add_argument("--document", help="a document made by `oprm encode` (its --model is the default)")
    p.add_argument("--question", action="append", default=[], help="the question (repeatable: all are answered "
                                                                    "from one encoding of the context)")
    p.add_argument("--questions", default=None, help="file with one question per line")
    p.add_argument("--prompt-template", default=None,
                   help="file with a template holding {context} and {input} (default: a QA template with the IDK "
                        "instruction)")
    p.add_argument("--gold-text", default=None, help="--selection oracle: decode from the chunk holding this text")
    p.add_argument("--chunk-parallel", action="store_true",
                   help="under torchrun: share the chunks among the ranks (rank 0 prints)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--explain", action="store_true", help="print the chunk table and the chosen chunk")
    out.add_argument("--json", action="store_true", help="print the result as JSON (one line per question when "
                                                         "there are several)")
    out.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    add_config_arguments(p, later={"chunk_size": MEASURED_CHUNK_SIZE, "document_cache_bytes": ONE_SHOT_CACHE})
    add_generation_arguments(p)
    p.set_defaults(func=run_ask)


def _questions(args) -> list[str]:
    questions = list(args.question)
    if args.questions:
        questions += [q.strip() for q in read_text(args.questions, "questions").splitlines() if q.strip()]
    if not questions:
        raise OPRMUsageError("give a question (--question TEXT, repeatable, or --questions FILE)")
    if any(not q.strip() for q in questions):
        raise OPRMUsageError("the question is empty")
    return questions


def _template(args) -> str | None:
    template = read_text(args.prompt_template, "prompt template") if args.prompt_template else None
    if template is not None and "{context}" not in template:
        raise OPRMUsageError("the prompt template must contain {context}")
    return template


def run_ask(args) -> int:
    from .config import generation_from_args
    from .selection import selector_class

    questions = _questions(args)
    template = _template(args)
    generation = generation_from_args(args)  # checked before the model loads
    if "gold" in selector_class(args.selection).needs and not args.gold_text:
        raise OPRMUsageError(f"--selection {args.selection} needs --gold-text (the text the right chunk holds)")
    source: dict = {}
    if args.document:
        from .config import OPRMConfig
        from .document import EncodedDocument
        from .engine import CHUNKING_OPTIONS

        source["document"] = EncodedDocument.load(args.document)
        args.model = args.model or source["document"].meta["model"]
        # chunking flags given explicitly must match the document's (it fixes the chunks)
        source.update({k: getattr(args, k) for k in CHUNKING_OPTIONS
                       if getattr(args, k) not in (None, getattr(OPRMConfig(), k))})
    else:
        source["context"] = read_text(args.context, "context")
        if not source["context"].strip():
            raise OPRMUsageError("the context is empty")
    if not args.model:
        raise OPRMUsageError("--model is needed with --context")
    if args.document_cache_bytes is None:
        from .config import OPRMConfig
        from .run import cache_folder

        one_shot = len(questions) == 1 and not cache_folder(OPRMConfig(cache_dir=args.cache_dir))
        args.document_cache_bytes = 0 if one_shot else OPRMConfig().document_cache_bytes
    parallel = None
    if args.chunk_parallel:  # torchrun --nproc_per_node N -m oprm ask ... --chunk-parallel
        from .parallel import ChunkParallel, init_from_env

        parallel = ChunkParallel() if init_from_env() else None
    engine = engine_from_args(args, chunk_parallel=parallel)
    kwargs = dict(source, template=template, gold_text=args.gold_text, **generation)
    if parallel is not None and parallel.rank != 0:  # every rank takes part; rank 0 prints
        for q in questions:
            engine.generate(query=q, **kwargs)
        return 0
    if len(questions) > 1:
        return _answer_many(engine, questions, kwargs, args)
    if args.stream:
        for piece in engine.stream(query=questions[0], **kwargs):
            print(piece, end="", flush=True)
        print()
        return 0
    result = engine.generate(query=questions[0], **kwargs)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    elif args.explain:
        from .report import explain

        print(explain(result, source.get("context") or source["document"].context_text))
    else:
        print(result.text)
    return 0


def _answer_many(engine, questions: list[str], kwargs: dict, args) -> int:
    """Several questions on one context: the first encodes it (the document cache), the others reuse it."""
    from tqdm import tqdm

    from .report import markdown_table

    rows = []
    for q in tqdm(questions, desc="questions", unit="q", file=sys.stderr, disable=len(questions) < 3):
        result = engine.generate(query=q, **kwargs)
        if args.json:
            print(json.dumps({"question": q, **result.to_dict()}, ensure_ascii=False), flush=True)
        rows.append([q.replace("|", "\\|"), result.text.replace("|", "\\|").replace("\n", " "),
                     ",".join(map(str, result.chosen)) or "-", f"{result.timings['total']:.2f}"])
    if not args.json:
        print(markdown_table(["question", "answer", "chunk", "seconds"], rows))
    return 0


def add_encode(sub) -> None:
    from .config import add_config_arguments

    p = sub.add_parser("encode", help="prefill a long text once and save its chunk states (for `oprm ask --document`)")
    add_model_arguments(p)
    p.add_argument("--context", required=True, help="text file with the context, or - for standard input")
    p.add_argument("--output", required=True, help="the document file to write (e.g. report.oprm)")
    p.add_argument("--prompt-template", default=None, help="file with a template holding {context} and {input}; "
                                                           "questions must use the same one")
    add_config_arguments(p, exclude=("mode", "decode", "num_decode", "selection", "idk_fallback", "max_input_tokens",
                                     "top_k_tokens", "seed", "document_cache_bytes", "cache_dir"),
                         later={"chunk_size": MEASURED_CHUNK_SIZE})
    p.set_defaults(func=run_encode)


def run_encode(args) -> int:
    import time

    context = read_text(args.context, "context")
    if not context.strip():
        raise OPRMUsageError("the context is empty")
    template = _template(args)
    from .document_file import writable_path

    writable_path(args.output)
    engine = engine_from_args(args)
    start = time.perf_counter()
    doc = engine.encode(context, template=template)
    seconds = time.perf_counter() - start
    path = doc.save(args.output)
    print(f"{path}: {len(doc.context_ids):,} context tokens, {len(doc.chunks)} chunks of {doc.meta['chunk_size']}, "
          f"{os.path.getsize(path) / 2**20:.1f} MB ({doc.nbytes / max(1, len(doc.held)) / 2**10:.1f} KB of state per "
          f"chunk), encoded in {seconds:.1f} s")
    return 0


# --- entry point --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="oprm", description="OPRM: overflow prevention for recurrent LLMs on long "
                                                              "inputs (Ben-Kish et al., COLM 2025)")
    parser.add_argument("--version", action="version", version=f"oprm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_ask(sub)
    add_encode(sub)
    # listed for --help; main() hands its arguments to the training script untouched
    sub.add_parser("train-ar", add_help=False,
                   help="train the shipped associative-recall model (oprm train-ar --help for its options)")
    sub.add_parser("lm-eval", add_help=False,  # main() hands its arguments to lm-eval's CLI
                   help="run lm-evaluation-harness with OPRM as the model (oprm lm-eval --help for its options)")
    for module_name in ("oprm.demo", "oprm.eval.cli", "oprm.bench", "oprm.serve"):  # each room adds its commands
        try:
            module = __import__(module_name, fromlist=["add_parser"])
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    if "TRANSFORMERS_VERBOSITY" not in os.environ:  # transformers is imported already: the variable comes too late
        hf_logging.set_verbosity_error()  # config warnings would break one-line errors and piped output
    hf_logging.disable_progress_bar()  # so would loading bars
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-ar"]:
        from .training.train import main as train_ar

        return train_ar(argv[1:])
    if argv[:1] == ["lm-eval"]:  # serve/lm-eval hook
        from .lm_eval_model import main as lm_eval_main

        try:
            return lm_eval_main(argv[1:])
        except OPRMUsageError as e:
            print(f"oprm: error: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except OPRMUsageError as e:
        print(f"oprm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oprm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
