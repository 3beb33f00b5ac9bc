"""Reports of ``oprm eval`` / ``oprm score``: markdown tables (configs as columns) and PNG plots."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from oprm.metrics.longbench import BUCKETS
from oprm.metrics.longbench_v2 import V2_COLUMNS
from oprm.report import markdown_table

from .ruler_report import plot_ruler_averages, ruler_markdown

__all__ = ["results_markdown", "score_table", "make_plots", "fmt", "nanmean"]


def nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return round(sum(vals) / len(vals), 2) if vals else math.nan


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def results_markdown(results: dict) -> str:
    """Markdown tables: LongBench (datasets as rows + category and overall means), LongBench-E buckets,
    LongBench v2 columns, synthetic tasks by setting; configs as columns."""
    cfgs = list(results.get("configs", {}))
    if not cfgs:
        return "(no results)\n"
    tasks_meta = results.get("tasks", {})
    lines = [f"# oprm eval: {results.get('model', '?')}", ""]

    def cell(cfg: str, task: str, key: str = "score", sub: str | None = None):
        t = results["configs"][cfg]["tasks"].get(task)
        if t is None:
            return None
        v = t.get(key)
        return v.get(sub) if (sub is not None and isinstance(v, dict)) else v

    def section(title: str, headers: list[str], rows: list[list]) -> None:
        lines.extend([f"## {title}", "", markdown_table(headers + cfgs, rows), ""])

    for suite, title in (("longbench", "LongBench"), ("longbench_e", "LongBench-E (all lengths)")):
        names = [n for n, m in tasks_meta.items() if m["suite"] == suite]
        if not names:
            continue
        cats: dict[str, list[str]] = defaultdict(list)
        rows = []
        for n in names:
            cats[tasks_meta[n]["category"]].append(n)
            rows.append([n, tasks_meta[n]["category"]] + [fmt(cell(c, n)) for c in cfgs])
        cat_means = {c: {cat: nanmean(cell(c, n) for n in ns) for cat, ns in cats.items()} for c in cfgs}
        rows += [[f"*{cat} (mean)*", ""] + [fmt(cat_means[c][cat]) for c in cfgs] for cat in cats]
        rows.append(["**dataset mean**", ""] + [fmt(nanmean(cell(c, n) for n in names)) for c in cfgs])
        rows.append(["**category mean**", ""] + [fmt(nanmean(cat_means[c].values())) for c in cfgs])
        section(title, ["dataset", "category"], rows)
        if suite == "longbench_e":
            section("LongBench-E by length (mean over datasets)", ["length"],
                    [[b] + [fmt(nanmean(cell(c, n, "buckets", b) for n in names)) for c in cfgs] for b in BUCKETS])
    if "longbench_v2" in tasks_meta:
        section("LongBench v2", ["split"],
                [[col] + [fmt(cell(c, "longbench_v2", "v2", col)) for c in cfgs] for col in V2_COLUMNS])
    syn = [n for n, m in tasks_meta.items() if m["suite"] == "synthetic"]
    if syn:
        rows = []
        for n in syn:
            rows.append([n, "all"] + [fmt(cell(c, n)) for c in cfgs])
            keys = dict.fromkeys(k for c in cfgs for k in (cell(c, n, "by_setting") or {}))
            sname = "facts" if n == "ar" else "len"
            rows += [[n, f"{sname}={k}"] + [fmt(cell(c, n, "by_setting", k)) for c in cfgs]
                     for k in sorted(keys, key=float)]
        section("Synthetic tasks", ["task", "setting"], rows)
    ruler = ruler_markdown(results)
    if ruler:
        lines.append(ruler)
    return "\n".join(lines)


def score_table(scores: dict[str, dict]) -> str:
    """``oprm score``'s table: one row per prediction file."""
    rows = [[rel, r.get("dataset"), r.get("n"), fmt(r.get("score"))] + [fmt((r.get("buckets") or {}).get(k))
                                                                       for k in BUCKETS]
            for rel, r in scores.items()]
    return markdown_table(["file", "dataset", "n", "score", *BUCKETS], rows)


def make_plots(results: dict, out_dir: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg): score by length bucket per config; AR accuracy vs facts; NIAH/passkey vs length;
    the RULER average vs length."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks_meta = results.get("tasks", {})
    cfgs = results.get("configs", {})
    written: list[Path] = []

    def save(fig, ax, name: str) -> None:
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(out_dir / name)

    lb = [n for n, m in tasks_meta.items() if m["suite"] in ("longbench", "longbench_e")]
    if lb:
        fig, ax = plt.subplots(figsize=(6, 4))
        for cname, c in cfgs.items():
            ys = [nanmean((c["tasks"].get(n) or {}).get("buckets", {}).get(b, math.nan) for n in lb) for b in BUCKETS]
            ax.plot(list(BUCKETS), ys, marker="o", label=cname)
        ax.set_xlabel("context length (LongBench 'length' field)")
        ax.set_ylabel("score (mean over datasets)")
        ax.set_title("Score by length bucket")
        save(fig, ax, "score_by_length.png")
    for group, fname, xlabel in ((["ar"], "ar_accuracy_vs_facts.png", "number of facts"),
                                 ([n for n, m in tasks_meta.items() if m.get("suite") != "ruler"
                                  and (n.startswith("niah_") or n in ("passkey", "secret_number"))],
                                  "synthetic_by_length.png", "target context length")):
        group = [n for n in group if n in tasks_meta]
        if not group:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        xs_all = []
        for cname, c in cfgs.items():
            for n in group:
                bs = (c["tasks"].get(n) or {}).get("by_setting") or {}
                xs = sorted(bs, key=float)
                xs_all += [float(x) for x in xs]
                if xs:
                    label = cname if len(group) == 1 else f"{cname} / {n}"
                    ax.plot([float(x) for x in xs], [bs[x] for x in xs], marker="o", label=label)
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
            ax.set_xscale("log")  # fact counts and lengths sweep by doubling
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title("Associative recall" if group == ["ar"] else "Needle / pass-key retrieval")
        save(fig, ax, fname)
    ruler = plot_ruler_averages(results, out_dir / "ruler_by_length.png")
    return written + ([ruler] if ruler else [])
