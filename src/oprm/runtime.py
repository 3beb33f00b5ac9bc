"""Torch CPU threads: how many a model gets by default.

On a 2-vCPU machine a second thread pays off for every family measured when the second core is free: prefill
1.5-1.9x faster for the pure-PyTorch Mamba/Mamba2 scans, the Zamba2 hybrid, Llama and SmolLM2 (decode 1.03-1.7x),
and no slower for RWKV7 (``docs/bench/threads/idle/``). When another job holds that core, two threads lose for every
family, by 2-8x in prefill and up to 30x in decode (threads spin-waiting for a busy core;
``docs/bench/threads/loaded/``). So on small machines a model takes the cores that the 1-minute load average leaves
idle; the per-family table stays so that a family measured otherwise can get its own rule.
"""

from __future__ import annotations

import math
import os

from .errors import OPRMUsageError

__all__ = ["family", "default_threads", "set_threads", "idle_cores", "FAMILY_THREADS", "RECURRENT", "HYBRID"]

# model_type values by family; anything else (Llama, Gemma, Qwen, GGUF transformers, ...) counts as "matmul"
RECURRENT = ("mamba", "falcon_mamba", "mamba2", "rwkv", "rwkv_runtime", "xlstm", "recurrent_gemma")
HYBRID = ("zamba", "zamba2", "jamba", "bamba", "falcon_h1", "nemotron_h", "granitemoehybrid", "lfm2", "qwen3_next",
          "qwen3_5_text", "minimax")

# threads on machines with at most SMALL_MACHINE cores, per family ("idle": the cores the load average leaves free)
FAMILY_THREADS = {"recurrent": "idle", "hybrid": "idle", "matmul": "idle"}
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


def idle_cores() -> int:
    """Cores the 1-minute load average leaves free (at least 1; all of them where the load is unknown)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return cores
    return max(1, min(cores, cores - round(load)))


def default_threads(model=None) -> int:
    """Torch CPU threads for ``model`` (a model, config or model_type; None: the recurrent family's rule).

    Small machines (<= 4 cores) use their family's rule (``FAMILY_THREADS``); larger ones half the cores, leaving
    room for the data loading and tokenization around the model."""
    cores = os.cpu_count() or 1
    if cores > SMALL_MACHINE:
        return max(1, math.floor(cores / 2))
    wanted = FAMILY_THREADS[family(model) if model is not None else "recurrent"]
    return idle_cores() if wanted == "idle" else max(1, min(cores, wanted))


def set_threads(value: int | None = None, model=None) -> int:
    """Set torch's CPU thread count (``None``: the default for ``model``'s family); returns the count set."""
    import torch

    if value is not None and value < 1:
        raise OPRMUsageError(f"--threads must be positive, got {value}")
    count = value or default_threads(model)
    torch.set_num_threads(count)
    return count
