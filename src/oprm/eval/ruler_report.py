"""RULER's reports: ``summary.csv`` per config and length (RULER's file: a header of column numbers, then rows
Tasks / Score / Nulls, one column per task) and a markdown table (tasks as rows, config x length as columns, the average with its 95 % interval)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from oprm.report import markdown_table

__all__ = ["ruler_rows", "ruler_markdown", "write_ruler_summaries", "average_ci", "ruler_markdown_by_length",
           "ruler_averages", "plot_ruler_averages"]


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _score(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(round(float(v), 2))


def ruler_rows(results: dict) -> dict[str, dict[str, dict[str, dict]]]:
    """config -> length -> task -> {score, n, nulls, sd} of the RULER tasks in ``results``."""
    names = [n for n, m in results.get("tasks", {}).items() if m.get("suite") == "ruler"]
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for cname, c in results.get("configs", {}).items():
        for n in names:
            for length, v in ((c["tasks"].get(n) or {}).get("ruler") or {}).items():
                out.setdefault(cname, {}).setdefault(length, {})[n] = v
    return out


def average_ci(per_task: dict[str, dict]) -> tuple[float, float]:
    """RULER's average (mean of the task scores) and the half-width of its 95 % interval (normal approximation).
    The task means are independent, so var(average) = sum(var_t / n_t) / T^2; var_t is the larger of the sample
    variance and the Agresti-Coull one, p(1-p) with p = (successes + 2) / (n + 4), so a task that scored 0 or 100 on
    a few samples does not claim a zero-width interval."""
    vals = [v for v in per_task.values() if isinstance(v.get("score"), (int, float)) and not math.isnan(v["score"])]
    if not vals:
        return math.nan, math.nan
    mean = sum(v["score"] for v in vals) / len(vals)
    var = 0.0
    for v in vals:
        n = max(int(v.get("n") or 1), 1)
        p = (v["score"] / 100 * n + 2) / (n + 4)
        sd = v.get("sd")
        sd = 0.0 if sd is None or (isinstance(sd, float) and math.isnan(sd)) else float(sd)
        var += max(sd ** 2, 1e4 * p * (1 - p)) / n
    return round(mean, 2), round(1.96 * math.sqrt(var) / len(vals), 2)


def ruler_markdown(results: dict) -> str:
    rows_by = ruler_rows(results)
    if not rows_by:
        return ""
    tasks = [n for n, m in results.get("tasks", {}).items() if m.get("suite") == "ruler"]
    cols = [(c, length) for c, lengths in rows_by.items() for length in sorted(lengths, key=float)]
    headers = ["task"] + [f"{c} @ {length}" for c, length in cols]
    rows = [[n] + [_fmt((rows_by[c][length].get(n) or {}).get("score")) for c, length in cols] for n in tasks]
    avg = [average_ci(rows_by[c][length]) for c, length in cols]
    rows.append(["**average**"] + [f"{_fmt(m)} ± {_fmt(h)}" for m, h in avg])
    rows.append(["samples per task"] + [", ".join(sorted({str(v.get("n")) for v in rows_by[c][length].values()}))
                                        for c, length in cols])
    haystacks = {t: (results["tasks"][t].get("haystack") or "") for t in tasks}
    note = ", ".join(sorted({h for h in haystacks.values() if h.startswith("essay:")}))
    lines = ["## RULER", "", markdown_table(headers, rows), "",
             "Average: mean of the task scores ± half-width of its 95 % interval (normal approximation)."]
    if note:
        lines.append(f"Essay haystack: {note} (RULER's official one is Paul Graham's essays).")
    return "\n".join(lines) + "\n"


def write_ruler_summaries(results: dict, root: Path) -> list[Path]:
    """``<root>/<config>/ruler/<length>/summary.csv`` (RULER's file) and ``<root>/ruler.md``."""
    written = []
    for cname, lengths in ruler_rows(results).items():
        for length, per_task in lengths.items():
            path = Path(root) / cname / "ruler" / str(length) / "summary.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            names = list(per_task)
            with open(path, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                # RULER writes pd.DataFrame(rows).to_csv(index=False): a header of column numbers, then the rows
                w.writerow(range(len(names) + 1))
                w.writerow(["Tasks"] + names)
                w.writerow(["Score"] + [_score(per_task[n].get("score")) for n in names])
                w.writerow(["Nulls"] + [f"{per_task[n].get('nulls', 0)}/{per_task[n].get('n', 0)}" for n in names])
            written.append(path)
    md = ruler_markdown(results)
    if md:
        (Path(root) / "ruler.md").write_text(f"# RULER: {results.get('model', '?')}\n\n" + md, encoding="utf-8")
        written.append(Path(root) / "ruler.md")
    return written


def ruler_markdown_by_length(results: dict) -> str:
    """One table per length (tasks as rows, configs as columns, the average ± its 95 % half-width and the samples
    per task), then the averages alone (configs as rows, lengths as columns)."""
    rows_by = ruler_rows(results)
    tasks = [n for n, m in results.get("tasks", {}).items() if m.get("suite") == "ruler"]
    lengths = sorted({length for c in rows_by.values() for length in c}, key=float)
    out = []
    for length in lengths:
        cols = [c for c in rows_by if length in rows_by[c]]
        rows = [[n] + [_fmt((rows_by[c][length].get(n) or {}).get("score")) for c in cols] for n in tasks]
        avg = [average_ci(rows_by[c][length]) for c in cols]
        rows.append(["**average**"] + [f"{_fmt(m)} ± {_fmt(h)}" for m, h in avg])
        rows.append(["samples per task"] + [", ".join(sorted({str(v.get("n")) for v in rows_by[c][length].values()},
                                                             key=int)) for c in cols])
        out += [f"### {length} tokens", "", markdown_table(["task"] + cols, rows), ""]
    rows = []
    for c, cells in ruler_averages(results).items():
        by_len = {length: (m, h, n) for length, m, h, n in cells}
        rows.append([c] + [f"{_fmt(by_len[x][0])} ± {_fmt(by_len[x][1])} ({len(rows_by[c][x])} tasks, n={by_len[x][2]})"
                           if x in by_len else "–" for x in lengths])
    out += ["### Averages", "", markdown_table(["config"] + lengths, rows), ""]
    return "\n".join(out)


def ruler_averages(results: dict) -> dict[str, list[tuple[str, float, float, str]]]:
    """config -> [(length, average, 95 % half-width, samples per task as "n" or "lo-hi")], lengths ascending."""
    out = {}
    for c, by_len in ruler_rows(results).items():
        cells = []
        for length in sorted(by_len, key=float):
            m, h = average_ci(by_len[length])
            ns = sorted({int(v.get("n") or 0) for v in by_len[length].values()})
            cells.append((length, m, h, str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"))
        out[c] = cells
    return out


def plot_ruler_averages(results: dict, path: Path, window: int | None = None) -> Path | None:
    """``path`` (PNG): each config's RULER average against the target length, with its 95 % interval as error bars
    and, given ``window``, the model's trained context as a dashed line. None where matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    averages = ruler_averages(results)
    if not averages:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (c, cells) in enumerate(averages.items()):
        xs = [float(x) * (1 + 0.03 * (i - (len(averages) - 1) / 2)) for x, *_ in cells]  # bars side by side
        ax.errorbar(xs, [m for _, m, _, _ in cells], yerr=[h for _, _, h, _ in cells], marker="o", capsize=3, label=c)
    lengths = sorted({float(x) for cells in averages.values() for x, *_ in cells})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{x / 1024:g}K" if x >= 1024 else f"{x:g}" for x in lengths])
    ax.minorticks_off()
    if window:
        ax.axvline(window, color="grey", linestyle="--", linewidth=1)
        ax.text(window, 1, " trained window", color="grey", fontsize=7, va="bottom")
    ax.set_xlabel("target length (tokens)")
    ax.set_ylabel(f"RULER average of {len(results.get('tasks', {}))} tasks (95 % interval)")
    ax.set_ylim(-3, 100)
    ax.set_title(f"RULER: {results.get('model', '')}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
