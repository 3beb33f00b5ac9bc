"""Files of ``oprm eval``: JSONL predictions appended and resumed, per-rank parts merged, results.json kept.

A prediction file has one JSON object per line; every finished sample is appended and flushed at once, so a crash
loses at most the line being written (a torn last line is cut off on the next read) and a rerun skips the ``_id``s
already there. Under torchrun each rank writes its own part file, which rank 0 merges into the one file.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .report import results_markdown

__all__ = ["read_records", "parse_jsonl", "read_jsonl_lenient", "safe_name", "part_path", "merge_prediction_files",
           "merge_parts", "write_summary", "jsonable", "PredictionFile"]


def read_records(path: Path) -> list[dict]:
    """Lines of a prediction file; a torn last line (crash mid-write) is cut off so appends stay valid JSONL."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    return parse_jsonl(data.decode("utf-8"))


def parse_jsonl(text: str) -> list:
    """The JSON values of the non-empty lines of ``text``; unreadable lines are skipped."""
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def read_jsonl_lenient(path: Path) -> list:
    return parse_jsonl(path.read_text(encoding="utf-8"))


class PredictionFile:
    """One config x task prediction file: the records already there, and appending new ones line by line."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done = {r.get("_id"): r for r in read_records(path)}

    def append(self, records):
        """Write each record of the iterable as soon as it arrives (flushed: a crash keeps what was finished)."""
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                self.done[rec["_id"]] = rec


def safe_name(name: str) -> str:
    name = name.rstrip("/\\")
    base = os.path.basename(name) or name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "model"


# --- data-parallel runs -------------------------------------------------------------------------------------------
def part_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


def merge_prediction_files(parts: list, out, key: str = "_id", order: list | None = None) -> int:
    """Merge per-rank JSONL prediction files into ``out``; returns the number of records written.

    A record whose ``key`` appears in several parts is kept once when the copies are equal (a resumed run) and is
    an error when they differ. With ``order`` (the sample ids in their original order) the output follows it and
    every id must be present (a missing one is an error: a rank died or skipped it); records of other ids (an
    earlier run with more samples) are kept after them. Without ``order`` the records follow the round-robin order
    of ``parallel.shard_samples`` (part 0's first record, part 1's first, ...). Parts that do not exist count as empty.
    """
    per_part: list[list[dict]] = []
    for part in parts:
        path = Path(part)
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        per_part.append([json.loads(line) for line in lines if line.strip()])  # strict: a bad line is an error
    merged: dict = {}
    for i in range(max((len(r) for r in per_part), default=0)):  # interleave: the inverse of the round-robin split
        for rows in per_part:
            if i >= len(rows):
                continue
            rec = rows[i]
            k = rec[key]
            if k in merged and merged[k] != rec:
                raise ValueError(f"conflicting predictions for {key}={k!r} in the parts")
            merged.setdefault(k, rec)
    if order is not None:
        missing = [k for k in order if k not in merged]
        if missing:
            raise ValueError(f"{len(missing)} sample(s) missing from the merged predictions (first {missing[:3]})")
        wanted = set(order)
        records = [merged[k] for k in dict.fromkeys(order)] + [r for k, r in merged.items() if k not in wanted]
    else:
        records = list(merged.values())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(records)


def merge_parts(parallel, path: Path, samples: list[dict]) -> dict:
    """Data-parallel: once every rank has finished its shard, rank 0 merges the part files into ``path`` (nothing
    lost, nothing duplicated) and removes them; every rank then reads the merged predictions."""
    world = parallel.world_size
    parallel.gather(None)  # barrier: every shard is written
    if parallel.rank == 0:
        parts = [path] + [part_path(path, r, world) for r in range(world)]
        merge_prediction_files(parts, path, order=[smp["_id"] for smp in samples])
        for part in parts[1:]:
            part.unlink(missing_ok=True)
    parallel.gather(None)  # barrier: the merged file is there
    return {r.get("_id"): r for r in read_records(path)}


# --- results.json -------------------------------------------------------------------------------------------------
def write_summary(results: dict, root: Path) -> dict:
    """Write results.json / results.md, keeping configs and tasks of earlier runs into the same folder."""
    path = root / "results.json"
    if path.exists():
        try:
            prev = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            prev = {}
        if isinstance(prev, dict) and isinstance(prev.get("configs"), dict):
            tasks_meta = dict(prev.get("tasks") or {})
            tasks_meta.update(results["tasks"])
            merged = {k: _unnull(v) for k, v in prev["configs"].items() if isinstance(v, dict) and "tasks" in v}
            for cname, c in results["configs"].items():
                if cname in merged:
                    merged[cname]["config"] = c["config"]
                    for tname, agg in c["tasks"].items():  # RULER: a run at other lengths adds to the earlier ones
                        before = merged[cname]["tasks"].get(tname)
                        if isinstance(before, dict) and isinstance(before.get("ruler"), dict) and "ruler" in agg:
                            agg = {**agg, "ruler": {**before["ruler"], **agg["ruler"]},
                                   "by_setting": {**before.get("by_setting", {}), **agg.get("by_setting", {})}}
                        merged[cname]["tasks"][tname] = agg
                else:
                    merged[cname] = c
            results = {**results, "tasks": tasks_meta, "configs": merged}
    path.write_text(json.dumps(jsonable(results), ensure_ascii=False, indent=2), encoding="utf-8")
    (root / "results.md").write_text(results_markdown(results), encoding="utf-8")
    return results


def _unnull(obj):
    """Inverse of jsonable for scores read back from results.json (null -> NaN)."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: (_unnull(v) if k not in ("config", "setting_name") else v) for k, v in obj.items()}
    return obj


def jsonable(obj):
    """NaN/inf -> null, recursively (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
