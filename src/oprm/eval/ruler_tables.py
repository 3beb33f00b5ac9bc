"""RULER tables straight from prediction files: runs split over processes, lengths or machines, merged into one
results dict (``results_from_predictions``) and printed / written as ``oprm eval`` would
(``python -m oprm.eval.ruler_tables``). Apart from ``ruler_report`` because it scores (``eval.scoring``), which the
report writers must not import."""

from __future__ import annotations

import sys
from pathlib import Path

from oprm.eval.ruler_report import plot_ruler_averages, ruler_markdown_by_length, write_ruler_summaries
from oprm.eval.scoring import ruler_by_length
from oprm.eval.storage import read_jsonl_lenient
from oprm.tasks.ruler import RULER_QA_TASKS, RULER_TASKS

__all__ = ["results_from_predictions", "main"]


def _sample_index(rec: dict) -> int:
    """i of a RULER sample id ``<task>-L<length>-<i>-s<seed>`` (-1 when the id has another shape)."""
    parts = str(rec.get("_id", "")).rsplit("-", 2)
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return -1


def results_from_predictions(roots, configs=None, lengths=None, max_samples: int | None = None,
                             tasks=None) -> dict:
    """A results dict (as ``oprm eval`` writes, RULER part only) rebuilt from the ``<config>/pred/*.jsonl`` files
    under each of ``roots`` (model folders): records deduplicated by (config, id), optionally only the
    ``configs`` / ``lengths`` / ``tasks`` given and the first ``max_samples`` samples of each task and length."""
    names = [t for t in list(RULER_TASKS) + [t for t in RULER_QA_TASKS if t not in RULER_TASKS]
             if not tasks or t in tasks]
    keep_len = {str(x) for x in lengths} if lengths else None
    recs: dict[str, dict[str, dict[str, dict]]] = {}  # config -> task -> id -> record
    haystack: dict[str, str] = {}
    for root in [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]:
        for path in sorted(root.glob("*/pred/*.jsonl")):
            cname = path.parent.parent.name
            if configs and cname not in configs:
                continue
            for r in read_jsonl_lenient(path):  # read-only; a torn last line is skipped
                task, st = r.get("task"), r.get("setting") or {}
                if task not in names or (keep_len and str(st.get("target_length")) not in keep_len):
                    continue
                if max_samples is not None and not 0 <= _sample_index(r) < max_samples:
                    continue
                recs.setdefault(cname, {}).setdefault(task, {})[r["_id"]] = r
                haystack.setdefault(task, st.get("haystack") or "")
    order = list(configs) if configs else sorted(recs)
    present = [t for t in names if any(t in recs.get(c, {}) for c in order)]
    return {"model": ", ".join(sorted({Path(r).name for r in ([roots] if isinstance(roots, (str, Path)) else roots)})),
            "tasks": {t: {"suite": "ruler", "haystack": haystack.get(t, "")} for t in present},
            "configs": {c: {"tasks": {t: {"ruler": ruler_by_length(list(recs[c][t].values()))}
                                      for t in present if t in recs.get(c, {})}} for c in order if c in recs}}


def main(argv=None) -> int:
    """``python -m oprm.eval.ruler_tables MODEL_DIR [...]``: RULER tables and summary.csv from prediction files."""
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m oprm.eval.ruler_tables", description=main.__doc__)
    p.add_argument("roots", nargs="+", help="model folders of oprm eval runs (<output-path>/<model>)")
    p.add_argument("--configs", default=None, help="comma list of config names, in column order (default: all)")
    p.add_argument("--lengths", default=None, help="comma list of target lengths (default: all)")
    p.add_argument("--tasks", default=None, help="comma list of RULER task names (default: all found)")
    p.add_argument("--max-samples", type=int, default=None, help="only the first N samples of a task and length")
    p.add_argument("--labels", default=None, help="comma list of column names for the tables and plot, one per "
                   "--configs entry (summary.csv keeps the config names)")
    p.add_argument("--output", default=None, help="write <config>/ruler/<length>/summary.csv and ruler.md here")
    p.add_argument("--plot", action="store_true", help="also write ruler_by_length.png in --output")
    p.add_argument("--window", type=int, default=None, help="the model's trained context, drawn as a line on the plot")
    a = p.parse_args(argv)
    split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)
    configs, labels = split(a.configs), split(a.labels)
    if labels and len(labels) != len(configs or []):
        print("oprm: --labels needs one name per --configs entry", file=sys.stderr)
        return 2
    if a.plot and not a.output:
        print("oprm: --plot writes into --output; give --output DIR", file=sys.stderr)
        return 2
    res = results_from_predictions(a.roots, configs, split(a.lengths), a.max_samples, split(a.tasks))
    shown = {**res, "configs": {dict(zip(configs, labels)).get(c, c) if labels else c: v
                                for c, v in res["configs"].items()}}
    md = ruler_markdown_by_length(shown)
    print(md)
    if a.output:
        write_ruler_summaries(res, Path(a.output))
        (Path(a.output) / "ruler.md").write_text("# RULER\n\n" + md, encoding="utf-8")
        if a.plot:
            plot_ruler_averages(shown, Path(a.output) / "ruler_by_length.png", window=a.window)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
