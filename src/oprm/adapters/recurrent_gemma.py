"""RecurrentGemma: the recurrent state lives on the modules, the sliding-window keys/values in a DynamicCache.

Our state object holds both explicitly: the cache plus, per recurrent block, (conv1d_state, rg_lru.recurrent_states).
Before each forward the adapter installs the state on the modules and reads it back afterwards, so states of
different chunks never leak into each other. A multi-token forward recomputes the conv state from scratch in
transformers 5.24 (error 2.7e-2), so the shared prefix is recomputed per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .base import StateAdapter, copy_structure


@dataclass
class RecurrentGemmaState:
    cache: DynamicCache
    blocks: list[tuple[torch.Tensor, torch.Tensor]]  # per recurrent block: (conv1d_state, recurrent_states)


class RecurrentGemmaAdapter(StateAdapter):
    continuation_exact = False

    def __init__(self, model):
        super().__init__(model)
        self.blocks = [layer.temporal_block for layer in model.model.layers
                       if hasattr(layer.temporal_block, "rg_lru")]

    def prefill(self, input_ids, state=None, start=0, num_logits=1):
        if state is None:
            if start:
                raise ValueError("RecurrentGemma cannot continue from an empty state at a non-zero position")
            cache = DynamicCache(config=self.model.config)
            for block in self.blocks:  # position 0 resets the RG-LRU; the prefill branch rewrites the conv state
                block.conv1d_state = block.rg_lru.recurrent_states = None
        else:
            cache = state.cache
            for block, (conv, rec) in zip(self.blocks, state.blocks):
                block.conv1d_state, block.rg_lru.recurrent_states = conv.clone(), rec.clone()
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=num_logits,
                         position_ids=self.position_ids(input_ids.shape[0], input_ids.shape[1], start))
        blocks = [(b.conv1d_state, b.rg_lru.recurrent_states) for b in self.blocks]
        for block in self.blocks:  # leave nothing behind on the modules
            block.conv1d_state = block.rg_lru.recurrent_states = None
        return self.last_logits(out.logits, num_logits), RecurrentGemmaState(cache, blocks)

    def select(self, state, rows):
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        cache = copy_structure(state.cache)
        cache.reorder_cache(index)
        return RecurrentGemmaState(cache, [(c.index_select(0, index), r.index_select(0, index))
                                           for c, r in state.blocks])
