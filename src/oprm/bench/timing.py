"""Timings of the speed benchmarks: CPU and wall seconds of one call, and medians."""

from __future__ import annotations

import statistics
import time


def timed(fn, *args, **kwargs):
    """(CPU seconds, wall seconds, result) of one call."""
    c, w = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return time.process_time() - c, time.perf_counter() - w, out


def median(values):
    return statistics.median(values) if values else None
