"""The weights' dtype a model gets by default: ``auto`` is decided by measurement, like the thread count.

On a CPU with native bf16 matrix instructions (``avx512_bf16`` or ``amx_bf16``; oneDNN then runs bf16 matmuls several
times faster than fp32), the families measured faster in bf16 with the same answers run in bf16; the rest stay fp32
(``docs/speed.md`` holds the measurements). Elsewhere (other CPUs, GPUs: not measured here) ``auto`` is fp32, the
dtype every exactness test runs in.

This is the one place of the rule: ``resolve_dtype`` is what ``load_model`` (so the CLI, the server, ``oprm eval``
and ``OPRM.from_pretrained``) applies to ``dtype="auto"``.
"""

from __future__ import annotations

import functools
import sys

from .errors import OPRMUsageError

__all__ = ["FAMILY_DTYPE", "DTYPES", "native_bf16", "auto_dtype", "resolve_dtype", "announce_dtype"]

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")

# auto on CPUs with native bf16 matmul, per family (runtime.family); docs/speed.md has the table behind it:
# matmul (Llama/SmolLM2): prefill 1.5-2.7x faster, decode the same, same needles found -> bf16;
# recurrent scans (Mamba, Mamba2, the shipped model) and hybrids (Zamba2): prefill only 1.2x, decode slower -> fp32
FAMILY_DTYPE = {"matmul": "bfloat16", "recurrent": "float32", "hybrid": "float32"}


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (``avx512_bf16`` / ``amx_bf16`` in /proc/cpuinfo) and
    torch's oneDNN can use it. Without them bf16 is emulated and slower than fp32."""
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: unknown, so not assumed
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(model, device=None) -> tuple[str, str]:
    """(dtype name, why) that ``auto`` means for ``model`` (a model, config or model_type) on ``device``."""
    from .runtime import family

    kind = family(model)
    if device is not None and str(device).split(":")[0] != "cpu":
        return "float32", f"{device}: not measured, fp32"
    if not native_bf16():
        return "float32", "this CPU has no native bf16 matmul"
    return FAMILY_DTYPE[kind], f"{kind} family, measured on CPUs with native bf16 matmul"


def resolve_dtype(dtype, model=None, device=None):
    """The torch dtype for a requested ``dtype`` (a name, a torch dtype, or ``auto`` decided for ``model``)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype)
    if name == "auto":
        name = auto_dtype(model, device)[0]
    value = getattr(torch, name, None) if name in DTYPES else None
    if not isinstance(value, torch.dtype):
        raise OPRMUsageError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    return value


_ANNOUNCED: set = set()


def announce_dtype(model, device=None) -> None:
    """Print what ``auto`` chose, once per process and model type (standard error: answers stay on stdout)."""
    name, why = auto_dtype(model, device)
    config = getattr(model, "config", model)  # a model or its config
    key = (getattr(config, "model_type", None), name)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(f"oprm: dtype auto -> {name} ({why}; --dtype float32 for the exactness reference)", file=sys.stderr)
