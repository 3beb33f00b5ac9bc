"""Benchmark tasks as data: LongBench v1 (21), LongBench-E (13), LongBench v2 and synthetic tasks."""

from oprm.tasks.data import load_task_samples
from oprm.tasks.registry import (
    LONGBENCH_DATASETS,
    LONGBENCH_E_DATASETS,
    LONGBENCH_EN_DATASETS,
    TASK_GROUPS,
    Task,
    expand_tasks,
    get_task,
    list_tasks,
    longbench_table,
)

__all__ = ["Task", "get_task", "expand_tasks", "list_tasks", "load_task_samples", "longbench_table", "TASK_GROUPS",
           "LONGBENCH_DATASETS", "LONGBENCH_E_DATASETS", "LONGBENCH_EN_DATASETS"]
