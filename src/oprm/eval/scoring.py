"""Scores of ``oprm eval`` / ``oprm score``: per-task aggregation with the official formulas, and rescoring of any
folder of prediction files (ours or the official OPRM script's)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from oprm.errors import OPRMUsageError
from oprm.metrics.longbench import DATASET2METRIC, bucket_means, mean100, score_sample
from oprm.metrics.longbench_v2 import score_v2
from oprm.tasks import Task, get_task

from .storage import read_jsonl_lenient

__all__ = ["aggregate", "score_dir", "mean100"]


def aggregate(task: Task, records: list[dict]) -> dict:
    """Scores of one task from its prediction records (official formulas)."""
    out: dict[str, Any] = {"n": len(records)}
    if task.suite == "longbench_v2":
        out["v2"] = score_v2(records)
        out["score"] = out["v2"]["Overall"]
        return out
    out["score"] = mean100(r["score"] for r in records)
    if task.suite in ("longbench", "longbench_e"):
        out["buckets"] = bucket_means([r["score"] for r in records], [r.get("length") for r in records])
    else:
        by: dict[str, list[float]] = defaultdict(list)
        for r in records:
            st = r.get("setting") or {}
            key = st.get("num_facts", st.get("target_length"))
            if key is not None:
                by[str(key)].append(r["score"])
        out["by_setting"] = {k: mean100(v) for k, v in sorted(by.items(), key=lambda kv: float(kv[0]))}
        out["setting_name"] = "num_facts" if task.name == "ar" else "target_length"
        if task.suite == "ruler":
            out["ruler"] = ruler_by_length(records)
    return out


def ruler_by_length(records: list[dict]) -> dict[str, dict]:
    """RULER's per-length numbers: score (mean x100), nulls (empty predictions after RULER's postprocessing, as its
    summary.csv counts them), n and the per-sample standard deviation (x100, for confidence intervals)."""
    from oprm.metrics.synthetic import postprocess_pred  # noqa: PLC0415

    by: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by[str((r.get("setting") or {}).get("target_length"))].append(r)
    out = {}
    for key, rs in sorted(by.items(), key=lambda kv: float(kv[0]) if kv[0] != "None" else math.inf):
        scores = [100 * float(r["score"]) for r in rs]
        mean = sum(scores) / len(scores)
        sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) if len(scores) > 1 else math.nan
        out[key] = {"score": round(mean, 2), "n": len(rs), "sd": round(sd, 4) if not math.isnan(sd) else sd,
                    "nulls": sum(1 for r in rs if not postprocess_pred(r.get("pred") or ""))}
    return out


def score_dir(path: str | Path, map_idk: bool = True) -> dict[str, dict]:
    """Rescore every ``*.jsonl`` prediction file under ``path`` with the official scorers.

    The dataset is ``filename.split('.')[0]`` (as LongBench's eval.py), so the official OPRM script's files
    (``{dataset}.{timestamp}_{mode}_{ntoks}_toks[_cs_L][_type_e].jsonl``) and ours (``pred[_e]/{dataset}.jsonl``)
    both work. ``all_classes`` comes from the file's last line, as upstream. LongBench-E buckets are added for files in
    a ``pred_e`` folder or whose name contains ``_type_e``. With ``map_idk`` a Qasper prediction's "Error" is mapped to
    "unanswerable" first (the official OPRM script leaves it unmapped although its comment says it must be mapped).
    LongBench v2 files (``judge``/``response`` fields) get the Overall/Easy/Hard/Short/Medium/Long report; synthetic
    task files of ``oprm eval`` are rescored with their task's metric.
    """
    root = Path(path)
    if not root.exists():
        raise OPRMUsageError(f"no such file or folder: {root}")
    files = [root] if root.is_file() else sorted(root.rglob("*.jsonl"))
    out: dict[str, dict] = {}
    for f in files:
        rows = [r for r in read_jsonl_lenient(f) if isinstance(r, dict)]
        if rows:
            scored = _score_file(f, rows, map_idk)
            if scored is not None:
                out[f.name if root.is_file() else f.relative_to(root).as_posix()] = scored
    return out


def _score_file(f: Path, rows: list[dict], map_idk: bool) -> dict | None:
    dataset = f.name.split(".")[0]
    if "judge" in rows[0] or "response" in rows[0] or dataset == "longbench_v2":
        v2 = score_v2(rows)
        return {"dataset": "longbench_v2", "n": len(rows), "v2": v2, "score": v2["Overall"]}
    if dataset in DATASET2METRIC:
        task = get_task(dataset)
        all_classes = rows[-1].get("all_classes")
        scores = []
        for r in rows:
            pred = r.get("pred") or ""
            if map_idk:
                pred = task.postprocess(pred, True)
            scores.append(score_sample(DATASET2METRIC[dataset], pred, r.get("answers") or [], all_classes,
                                       task.first_line))
        res: dict[str, Any] = {"dataset": dataset, "n": len(rows), "score": mean100(scores)}
        if "pred_e" in f.parts or "_type_e" in f.name:
            res["buckets"] = bucket_means(scores, [r.get("length") for r in rows])
        return res
    try:
        task = get_task(rows[0].get("task") or dataset)
    except OPRMUsageError:
        return None
    if task.suite not in ("synthetic", "ruler"):
        return None
    recs = [{**r, "score": task.score(r.get("pred") or "", r)} for r in rows]
    return {"dataset": task.name, **aggregate(task, recs)}
