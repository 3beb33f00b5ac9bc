"""The ``oprm bench`` command: its flags, the plan of cells, one fresh process per cell, and the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from oprm.errors import OPRMUsageError

from .cells import RESULT_MARK

__all__ = ["add_parser", "plan", "run_bench", "spawn_cell", "meta", "parse_ints", "ENGINE_FLAGS"]

# the engine options a bench varies; the others need text (chunks at sentences, IDK word, chat template, a query for
# query_likelihood, a gold for oracle) or are fixed by --modes (mode, max_input_tokens)
ENGINE_FLAGS = ("chunk_size", "overlap", "max_batch_tokens", "shared_prefix", "selection", "lookahead_tokens",
                "decode", "num_decode")
KERNEL_MODES = {"auto": ("auto",), "off": ("off",), "both": ("auto", "off")}


def add_parser(sub) -> None:
    from oprm.cli import add_model_arguments
    from oprm.config import OPRMConfig, add_config_arguments, add_generation_arguments

    from .specs import RANDOM, TINY_RWKV_RUNTIME

    p = sub.add_parser("bench", help="benchmark vanilla vs OPRM: time to first token, speed, memory, tokens")
    add_model_arguments(p, default="tiny-mamba2", thread_sweep=True,
                        model_help=f"{', '.join([*RANDOM, *TINY_RWKV_RUNTIME])} (random weights), a shipped model's "
                                   "name, a model folder / hub id, or an RWKV .pth file")
    p.add_argument("--lengths", default="1024,4096,16384", help="context lengths in tokens, comma-separated")
    p.add_argument("--modes", default="vanilla,oprm", help="vanilla, oprm and/or document (a question on the "
                                                          "context encoded once, read from disk), comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the report gives medians")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the timing cells this many times, the thread counts in alternating order, and take "
                        "medians over every round (a thread sweep on a shared machine)")
    p.add_argument("--prefix-tokens", type=int, default=32, help="|P|")
    p.add_argument("--suffix-tokens", type=int, default=32, help="|S|")
    p.add_argument("--mamba-kernels", choices=tuple(KERNEL_MODES), default="auto",
                   help="Mamba-1 family on CUDA: mamba_ssm's scan when installed (auto), the PyTorch scan (off), "
                        "or both, as separate rows")
    p.add_argument("--no-memory", action="store_true", help="skip the per-mode peak-memory processes")
    p.add_argument("--output-path", default="bench_results", help="folder for bench.json, bench.md and the plots")
    # the default selection: on random token ids (no text, no IDK word) support looks ahead on the first chunk in
    # first-token order only, the cost of its usual case on text (docs/method.md); --selection lookahead: every chunk
    add_config_arguments(p, exclude=tuple(n for n in OPRMConfig.names() if n not in ENGINE_FLAGS))
    add_generation_arguments(p, max_new_tokens=32)
    p.set_defaults(func=run_bench)


def parse_ints(value: str, flag: str) -> list[int]:
    try:
        out = [int(float(x)) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise OPRMUsageError(f"{flag} takes comma-separated integers, got {value!r}") from None
    if not out or min(out) <= 0:
        raise OPRMUsageError(f"{flag} takes positive integers, got {value!r}")
    return out


def plan(args) -> list[dict]:
    """The cells: per length, thread count (and kernel mode), one timing cell (modes interleaved) and one memory
    cell per mode. Every flag is checked here, before any process starts."""
    from oprm.config import OPRMConfig, config_from_args, generation_from_args

    # random token ids: plain token chunks (no text to find sentences in), no tokenizer, no IDK word
    config = config_from_args(args, base=OPRMConfig(chunking="tokens")).replace(idk=None)
    generation = generation_from_args(args)
    lengths = parse_ints(args.lengths, "--lengths")
    threads = parse_ints(args.threads, "--threads") if args.threads else [None]  # None: the family's default
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("vanilla", "oprm", "document"):
            raise OPRMUsageError(f"unknown mode {m!r} in --modes; use vanilla, oprm and/or document")
    if args.repeats <= 0 or args.rounds <= 0 or args.prefix_tokens < 0 or args.suffix_tokens < 0:
        raise OPRMUsageError("--repeats and --rounds must be positive, --prefix-tokens and --suffix-tokens not "
                             "negative")
    specs = []
    for kernels, length, round_, t in _cells(KERNEL_MODES[args.mamba_kernels], lengths, threads, args.rounds):
        base = {"model": args.model, "length": length, "chunk_size": config.chunk_size, "threads": t,
                "max_new_tokens": generation["max_new_tokens"], "prefix_tokens": args.prefix_tokens,
                "suffix_tokens": args.suffix_tokens, "max_batch_tokens": config.max_batch_tokens,
                "dtype": args.dtype, "device": args.device, "mamba_kernels": kernels,
                "engine": config.to_dict(), "generation": generation}
        specs.append(dict(base, kind="timing", modes=modes, repeats=args.repeats, round=round_))
        if round_ == 0 and not args.no_memory:
            specs.extend(dict(base, kind="memory", mode=m) for m in modes)
    return specs


def _cells(kernel_modes, lengths, threads, rounds):
    """(kernels, length, round, threads) in run order: odd rounds walk the thread counts backwards, so drift in the
    machine's load hits every thread count alike."""
    for round_ in range(rounds):
        for kernels in kernel_modes:
            for length in lengths:
                for t in (threads if round_ % 2 == 0 else threads[::-1]):
                    yield kernels, length, round_, t


def spawn_cell(spec: dict, timeout: float | None = None) -> dict:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
               PYTHONWARNINGS="ignore")
    if spec["threads"]:
        env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, "-m", "oprm.bench.cells", "--cell", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise OPRMUsageError(f"bench cell {spec['kind']} N={spec['length']} failed (exit {proc.returncode}): {tail}")


def run_bench(args) -> int:
    from tqdm import tqdm

    from oprm.models import check_device

    from .tables import bench_table, compare, document_table, write_outputs

    specs = plan(args)
    check_device(args.device)  # one line here rather than one failed process per cell
    out_dir = Path(args.output_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    info = meta(args)
    bar = tqdm(specs, desc="oprm bench", unit="cell", file=sys.stderr)
    for spec in bar:
        bar.set_postfix_str(f"{spec['kind']} {spec.get('mode', '')} N={spec['length']} t={spec['threads']}")
        cells.append(spawn_cell(spec))
        write_outputs(out_dir, info, cells)  # after every cell: a long sweep leaves partial results
    rows, files = write_outputs(out_dir, info, cells, plots=True)
    print(bench_table(rows, compare(rows)))
    if any(r["mode"] == "document" for r in rows):
        print("\n" + document_table(rows))
    print(f"\nwrote {', '.join(str(f) for f in files)}" + ("" if len(files) > 2 else " (no plots: matplotlib missing)"))
    return 0


def meta(args) -> dict:
    import platform

    import torch

    from oprm.config import config_from_args

    config = config_from_args(args)
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": args.model,
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "device": args.device or "cpu", "dtype": args.dtype,
            "chunk_size": config.chunk_size, "max_batch_tokens": config.max_batch_tokens,
            "prefix_tokens": args.prefix_tokens, "suffix_tokens": args.suffix_tokens,
            "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "rounds": args.rounds,
            "engine": config.to_dict(),
            "mamba_kernels": args.mamba_kernels,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
