"""Tables and plots of ``oprm bench``: medians per cell, OPRM/vanilla ratios, markdown and PNG outputs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from oprm.report import markdown_table

__all__ = ["summarize", "compare", "rows_from_cells", "bench_table", "compact_table", "make_plots", "write_outputs"]


def summarize(timing: dict | None, memory: dict | None, mode: str) -> dict:
    """Medians over a mode's runs, its memory, and the tokens-processed floor N + b*|S| + |P| (b = 1 for vanilla;
    b*|S| for a question on an encoded document)."""
    cell = timing or memory
    runs = [r for r in timing["runs"] if r["mode"] == mode] if timing else [memory["run"]]

    def med(key):
        return statistics.median(r[key] for r in runs)

    r0 = runs[0]
    decode_steps = max(0, r0["generated"] - 1)
    prefill_tokens = r0["tokens_processed"] - decode_steps - r0.get("lookahead_tokens", 0)
    floor = r0["num_chunks"] * cell["suffix_tokens"]
    if mode != "document":
        floor += cell["length"] + cell["prefix_tokens"]
    row = {k: cell[k] for k in ("model", "length", "chunk_size", "threads")}
    if cell.get("mamba_kernels") == "off":  # the same model on the PyTorch scan: its own rows
        row["model"] += " (PyTorch scan)"
    elif cell.get("scan") == "mamba_ssm":
        row["model"] += " (mamba_ssm scan)"
    row["scan"], row["family"] = cell.get("scan"), cell.get("family")
    row.update(mode=mode, repeats=len(runs), ttft_s=med("ttft_s"), ttft_cpu_s=med("ttft_cpu_s"),
               prefill_s=med("prefill_s"), decode_s=med("decode_s"), total_s=med("total_s"),
               prefill_tok_s=prefill_tokens / med("prefill_s") if med("prefill_s") > 0 else None,
               decode_tok_s=decode_steps / med("decode_s") if decode_steps and med("decode_s") > 0 else None,
               num_chunks=r0["num_chunks"], tokens_processed=r0["tokens_processed"], prefill_tokens=prefill_tokens,
               floor=floor, floor_ratio=prefill_tokens / floor)
    for key in ("peak_rss_mb", "rss_loaded_mb", "weights_mb", "cuda_peak_mb"):
        row[key] = memory.get(key) if memory else None
    if mode == "document" and timing and timing.get("document"):
        row["document"] = timing["document"]  # encode seconds, state bytes, file bytes, load seconds
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


def rows_from_cells(cells: list[dict]) -> list[dict]:
    groups: dict = {}
    for c in cells:
        g = groups.setdefault((c["model"], c.get("mamba_kernels"), c["length"], c["threads"]),
                              {"timing": None, "memory": {}})
        if c["kind"] == "timing" and g["timing"] is not None:  # another round: its runs join the medians
            g["timing"] = dict(g["timing"], runs=g["timing"]["runs"] + c["runs"])
        elif c["kind"] == "timing":
            g["timing"] = c
        else:
            g["memory"][c["mode"]] = c
    rows = []
    for g in groups.values():
        modes = g["timing"]["modes"] if g["timing"] else list(g["memory"])
        rows.extend(summarize(g["timing"], g["memory"].get(m), m) for m in modes
                    if g["timing"] or m in g["memory"])
    return rows


def write_outputs(out_dir: Path, meta: dict, cells, plots: bool = False) -> tuple[list[dict], list[Path]]:
    """bench.json, bench.md (and with ``plots`` the PNGs) from the cells so far: (summary rows, files written)."""
    rows = rows_from_cells(cells)
    comparisons = compare(rows)
    (out_dir / "bench.json").write_text(json.dumps({"meta": meta, "summary": rows, "oprm_vs_vanilla": comparisons,
                                                    "cells": cells}, indent=1))
    (out_dir / "bench.md").write_text(bench_table(rows, comparisons, meta) + "\n\n" + compact_table(rows) + "\n"
                                      + (f"\n{document_table(rows)}\n" if any(r["mode"] == "document" for r in rows)
                                         else ""))
    return rows, [out_dir / "bench.json", out_dir / "bench.md"] + (make_plots(rows, out_dir) if plots else [])


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def bench_table(rows: list[dict], comparisons: list[dict], meta: dict | None = None) -> str:
    ratio = {(c["model"], c["length"], c["threads"]): c for c in comparisons}
    lines = []
    if meta:
        lines.append(f"`oprm bench` {meta['date']}: model {meta['model']}, {meta['device']} {meta['dtype']}, "
                     f"{meta['cpu_count']} cores, chunk {meta['chunk_size']}, |P|={meta['prefix_tokens']}, "
                     f"|S|={meta['suffix_tokens']}, {meta['max_new_tokens']} new tokens, max_batch_tokens "
                     f"{meta['max_batch_tokens'] or 'default'}; medians of the repeats (modes interleaved in one process); "
                     f"memory from one call in a fresh process per mode\n")
    table = []
    for r in rows:
        c = ratio.get((r["model"], r["length"], r["threads"])) if r["mode"] == "oprm" else None
        rel = f"{_fmt(c['ttft_ratio'], 2)}; {_fmt(c['ttft_cpu_ratio'], 2)}" if c else "-"
        mem = _fmt(r["peak_rss_mb"], 4) + (f" (CUDA {_fmt(r['cuda_peak_mb'], 4)})" if r.get("cuda_peak_mb") else "")
        table.append([r["model"], r["mode"], f"{r['length']:,}", r["threads"], r["repeats"], _fmt(r["ttft_s"]), rel,
                      _fmt(r["prefill_tok_s"]), _fmt(r["decode_tok_s"]), mem, _fmt(r["above_loaded_mb"], 4),
                      f"{r['prefill_tokens']:,} / {r['floor']:,} = {r['floor_ratio']:.3f}"])
    lines.append(markdown_table(["model", "mode", "N", "threads", "runs", "TTFT s", "OPRM/vanilla TTFT (wall; CPU)",
                                 "prefill tok/s", "decode tok/s", "peak RSS MB", "above loaded MB", "tokens / floor"],
                                table))
    return "\n".join(lines)


def document_table(rows: list[dict]) -> str:
    """Questions on an encoded document: its costs (encode, state, file, load) and the speed-up over OPRM."""
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["model"], r["length"], r["threads"]), {})[r["mode"]] = r
    table = []
    for (model, length, threads), g in by_key.items():
        d, o = g.get("document"), g.get("oprm")
        if not d or not d.get("document"):
            continue
        info = d["document"]
        table.append([model, f"{length:,}", threads, info["chunks"], _fmt(info["encode_s"]),
                      _fmt(info["state_bytes"] / info["chunks"] / 1024), _fmt(info["file_bytes"] / 2**20),
                      _fmt(info["load_s"]), _fmt(d["ttft_s"]), _fmt(o["ttft_s"]) if o else "-",
                      f"{o['ttft_s'] / d['ttft_s']:.1f}x" if o else "-",
                      " / ".join(_fmt(x["above_loaded_mb"], 4) if x else "-" for x in (d, o))])
    return markdown_table(["model", "N", "threads", "chunks", "encode s", "state KB per chunk", "file MB", "load s",
                           "TTFT s document", "TTFT s OPRM", "OPRM / document", "peak RSS above loaded MB document "
                           "/ OPRM"], table)


def compact_table(rows: list[dict]) -> str:
    """One line per (model, N, threads): vanilla | OPRM side by side (the README's format)."""
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["model"], r["length"], r["threads"]), {})[r["mode"]] = r

    def pair(g, key, digits=3):
        return " / ".join(_fmt(g[m][key], digits) if m in g else "-" for m in ("vanilla", "oprm"))

    table = []
    for (model, length, threads), g in by_key.items():
        v, o = g.get("vanilla"), g.get("oprm")
        rel = (f"{o['ttft_s'] / v['ttft_s']:.2f} ({o['ttft_cpu_s'] / v['ttft_cpu_s']:.2f})" if v and o else "-")
        table.append([model, f"{length:,}", threads, pair(g, "ttft_s"), rel, pair(g, "prefill_tok_s"),
                      pair(g, "decode_tok_s"), pair(g, "above_loaded_mb", 4), f"{o['floor_ratio']:.3f}" if o else "-"])
    return markdown_table(["model", "N", "threads", "TTFT s vanilla / OPRM", "OPRM/vanilla TTFT wall (CPU)",
                           "prefill tok/s vanilla / OPRM", "decode tok/s vanilla / OPRM",
                           "peak RSS above loaded MB vanilla / OPRM", "OPRM tokens / floor"], table)


def make_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """bench_time.png and bench_memory.png; none where matplotlib is missing (a bare GPU machine)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []

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
