"""Models whose state is a transformers ``Cache`` (``DynamicCache`` and its linear-attention layers).

Mamba, FalconMamba, Mamba2, Zamba, Zamba2, Bamba, Jamba, GraniteMoeHybrid, FalconH1, NemotronH, Lfm2, Qwen3-Next,
Qwen3.5, plain attention models (Llama, Gemma, ...), and remote-code models that follow the cache protocol.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

from ..runtime import family
from .base import StateAdapter, copy_structure
from .mamba_scan import stateful_mamba_scan, supports_stateful_scan

# Architectures whose multi-token forward from a cached state is wrong in transformers 5.24: the Mamba1 mixer
# restarts the selective scan from zeros (Mamba 1.7e-2, FalconMamba 0.27, Jamba 3e-4 max |Δlogit|). Our own
# block-wise scan (mamba_scan.py) continues exactly from the cached state, with memory bounded by the block size.
MAMBA1_FAMILY = ("mamba", "falcon_mamba", "jamba")


class CacheAdapter(StateAdapter):
    def __init__(self, model, stateful_scan: bool = True):
        super().__init__(model)
        params = inspect.signature(model.forward).parameters
        # transformers 5.x names the state `cache`; older remote code still says `past_key_values`
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.takes_logits_to_keep = "logits_to_keep" in params
        self.stateful_scan = stateful_scan and supports_stateful_scan(model)
        self.continuation_exact = model.config.model_type not in MAMBA1_FAMILY or self.stateful_scan
        self.sliding_window = sliding_window(model.config)
        if family(model) == "matmul":  # pure attention: recomputing a short P is cheaper than the masked path
            self.prefix_share_fraction = 0.5

    def prefill(self, input_ids, state=None, start=0, num_logits=1):
        positions = self.position_ids(input_ids.shape[0], input_ids.shape[1], start) if self.takes_position_ids else None
        return self.forward(input_ids, state, positions, num_logits)

    def forward(self, input_ids, state, position_ids=None, num_logits=1, **extra):
        """The model's forward on ``input_ids`` continuing ``state`` (``extra``: e.g. an attention mask):
        (the last ``num_logits`` logits, the new cache)."""
        kwargs = {"input_ids": input_ids, self.cache_arg: state, "use_cache": True, **extra}
        if position_ids is not None:  # explicit positions: Bamba and MiniMax ignore the cache offset otherwise
            kwargs["position_ids"] = position_ids
        if self.takes_logits_to_keep:
            kwargs["logits_to_keep"] = num_logits
        scan = stateful_mamba_scan(self.model) if self.stateful_scan else contextlib.nullcontext()
        with scan:
            out = self.model(**kwargs)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        return self.last_logits(out.logits, num_logits), cache

    def select(self, state, rows):
        selected = copy_structure(state)
        selected.reorder_cache(torch.as_tensor(rows, dtype=torch.long, device=self.device))
        return selected


def sliding_window(config) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma 2/3, Mistral, Qwen2 when enabled), else None."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    if not window or not getattr(config, "use_sliding_window", True) or (
            layer_types and "sliding_attention" not in layer_types):
        return None
    return int(window)
