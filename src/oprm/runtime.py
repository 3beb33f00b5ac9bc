"""Torch CPU threads: how many a model gets by default, per architecture family.

Recurrent scans (Mamba, Mamba2, RWKV, ...) are chains of small, memory-bound steps: on small machines a second
thread only adds synchronisation. Matmul-bound models (transformers, the attention and MLP parts of hybrids) split
their large matrix products across threads. ``docs/bench/threads/`` holds the measurement behind ``FAMILY_THREADS``
and the command that reproduces it.
"""

from __future__ import annotations

import math
import os

from .errors import OPRMUsageError

__all__ = ["family", "default_threads", "set_threads", "FAMILY_THREADS", "RECURRENT", "HYBRID"]

# model_type values by family; anything else (Llama, Gemma, Qwen, GGUF transformers, ...) counts as "matmul"
RECURRENT = ("mamba", "falcon_mamba", "mamba2", "rwkv", "rwkv6", "rwkv7", "xlstm", "recurrent_gemma")
HYBRID = ("zamba", "zamba2", "jamba", "bamba", "falcon_h1", "nemotron_h", "granitemoehybrid", "lfm2", "qwen3_next",
          "qwen3_5_text", "minimax")

# threads on machines with at most SMALL_MACHINE cores, per family ("all": every core); see docs/bench/threads/
FAMILY_THREADS = {"recurrent": 1, "hybrid": 1, "matmul": 1}
SMALL_MACHINE = 4


def family(model_or_type) -> str:
    """``recurrent``, ``hybrid`` or ``matmul`` for a model, a config, or a ``model_type`` string (None: matmul)."""
    model_type = model_or_type
    if model_or_type is not None and not isinstance(model_or_type, str):
        config = model_or_type.config if hasattr(model_or_type, "config") else model_or_type
        model_type = config.model_type
    if model_type in RECURRENT:
        return "recurrent"
    if model_type in HYBRID:
        return "hybrid"
    return "matmul"


def default_threads(model=None) -> int:
    """Torch CPU threads for ``model`` (a model, config or model_type; None: the most conservative family).

    Small machines (<= 4 cores) use the measured count of the model's family; larger ones half the cores, leaving
    room for the data loading and tokenization around the model."""
    cores = os.cpu_count() or 1
    if cores > SMALL_MACHINE:
        return max(1, math.floor(cores / 2))
    wanted = FAMILY_THREADS[family(model)] if model is not None else min(FAMILY_THREADS.values())
    return cores if wanted == "all" else max(1, min(cores, wanted))


def set_threads(value: int | None = None, model=None) -> int:
    """Set torch's CPU thread count (``None``: the default for ``model``'s family); returns the count set."""
    import torch

    if value is not None and value < 1:
        raise OPRMUsageError(f"--threads must be positive, got {value}")
    count = value or default_threads(model)
    torch.set_num_threads(count)
    return count
