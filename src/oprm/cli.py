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


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id, local folder, .gguf file, or a shipped model's name")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16, bfloat16 or auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: measured best)")
    p.add_argument("--trust-remote-code", action="store_true")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    from .selection import SELECTIONS

    p.add_argument("--chunk-size", type=int, default=2000, help="tokens per chunk (default 2000)")
    p.add_argument("--overlap", type=int, default=0, help="tokens shared by neighbouring chunks")
    p.add_argument("--selection", default="entropy", choices=SELECTIONS)
    idk = p.add_mutually_exclusive_group()
    idk.add_argument("--idk", default="Error", help='the IDK word of the prompt and filter (default "Error")')
    idk.add_argument("--no-idk", action="store_true", help="no IDK instruction and no IDK filter")
    p.add_argument("--idk-fallback", default="answer", choices=("answer", "min_entropy"),
                   help="when every chunk says IDK: answer the IDK word, or decode the lowest-entropy chunk")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="tokens per prefill micro-batch (default 8192 on CPU, 32768 on GPU)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the tokenizer's chat template")


def engine_from_args(args):
    from .engine import OPRM, set_threads

    set_threads(args.threads)
    if args.chunk_size <= 0:
        raise OPRMUsageError(f"--chunk-size must be positive, got {args.chunk_size}")
    return OPRM.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
        chunk_size=args.chunk_size, overlap=args.overlap, selection=args.selection,
        idk=None if args.no_idk else args.idk, idk_fallback=args.idk_fallback,
        max_batch_tokens=args.max_batch_tokens, chat=not args.no_chat)


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
    p = sub.add_parser("ask", help="answer a question about a long text with OPRM")
    add_model_arguments(p)
    p.add_argument("--context", required=True, help="text file with the context, or - for standard input")
    p.add_argument("--question", required=True)
    p.add_argument("--prompt-template", default=None,
                   help="file with a template holding {context} and {input} (default: a QA template with the IDK "
                        "instruction)")
    add_engine_arguments(p)
    p.add_argument("--mode", default="oprm", choices=("oprm", "vanilla", "truncate"))
    p.add_argument("--max-input-tokens", type=int, default=None, help="truncate mode: token budget")
    p.add_argument("--decode", default="one", choices=("one", "all", "top_k"))
    p.add_argument("--num-decode", type=int, default=1, help="decode=top_k: how many chunks")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-parallel", action="store_true",
                   help="under torchrun: share the chunks among the ranks (rank 0 prints)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--explain", action="store_true", help="print the chunk table and the chosen chunk")
    out.add_argument("--json", action="store_true", help="print the whole result as JSON")
    out.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.set_defaults(func=run_ask)


def run_ask(args) -> int:
    context = read_text(args.context, "context")
    if not context.strip():
        raise OPRMUsageError("the context is empty")
    template = read_text(args.prompt_template, "prompt template") if args.prompt_template else None
    if template is not None and "{context}" not in template:
        raise OPRMUsageError("the prompt template must contain {context}")
    parallel = None
    if args.chunk_parallel:  # torchrun --nproc_per_node N -m oprm ask ... --chunk-parallel
        from .parallel import ChunkParallel, init_from_env

        parallel = ChunkParallel() if init_from_env() else None
    engine = engine_from_args(args)
    engine.chunk_parallel = parallel
    kwargs = dict(context=context, query=args.question, template=template, mode=args.mode,
                  max_input_tokens=args.max_input_tokens, decode=args.decode, num_decode=args.num_decode,
                  max_new_tokens=args.max_new_tokens, do_sample=args.do_sample or None,
                  temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  repetition_penalty=args.repetition_penalty, stop_strings=args.stop, seed=args.seed)
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
    for module_name in ("oprm.demo", "oprm.evaluate", "oprm.bench"):  # each room adds its commands
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
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading bars would break one-line errors and piped output
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
