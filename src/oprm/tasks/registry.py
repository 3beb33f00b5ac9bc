"""The task registry: every benchmark task as data (template, budgets, metric, OPRM treatment).

LongBench v1 / LongBench-E / LongBench v2 entries live in ``longbench_tasks.json`` (with the source commit of every
string); synthetic tasks (``ar``, ``niah_*``, ``passkey``) are defined in :mod:`oprm.tasks.synthetic`; both build
:class:`~oprm.tasks.task.Task` objects (their own module, so the two do not import each other).

A :class:`Task` knows how to
* give the prompt template for a mode (the OPRM IDK variant only for ``mode="oprm"`` with the IDK filter on, exactly
  like the official OPRM script; vanilla/truncate/bm25 use the original template),
* give the generation budget (``official`` = LongBench ``dataset2maxlen``, ``oprm`` = the OPRM script's shorter one),
* post-process a prediction (Qasper: the IDK word back to "unanswerable") and score it with the official metric.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from oprm.errors import OPRMUsageError
from oprm.tasks.ruler import RULER_TASKS
from oprm.tasks.task import Task

__all__ = ["Task", "get_task", "expand_tasks", "list_tasks", "longbench_table", "TASK_GROUPS", "LONGBENCH_DATASETS",
           "LONGBENCH_E_DATASETS", "LONGBENCH_EN_DATASETS"]


@lru_cache(maxsize=1)
def longbench_table() -> dict:
    text = resources.files("oprm.tasks").joinpath("longbench_tasks.json").read_text(encoding="utf-8")
    return json.loads(text)


LONGBENCH_DATASETS: tuple[str, ...] = tuple(longbench_table()["datasets"])
LONGBENCH_E_DATASETS: tuple[str, ...] = tuple(longbench_table()["longbench_e"])
LONGBENCH_EN_DATASETS: tuple[str, ...] = tuple(
    d for d, spec in longbench_table()["datasets"].items() if spec["language"] in ("en", "code"))
# niah_multivalue is RULER's (oprm.tasks.ruler); the lighter synthetic multi-value variant is niah_multivalue_lite
SYNTHETIC_TASKS = ("ar", "niah_single", "niah_multikey", "niah_multivalue_lite", "passkey", "secret_number")

TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "longbench": LONGBENCH_DATASETS,
    "longbench_en": LONGBENCH_EN_DATASETS,  # the 16 English + code datasets the OPRM paper reports
    "longbench_e": tuple(f"{d}_e" for d in LONGBENCH_E_DATASETS),
    "niah": ("niah_single", "niah_multikey", "niah_multivalue_lite"),
    "synthetic": SYNTHETIC_TASKS,
    "ruler": RULER_TASKS,  # NVIDIA/RULER's 13 tasks (oprm.tasks.ruler)
}


def _from_spec(name: str, dataset: str, suite: str, spec: dict) -> Task:
    return Task(name=name, dataset=dataset, suite=suite, category=spec["category"], language=spec["language"],
                metric=spec["metric"], template=spec["template"], idk_template=spec.get("idk_template"),
                max_new_tokens=spec["max_new_tokens"], oprm_max_new_tokens=spec.get("oprm_max_new_tokens"),
                decode=spec.get("decode", "one"), context_tail=spec.get("context_tail", False),
                first_line=spec.get("first_line", False), longbench_chat=spec.get("longbench_chat", True),
                idk_answer_map=spec.get("idk_answer_map"), oprm_template=spec.get("oprm_template"),
                oprm_idk_template=spec.get("oprm_idk_template"))


def list_tasks() -> list[str]:
    return (list(LONGBENCH_DATASETS) + [f"{d}_e" for d in LONGBENCH_E_DATASETS] + ["longbench_v2"]
            + list(SYNTHETIC_TASKS) + list(RULER_TASKS))


def get_task(name: str) -> Task:
    table = longbench_table()
    if name in table["datasets"]:
        return _from_spec(name, name, "longbench", table["datasets"][name])
    if name.endswith("_e") and name[:-2] in LONGBENCH_E_DATASETS:
        return _from_spec(name, name[:-2], "longbench_e", table["datasets"][name[:-2]])
    if name in ("longbench_v2", "longbench2"):
        return _from_spec("longbench_v2", "longbench_v2", "longbench_v2", table["longbench_v2"])
    if name in RULER_TASKS:
        from oprm.tasks.ruler import ruler_task  # noqa: PLC0415

        return ruler_task(name)
    if name in SYNTHETIC_TASKS:
        from oprm.tasks.synthetic import synthetic_task  # noqa: PLC0415

        return synthetic_task(name)
    raise OPRMUsageError(
        f"unknown task {name!r}; use a group ({', '.join(TASK_GROUPS)}, longbench_v2) or one of: {', '.join(list_tasks())}")


def expand_tasks(spec: str | list[str] | tuple[str, ...]) -> list[Task]:
    """``"longbench_e,ar"`` or ``["hotpotqa", "niah"]`` -> Task objects (groups expanded, duplicates dropped)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not names:
        raise OPRMUsageError("no tasks given (e.g. --tasks longbench_e,ar)")
    out: list[Task] = []
    seen: set[str] = set()
    for n in names:
        for m in TASK_GROUPS.get(n, (n,)):
            t = get_task(m)
            if t.name not in seen:
                seen.add(t.name)
                out.append(t)
    return out
