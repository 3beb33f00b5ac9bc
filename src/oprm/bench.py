"""``oprm bench``: time to first token, prefill and decode speed, peak memory and tokens processed, vanilla vs OPRM.

    oprm bench --model tiny-mamba2 --lengths 1024,4096,16384,65536 --modes vanilla,oprm --repeats 3
    oprm bench --model tiny-mamba2 --lengths 1048576 --modes oprm --repeats 1          # streaming to 1M tokens
    oprm bench --model tiny-mamba --lengths 8192 --threads 1,2                          # thread sweep

A benchmark, not a test. ``--model`` is a tiny random-weight config (``tiny-mamba``, ``tiny-mamba2``, ``tiny-rwkv``,
``tiny-zamba2``; ``tiny-rwkv6`` / ``tiny-rwkv7`` on the `rwkv` runtime), a shipped model's name, a transformers model
folder / hub id, or an RWKV ``.pth`` file. The input is random token ids (``|P|`` prefix, ``N`` context, ``|S|``
suffix tokens), so any vocabulary works and no tokenizer is needed.

Per context length (and thread count) one fresh process times the modes interleaved (vanilla, OPRM, OPRM, vanilla,
...: load drift hits both alike) after one short warm-up call per mode, ``--repeats`` times each; the report gives
medians. Time to first token is taken when the first answer token reaches a streamer (wall and process CPU time).
Peak memory comes from one more call per mode, each in its own fresh process, so peaks never leak between cells:
RSS after loading and the RSS high-water mark (CUDA peak on a GPU).

Outputs (``--output-path``): ``bench.json`` (every run), ``bench.md`` (the median table), ``bench_time.png`` and
``bench_memory.png`` (time to first token and peak memory vs context length, log-log).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .errors import OPRMUsageError

RESULT_MARK = "OPRM_BENCH_RESULT "

# tiny random-weight configs, sized like the scaled-down research configs (hidden 256, 4 layers, vocab 1000);
# Mamba2-family SSD chunk 64 and state 16 (the shipped AR model uses chunk 64): the CPU reference SSD path costs
# ~2x per doubling of either, and these keep a 1M-token run within minutes on one thread
TINY = {
    "tiny-mamba": ("MambaConfig", dict(hidden_size=256, num_hidden_layers=4, state_size=16, expand=2,
                                       conv_kernel=4)),
    "tiny-mamba2": ("Mamba2Config", dict(hidden_size=256, num_hidden_layers=4, state_size=16, expand=2,
                                         head_dim=64, num_heads=8, n_groups=1, conv_kernel=4, chunk_size=64)),
    "tiny-rwkv": ("RwkvConfig", dict(hidden_size=256, num_hidden_layers=4, attention_hidden_size=256,
                                     intermediate_size=1024, context_length=1 << 21)),
    "tiny-zamba2": ("Zamba2Config", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                         num_key_value_heads=4, intermediate_size=512, mamba_d_state=16,
                                         mamba_expand=2, mamba_headdim=64, mamba_ngroups=1, n_mamba_heads=8,
                                         chunk_size=64, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"])),
}
TINY_VOCAB = 1000
# RWKV v6 / v7 on the official `rwkv` runtime: a random checkpoint in the released layout, sized like tiny-rwkv
TINY_RWKV_RUNTIME = {"tiny-rwkv6": "6", "tiny-rwkv7": "7"}


# --- one cell, in its own process ---------------------------------------------------------------------------------
def load_model(name: str, dtype: str = "float32", device: str | None = None):
    import torch
    import transformers as tf

    rwkv_runtime = name in TINY_RWKV_RUNTIME or name.endswith(".pth")  # the device goes into its strategy
    if rwkv_runtime:
        model = _load_rwkv_runtime(name, dtype, device)
    elif name in TINY:
        cls_name, kwargs = TINY[name]
        config = getattr(tf, cls_name)(vocab_size=TINY_VOCAB, tie_word_embeddings=False, pad_token_id=0,
                                       bos_token_id=1, eos_token_id=2, **kwargs)
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    else:
        from .models import resolve_model

        path, gguf_file = resolve_model(name)
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    if device and not rwkv_runtime:
        model = model.to(device)
    model.generation_config.eos_token_id = None  # always decode max_new_tokens tokens
    return model.eval()


def _load_rwkv_runtime(name: str, dtype: str, device: str | None):
    """An RWKV ``.pth`` file on the `rwkv` runtime; ``tiny-rwkv6`` / ``tiny-rwkv7`` are written to a temporary
    folder first (hidden 256, 4 layers, head size 64, vocabulary 1000)."""
    import tempfile

    from .adapters.rwkv_runtime import load_rwkv_runtime

    if name not in TINY_RWKV_RUNTIME:
        from .models import resolve_model

        return load_rwkv_runtime(resolve_model(name)[0], dtype, device)[0]
    from .adapters.rwkv_checkpoint import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        path = write_tiny_checkpoint(os.path.join(folder, f"{name}.pth"), TINY_RWKV_RUNTIME[name], n_embd=256,
                                     n_layer=4, vocab_size=TINY_VOCAB)
        return load_rwkv_runtime(path, dtype, device)[0]


def make_input(vocab_size: int, context_tokens: int, prefix_tokens: int, suffix_tokens: int, seed: int = 0):
    """Random (P, C, S) token ids, avoiding the lowest ids (usually special tokens)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = min(4, vocab_size - 1)

    def ids(n):
        return torch.randint(low, vocab_size, (n,), generator=g).tolist()

    return ids(prefix_tokens), ids(context_tokens), ids(suffix_tokens)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _FirstToken:
    """A streamer that notes when the first answer token arrives (its first ``put`` is the prompt)."""

    def __init__(self):
        self.puts, self.wall, self.cpu = 0, None, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def end(self):
        pass


def _setup(spec: dict):
    import torch

    torch.set_num_threads(spec["threads"])
    from .engine import OPRM

    model = load_model(spec["model"], spec.get("dtype", "float32"), spec.get("device"))
    engine = OPRM(model, None, chunk_size=spec["chunk_size"], idk=None, max_batch_tokens=spec["max_batch_tokens"],
                  document_cache_bytes=0)  # every timed call prefills from scratch
    vocab = (model.config.vocab_size if model.config.model_type == "rwkv_runtime"
             else model.get_output_embeddings().weight.shape[0])
    prefix, context, suffix = make_input(vocab, spec["length"], spec["prefix_tokens"], spec["suffix_tokens"])
    return model, engine, (prefix, context, suffix)


def _call(engine, spec, mode, prefix, context, suffix) -> dict:
    import torch

    cuda = engine.adapter.device.type == "cuda"
    first = _FirstToken()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = engine.generate(prefix_ids=prefix, context_ids=context, suffix_ids=suffix, mode=mode,
                             max_new_tokens=spec["max_new_tokens"], streamer=first)
    if cuda:
        torch.cuda.synchronize()
    t = result.timings
    return {"mode": mode, "ttft_s": first.wall - wall0, "ttft_cpu_s": first.cpu - cpu0,
            "cpu_s": time.process_time() - cpu0, "prefill_s": t["prefill"], "selection_s": t["selection"],
            "decode_s": t["decode"], "total_s": t["total"], "generated": len(result.token_ids),
            "tokens_processed": result.tokens_processed,
            "num_chunks": len(result.chunks) if mode == "oprm" else 1}


def run_timing(spec: dict) -> dict:
    """Time every mode in one process, interleaved (A B, B A, A B, ...) so load drift hits all modes alike."""
    import torch

    model, engine, (prefix, context, suffix) = _setup(spec)
    warm = context[: min(len(context), 2 * spec["chunk_size"])]
    for mode in spec["modes"]:
        _call(engine, spec, mode, prefix, warm, suffix)
    runs = []
    for r in range(spec["repeats"]):
        for mode in (spec["modes"] if r % 2 == 0 else spec["modes"][::-1]):
            runs.append(_call(engine, spec, mode, prefix, context, suffix))
    return dict(spec, kind="timing", runs=runs, torch_threads=torch.get_num_threads(),
                params=sum(p.numel() for p in model.parameters()))


def run_memory(spec: dict) -> dict:
    """Peak memory of one mode in a fresh process: RSS after loading, then the high-water mark of one call."""
    import resource

    import torch

    model, engine, (prefix, context, suffix) = _setup(spec)
    cuda = engine.adapter.device.type == "cuda"
    rss_loaded = _rss_kb("VmRSS")
    _call(engine, spec, spec["mode"], prefix, context[: min(len(context), 2 * spec["chunk_size"])], suffix)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run = _call(engine, spec, spec["mode"], prefix, context, suffix)
    # a high-water mark is never below an earlier reading (the two counters are sampled differently by the kernel)
    peak_kb = max(_rss_kb("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_loaded)
    out = dict(spec, kind="memory", run=run, rss_loaded_mb=rss_loaded / 1024, peak_rss_mb=peak_kb / 1024,
               weights_mb=sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20)
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def summarize(timing: dict | None, memory: dict | None, mode: str) -> dict:
    """Medians over a mode's runs, its memory, and the tokens-processed floor N + b*|S| + |P| (b = 1 for vanilla)."""
    cell = timing or memory
    runs = [r for r in timing["runs"] if r["mode"] == mode] if timing else [memory["run"]]

    def med(key):
        return statistics.median(r[key] for r in runs)

    r0 = runs[0]
    decode_steps = max(0, r0["generated"] - 1)
    prefill_tokens = r0["tokens_processed"] - decode_steps
    floor = cell["length"] + r0["num_chunks"] * cell["suffix_tokens"] + cell["prefix_tokens"]
    row = {k: cell[k] for k in ("model", "length", "chunk_size", "threads")}
    row.update(mode=mode, repeats=len(runs), ttft_s=med("ttft_s"), ttft_cpu_s=med("ttft_cpu_s"),
               prefill_s=med("prefill_s"), decode_s=med("decode_s"), total_s=med("total_s"),
               prefill_tok_s=prefill_tokens / med("prefill_s") if med("prefill_s") > 0 else None,
               decode_tok_s=decode_steps / med("decode_s") if decode_steps and med("decode_s") > 0 else None,
               num_chunks=r0["num_chunks"], tokens_processed=r0["tokens_processed"], prefill_tokens=prefill_tokens,
               floor=floor, floor_ratio=prefill_tokens / floor)
    for key in ("peak_rss_mb", "rss_loaded_mb", "weights_mb", "cuda_peak_mb"):
        row[key] = memory.get(key) if memory else None
    row["above_loaded_mb"] = memory["peak_rss_mb"] - memory["rss_loaded_mb"] if memory else None
    return row


def compare(rows: list[dict]) -> list[dict]:
    """OPRM / vanilla ratios per (model, length, threads) where both modes ran."""
    by_key = {(r["model"], r["length"], r["threads"], r["mode"]): r for r in rows}
    out = []
    for (model, length, threads, mode), o in by_key.items():
        v = by_key.get((model, length, threads, "vanilla"))
        if mode != "oprm" or v is None:
            continue

        def ratio(key):
            return o[key] / v[key] if o.get(key) and v.get(key) else None

        out.append({"model": model, "length": length, "threads": threads, "ttft_ratio": ratio("ttft_s"),
                    "ttft_cpu_ratio": ratio("ttft_cpu_s"), "decode_ratio": ratio("decode_tok_s"),
                    "peak_ratio": ratio("peak_rss_mb"), "above_loaded_ratio": ratio("above_loaded_mb")})
    return out


# --- the driver ---------------------------------------------------------------------------------------------------
def spawn_cell(spec: dict, timeout: float | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "oprm.bench", "--cell", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"bench cell {spec['kind']} N={spec['length']} failed (exit {proc.returncode}): {tail}")


def plan(args) -> list[dict]:
    """The cells: per length and thread count, one timing cell (modes interleaved) and one memory cell per mode."""
    lengths = _ints(args.lengths, "--lengths")
    threads = _ints(args.threads, "--threads") if args.threads else [_default_threads()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("vanilla", "oprm"):
            raise OPRMUsageError(f"unknown mode {m!r} in --modes; use vanilla and/or oprm")
    if args.chunk_size <= 0 or args.repeats <= 0:
        raise OPRMUsageError("--chunk-size and --repeats must be positive")
    specs = []
    for length in lengths:
        for t in threads:
            base = {"model": args.model, "length": length, "chunk_size": args.chunk_size, "threads": t,
                    "max_new_tokens": args.max_new_tokens, "prefix_tokens": args.prefix_tokens,
                    "suffix_tokens": args.suffix_tokens, "max_batch_tokens": args.max_batch_tokens,
                    "dtype": args.dtype, "device": args.device}
            specs.append(dict(base, kind="timing", modes=modes, repeats=args.repeats))
            if not args.no_memory:
                specs.extend(dict(base, kind="memory", mode=m) for m in modes)
    return specs


def run_bench(args) -> int:
    from tqdm import tqdm

    specs = plan(args)
    out_dir = Path(args.output_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    meta = _meta(args)
    bar = tqdm(specs, desc="oprm bench", unit="cell", file=sys.stderr)
    for spec in bar:
        bar.set_postfix_str(f"{spec['kind']} {spec.get('mode', '')} N={spec['length']} t={spec['threads']}")
        cells.append(spawn_cell(spec))
        _write(out_dir, meta, cells)  # after every cell: a long sweep leaves partial results
    rows = _write(out_dir, meta, cells, plots=True)
    print(markdown_table(rows, compare(rows)))
    print(f"\nwrote {out_dir / 'bench.json'}, bench.md, bench_time.png, bench_memory.png")
    return 0


def rows_from_cells(cells: list[dict]) -> list[dict]:
    groups: dict = {}
    for c in cells:
        g = groups.setdefault((c["model"], c["length"], c["threads"]), {"timing": None, "memory": {}})
        if c["kind"] == "timing":
            g["timing"] = c
        else:
            g["memory"][c["mode"]] = c
    rows = []
    for g in groups.values():
        modes = g["timing"]["modes"] if g["timing"] else list(g["memory"])
        rows.extend(summarize(g["timing"], g["memory"].get(m), m) for m in modes
                    if g["timing"] or m in g["memory"])
    return rows


def _write(out_dir: Path, meta: dict, cells, plots: bool = False) -> list[dict]:
    rows = rows_from_cells(cells)
    comparisons = compare(rows)
    (out_dir / "bench.json").write_text(json.dumps({"meta": meta, "summary": rows, "oprm_vs_vanilla": comparisons,
                                                    "cells": cells}, indent=1))
    (out_dir / "bench.md").write_text(markdown_table(rows, comparisons, meta) + "\n\n" + compact_table(rows) + "\n")
    if plots:
        make_plots(rows, out_dir)
    return rows


def _meta(args) -> dict:
    import platform

    import torch

    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": args.model,
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "device": args.device or "cpu", "dtype": args.dtype,
            "chunk_size": args.chunk_size, "max_batch_tokens": args.max_batch_tokens,
            "prefix_tokens": args.prefix_tokens, "suffix_tokens": args.suffix_tokens,
            "max_new_tokens": args.max_new_tokens, "repeats": args.repeats}


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def markdown_table(rows: list[dict], comparisons: list[dict], meta: dict | None = None) -> str:
    ratio = {(c["model"], c["length"], c["threads"]): c for c in comparisons}
    lines = []
    if meta:
        lines.append(f"`oprm bench` {meta['date']}: model {meta['model']}, {meta['device']} {meta['dtype']}, "
                     f"{meta['cpu_count']} cores, chunk {meta['chunk_size']}, |P|={meta['prefix_tokens']}, "
                     f"|S|={meta['suffix_tokens']}, {meta['max_new_tokens']} new tokens, max_batch_tokens "
                     f"{meta['max_batch_tokens'] or 'default'}; medians of the repeats (modes interleaved in one process); "
                     f"memory from one call in a fresh process per mode\n")
    lines.append("| model | mode | N | threads | runs | TTFT s | OPRM/vanilla TTFT (wall; CPU) | prefill tok/s | "
                 "decode tok/s | peak RSS MB | above loaded MB | tokens / floor |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = ratio.get((r["model"], r["length"], r["threads"])) if r["mode"] == "oprm" else None
        rel = f"{_fmt(c['ttft_ratio'], 2)}; {_fmt(c['ttft_cpu_ratio'], 2)}" if c else "-"
        mem = _fmt(r["peak_rss_mb"], 4) + (f" (CUDA {_fmt(r['cuda_peak_mb'], 4)})" if r.get("cuda_peak_mb") else "")
        lines.append(f"| {r['model']} | {r['mode']} | {r['length']:,} | {r['threads']} | {r['repeats']} | "
                     f"{_fmt(r['ttft_s'])} | {rel} | {_fmt(r['prefill_tok_s'])} | {_fmt(r['decode_tok_s'])} | "
                     f"{mem} | {_fmt(r['above_loaded_mb'], 4)} | "
                     f"{r['prefill_tokens']:,} / {r['floor']:,} = {r['floor_ratio']:.3f} |")
    return "\n".join(lines)


def compact_table(rows: list[dict]) -> str:
    """One line per (model, N, threads): vanilla | OPRM side by side (the README's format)."""
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["model"], r["length"], r["threads"]), {})[r["mode"]] = r
    lines = ["| model | N | threads | TTFT s vanilla / OPRM | OPRM/vanilla TTFT wall (CPU) | prefill tok/s vanilla / "
             "OPRM | decode tok/s vanilla / OPRM | peak RSS above loaded MB vanilla / OPRM | OPRM tokens / floor |",
             "|---|---|---|---|---|---|---|---|---|"]

    def pair(g, key, digits=3):
        return " / ".join(_fmt(g[m][key], digits) if m in g else "-" for m in ("vanilla", "oprm"))

    for (model, length, threads), g in by_key.items():
        v, o = g.get("vanilla"), g.get("oprm")
        rel = (f"{o['ttft_s'] / v['ttft_s']:.2f} ({o['ttft_cpu_s'] / v['ttft_cpu_s']:.2f})" if v and o else "-")
        floor = f"{o['floor_ratio']:.3f}" if o else "-"
        lines.append(f"| {model} | {length:,} | {threads} | {pair(g, 'ttft_s')} | {rel} | {pair(g, 'prefill_tok_s')} | "
                     f"{pair(g, 'decode_tok_s')} | {pair(g, 'above_loaded_mb', 4)} | {floor} |")
    return "\n".join(lines)


def make_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, name in (("ttft_s", "time to first token (s)", "bench_time.png"),
                              ("peak_rss_mb", "peak RSS (MB)", "bench_memory.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        series = sorted({(r["model"], r["mode"], r["threads"]) for r in rows})
        for model, mode, threads in series:
            pts = sorted((r["length"], r[key]) for r in rows
                         if (r["model"], r["mode"], r["threads"]) == (model, mode, threads) and r[key])
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{model} {mode} ({threads}t)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def _ints(value: str, flag: str) -> list[int]:
    try:
        out = [int(float(x)) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise OPRMUsageError(f"{flag} takes comma-separated integers, got {value!r}") from None
    if not out or min(out) <= 0:
        raise OPRMUsageError(f"{flag} takes positive integers, got {value!r}")
    return out


def _default_threads() -> int:
    from .engine import default_threads

    return default_threads()


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark vanilla vs OPRM: time to first token, speed, memory, tokens")
    p.add_argument("--model", default="tiny-mamba2",
                   help=f"{', '.join([*TINY, *TINY_RWKV_RUNTIME])}, a shipped model's name, a model folder / hub "
                        "id, or an RWKV .pth file")
    p.add_argument("--lengths", default="1024,4096,16384", help="context lengths in tokens, comma-separated")
    p.add_argument("--chunk-size", type=int, default=2048, help="OPRM chunk size in tokens (default 2048)")
    p.add_argument("--modes", default="vanilla,oprm", help="vanilla and/or oprm, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the report gives medians")
    p.add_argument("--threads", default=None, help="torch CPU threads, comma-separated for a sweep "
                                                   "(default: oprm's default)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prefix-tokens", type=int, default=32, help="|P|")
    p.add_argument("--suffix-tokens", type=int, default=32, help="|S|")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="tokens per prefill micro-batch (default: the engine's, 8192 on CPU and 32768 on GPU)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the per-mode peak-memory processes")
    p.add_argument("--output-path", default="bench_results", help="folder for bench.json, bench.md and the plots")
    p.set_defaults(func=run_bench)


def _cell_main(argv: list[str]) -> int:
    spec = json.loads(argv[argv.index("--cell") + 1])
    cell = run_timing(spec) if spec["kind"] == "timing" else run_memory(spec)
    print(RESULT_MARK + json.dumps(cell), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_cell_main(sys.argv))
