"""``oprm eval`` as a library: run benchmark tasks through an OPRM engine and score them like the official scripts.

Output layout (``output_path/<model>/``)::

    <config>/pred/<dataset>.jsonl      one line per sample: _id, pred, answers, all_classes, length (what LongBench's
    <config>/pred_e/<dataset>.jsonl    eval.py reads) + score and OPRM diagnostics (chosen chunks, entropies, ...)
    results.json                       every score, per config and task (LongBench-E buckets, v2 columns, settings)
    results.md                         markdown tables: tasks as rows, configs (mode/chunk size/selection/IDK) as columns
    plots/*.png                        score by length bucket per config; AR accuracy vs number of facts; NIAH vs length

``<config>`` is e.g. ``oprm_cs2000_entropy_idk``, ``vanilla``, ``truncate_cs2000``, ``bm25_cs2000``, ``oracle_cs2000``.
Runs are resumable: each finished sample is appended (and flushed) at once, and a rerun skips the ``_id``s already
in the file. ``score_dir`` rescores any folder of prediction files, including those of the official OPRM script.

Modules, one job each: ``configs`` (the run grid and its names), ``baselines`` (BM25), ``protocol`` (what the runner
needs from an engine), ``runner`` (samples through the engine), ``storage`` (JSONL append/resume, per-rank merge,
results.json), ``scoring`` (aggregation, rescoring), ``report`` (markdown tables, plots), ``cli`` (the commands).
Names are imported on first use, so building the command line stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MODES": "configs", "RunConfig": "configs", "build_configs": "configs", "options_tag": "configs",
    "bm25_context": "baselines", "EvalEngine": "protocol", "EvalResult": "protocol",
    "evaluate": "runner", "run_sample": "runner", "RunSettings": "runner",
    "merge_prediction_files": "storage", "aggregate": "scoring", "score_dir": "scoring",
    "results_markdown": "report", "score_table": "report", "make_plots": "report",
    "add_eval_arguments": "cli", "add_score_arguments": "cli", "add_parser": "cli", "run_eval": "cli",
    "run_score": "cli",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'oprm.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(f"oprm.eval.{_EXPORTS[name]}"), name)
