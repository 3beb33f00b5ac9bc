"""Model state adapters: pick the one that knows a model's state layout."""

from __future__ import annotations

import inspect

from ..errors import OPRMUsageError
from .base import StateAdapter
from .cache import CacheAdapter
from .recurrent_gemma import RecurrentGemmaAdapter
from .rwkv import RwkvAdapter
from .rwkv_runtime import RwkvRuntimeAdapter
from .xlstm import XlstmAdapter

SPECIAL_ADAPTERS = {"rwkv": RwkvAdapter, "recurrent_gemma": RecurrentGemmaAdapter, "xlstm": XlstmAdapter,
                    "rwkv_runtime": RwkvRuntimeAdapter}  # RWKV v4-v7 .pth files on the `rwkv` runtime

# Tested exact with tiny random-weight configs (tests/test_exactness.py); others that follow the cache protocol
# go through CacheAdapter too.
CACHE_ARCHITECTURES = ("mamba", "falcon_mamba", "mamba2", "zamba", "zamba2", "bamba", "jamba", "granitemoehybrid",
                       "falcon_h1", "nemotron_h", "lfm2", "qwen3_next", "qwen3_5_text", "llama", "gemma", "gemma3_text")
SUPPORTED = tuple(sorted(set(CACHE_ARCHITECTURES) | set(SPECIAL_ADAPTERS)))
# Caches whose layout reorder_cache does not fully cover (MiniMax keeps lightning states outside `layers`).
UNSUPPORTED = ("minimax",)


def get_adapter(model) -> StateAdapter:
    model_type = getattr(model.config, "model_type", None)
    if model_type in SPECIAL_ADAPTERS:
        return SPECIAL_ADAPTERS[model_type](model)
    params = inspect.signature(model.forward).parameters
    if model_type not in UNSUPPORTED and hasattr(model, "generate") and ("cache" in params or "past_key_values" in params):
        return CacheAdapter(model)
    raise OPRMUsageError(
        f"unsupported architecture {model_type!r} ({type(model).__name__}); supported: {', '.join(SUPPORTED)}, "
        "and causal LMs whose forward takes a transformers cache")


__all__ = ["StateAdapter", "get_adapter", "SUPPORTED"]
