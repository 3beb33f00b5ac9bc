"""Loading LongBench v1 / LongBench-E / LongBench v2 samples from local files (or, on request, the HF Hub).

Local layouts understood (``--data-dir D``):

* LongBench v1/E: the official ``data.zip`` unpacked, i.e. ``D/data/<name>.jsonl`` or ``D/<name>.jsonl`` with
  ``<name>`` = ``hotpotqa`` or ``hotpotqa_e``; one JSON object per line with ``input, context, answers, length,
  dataset, language, all_classes, _id``.
* LongBench v2: ``D/longbench_v2.json[l]``, ``D/LongBench-v2/data.json`` or ``D/data.json`` (the file of the HF
  dataset ``THUDM/LongBench-v2``): ``_id, domain, sub_domain, difficulty, length, question, choice_A..D, answer,
  context``.

With ``download=True`` the files are fetched once with ``huggingface_hub`` (``THUDM/LongBench`` ``data.zip``,
``THUDM/LongBench-v2`` ``data.json``) into ``D`` (default ``~/.cache/oprm/longbench``). Nothing here touches the
network unless asked.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from oprm.errors import OPRMUsageError
from oprm.tasks.task import Task

__all__ = ["default_data_dir", "find_longbench_file", "find_v2_file", "ensure_task_data", "load_task_samples",
           "read_jsonl",
           "download_longbench", "LONGBENCH_URL", "LONGBENCH_V2_URL"]

LONGBENCH_URL = "https://huggingface.co/datasets/THUDM/LongBench/resolve/main/data.zip"
LONGBENCH_V2_URL = "https://huggingface.co/datasets/THUDM/LongBench-v2/resolve/main/data.json"


def default_data_dir() -> Path:
    env = os.environ.get("OPRM_DATA_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "oprm" / "longbench"


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise OPRMUsageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def find_longbench_file(data_dir: Path, name: str) -> Path | None:
    for cand in (data_dir / f"{name}.jsonl", data_dir / "data" / f"{name}.jsonl",
                 data_dir / "LongBench" / f"{name}.jsonl", data_dir / "LongBench" / "data" / f"{name}.jsonl"):
        if cand.is_file():
            return cand
    return None


def find_v2_file(data_dir: Path) -> Path | None:
    for cand in (data_dir / "longbench_v2.jsonl", data_dir / "longbench_v2.json",
                 data_dir / "LongBench-v2" / "data.json", data_dir / "data.json"):
        if cand.is_file():
            return cand
    return None


def download_longbench(data_dir: Path, v2: bool = False) -> None:
    """Fetch the official files with huggingface_hub (only when the user asked for it)."""
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        raise OPRMUsageError("--download needs huggingface_hub (pip install huggingface_hub)") from None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if v2:
            src = hf_hub_download("THUDM/LongBench-v2", "data.json", repo_type="dataset")
            target = data_dir / "LongBench-v2" / "data.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copyfile(src, target)
        else:
            src = hf_hub_download("THUDM/LongBench", "data.zip", repo_type="dataset")
            with zipfile.ZipFile(src) as zf:
                zf.extractall(data_dir)
    except OPRMUsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - network/auth errors become one usage line
        url = LONGBENCH_V2_URL if v2 else LONGBENCH_URL
        raise OPRMUsageError(f"could not download {url} into {data_dir}: {type(exc).__name__}: {exc}") from None


def _missing(task: Task, data_dir: Path) -> OPRMUsageError:
    if task.suite == "longbench_v2":
        return OPRMUsageError(
            f"LongBench v2 data not found in {data_dir}: download {LONGBENCH_V2_URL} to "
            f"{data_dir / 'LongBench-v2' / 'data.json'} (or add --download)")
    fname = f"{task.dataset}_e.jsonl" if task.suite == "longbench_e" else f"{task.dataset}.jsonl"
    return OPRMUsageError(
        f"LongBench file {fname} not found in {data_dir}: download {LONGBENCH_URL} and unzip it into {data_dir} "
        f"(or add --download)")


def _v2_sample(row: dict) -> dict:
    return {
        "_id": row["_id"], "context": row["context"], "input": row["question"].strip(),
        "choice_A": row["choice_A"].strip(), "choice_B": row["choice_B"].strip(),
        "choice_C": row["choice_C"].strip(), "choice_D": row["choice_D"].strip(),
        "answers": [row["answer"]], "all_classes": None, "length": row.get("length"),
        "difficulty": row.get("difficulty"), "domain": row.get("domain"), "sub_domain": row.get("sub_domain"),
        "dataset": "longbench_v2", "language": "en",
    }


def ensure_task_data(task: Task, data_dir: str | Path | None = None, download: bool = False) -> Path | None:
    """The data file of ``task`` (downloaded first when asked); one clear error line when it is missing.
    Synthetic tasks need no file (returns None)."""
    if task.suite in ("synthetic", "ruler"):
        return None
    ddir = Path(data_dir) if data_dir else default_data_dir()
    if task.suite == "longbench_v2":
        path = find_v2_file(ddir)
        if path is None and download:
            download_longbench(ddir, v2=True)
            path = find_v2_file(ddir)
    else:
        name = f"{task.dataset}_e" if task.suite == "longbench_e" else task.dataset
        path = find_longbench_file(ddir, name)
        if path is None and download:
            download_longbench(ddir)
            path = find_longbench_file(ddir, name)
    if path is None:
        raise _missing(task, ddir)
    return path


def load_task_samples(task: Task, data_dir: str | Path | None = None, limit: int | None = None, seed: int = 42,
                      download: bool = False, synthetic_options: dict | None = None) -> list[dict]:
    """Samples of one task, in file order (LongBench) or generation order (synthetic); ``limit`` keeps the first N
    (for synthetic tasks: the first N of every setting)."""
    if task.suite == "synthetic":
        from oprm.tasks.synthetic import synthetic_samples  # noqa: PLC0415

        return synthetic_samples(task, limit=limit, seed=seed, options=synthetic_options)
    if task.suite == "ruler":
        from oprm.tasks.ruler import ruler_samples  # noqa: PLC0415

        return ruler_samples(task, limit=limit, seed=seed, options=synthetic_options)
    path = ensure_task_data(task, data_dir, download)
    if task.suite == "longbench_v2":
        if path.suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                rows = read_jsonl(path)
        else:
            rows = read_jsonl(path)
        samples = [_v2_sample(r) for r in rows]
    else:
        name = f"{task.dataset}_e" if task.suite == "longbench_e" else task.dataset
        samples = []
        for i, row in enumerate(read_jsonl(path)):
            if "input" not in row and "question" in row:  # parquet mirrors call the query "question"
                row["input"] = row["question"]
            missing = [k for k in ("context", "answers") if k not in row]
            if missing:
                raise OPRMUsageError(f"{path}: line {i + 1} lacks {', '.join(missing)} (not a LongBench file?)")
            row.setdefault("input", "")
            row.setdefault("all_classes", None)
            row.setdefault("length", len(row["context"].split()))
            row.setdefault("_id", f"{name}-{i}")
            samples.append(row)
    return samples[:limit] if limit is not None else samples
