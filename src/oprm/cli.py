"""The ``oprm`` command: a thin shell over the Python API.

    oprm ask --model PATH --context FILE --question TEXT [--explain | --json]
    oprm demo | eval | score | bench | train-ar
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import OPRMUsageError


def add_model_arguments(p: argparse.ArgumentParser, *, default: str | None = None, model_help: str | None = None,
                        thread_sweep: bool = False) -> None:
    """The model flags of every command (--model, --dtype, --device, --threads, --trust-remote-code).

    ``default`` makes --model optional; ``thread_sweep`` lets --threads take a comma list (``oprm bench``)."""
    p.add_argument("--model", required=default is None, default=default,
                   help=model_help or "hub id, local folder, .gguf file, or a shipped model's name")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16, bfloat16 or auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    if thread_sweep:
        p.add_argument("--threads", default=None, help="torch CPU threads, comma-separated for a sweep (default: the "
                                                       "measured best for the model's family)")
    else:
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: the measured best for the model's family)")
    p.add_argument("--trust-remote-code", action="store_true")


def engine_from_args(args, config=None, **extra):
    """The engine the flags describe: the model (--model, --dtype, --device, ...) and every OPRMConfig flag
    (or ``config``, when the command builds it itself)."""
    from .config import config_from_args
    from .engine import OPRM
    from .runtime import set_threads

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


# --- ask ----------------------------------------------------------------------------------------------------------
def add_ask(sub) -> None:
    from .config import add_config_arguments, add_generation_arguments

    p = sub.add_parser("ask", help="answer a question about a long text with OPRM")
    add_model_arguments(p)
    p.add_argument("--context", required=True, help="text file with the context, or - for standard input")
    p.add_argument("--question", required=True)
    p.add_argument("--prompt-template", default=None,
                   help="file with a template holding {context} and {input} (default: a QA template with the IDK "
                        "instruction)")
    p.add_argument("--gold-text", default=None, help="--selection oracle: decode from the chunk holding this text")
    p.add_argument("--chunk-parallel", action="store_true",
                   help="under torchrun: share the chunks among the ranks (rank 0 prints)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--explain", action="store_true", help="print the chunk table and the chosen chunk")
    out.add_argument("--json", action="store_true", help="print the whole result as JSON")
    out.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    add_config_arguments(p)
    add_generation_arguments(p)
    p.set_defaults(func=run_ask)


def run_ask(args) -> int:
    from .config import generation_from_args

    context = read_text(args.context, "context")
    if not context.strip():
        raise OPRMUsageError("the context is empty")
    if not args.question.strip():
        raise OPRMUsageError("the question is empty")
    template = read_text(args.prompt_template, "prompt template") if args.prompt_template else None
    if template is not None and "{context}" not in template:
        raise OPRMUsageError("the prompt template must contain {context}")
    if args.selection == "oracle" and not args.gold_text:
        raise OPRMUsageError("--selection oracle needs --gold-text (the text the right chunk holds)")
    parallel = None
    if args.chunk_parallel:  # torchrun --nproc_per_node N -m oprm ask ... --chunk-parallel
        from .parallel import ChunkParallel, init_from_env

        parallel = ChunkParallel() if init_from_env() else None
    engine = engine_from_args(args, chunk_parallel=parallel)
    kwargs = dict(context=context, query=args.question, template=template, gold_text=args.gold_text,
                  **generation_from_args(args))
    if parallel is not None and parallel.rank != 0:  # every rank takes part; rank 0 prints
        engine.generate(**kwargs)
        return 0
    if args.stream:
        for piece in engine.stream(**kwargs):
            print(piece, end="", flush=True)
        print()
        return 0
    result = engine.generate(**kwargs)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    elif args.explain:
        from .report import explain

        print(explain(result, context))
    else:
        print(result.text)
    return 0


# --- entry point --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="oprm", description="OPRM: overflow prevention for recurrent LLMs on long "
                                                              "inputs (Ben-Kish et al., COLM 2025)")
    parser.add_argument("--version", action="version", version=f"oprm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_ask(sub)
    # listed for --help; main() hands its arguments to the training script untouched
    sub.add_parser("train-ar", add_help=False,
                   help="train the shipped associative-recall model (oprm train-ar --help for its options)")
    for module_name in ("oprm.demo", "oprm.eval.cli", "oprm.bench"):  # each room adds its commands
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
        from .train_ar import main as train_ar

        return train_ar(argv[1:])
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
