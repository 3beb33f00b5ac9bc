"""RWKV (v4 in transformers): the state is a list of 5 tensors [B, hidden, layers] passed as ``state=``.

The model mutates the state in place, so every call gets a private copy. Multi-token continuation is exact. Batched
single-token decoding is broken in transformers 5.24 (a [B, H] shift state broadcasts to [B, B, H]); the engine only
decodes batch 1, which is exact.
"""

from __future__ import annotations

import torch

from .base import StateAdapter


class RwkvAdapter(StateAdapter):
    def prefill(self, input_ids, state=None, start=0, num_logits=1):
        state = [s.clone() for s in state] if state is not None else None
        out = self.model(input_ids=input_ids, state=state, use_cache=True, logits_to_keep=num_logits)
        return self.last_logits(out.logits, num_logits), out.state

    def step(self, token, state, position):
        if token.shape[0] == 1:
            return super().step(token, state, position)
        # the batched single-token path is the broken one: one row at a time
        steps = [super(RwkvAdapter, self).step(token[r:r + 1], self.select(state, [r]), position)
                 for r in range(token.shape[0])]
        return torch.cat([logits for logits, _ in steps]), self.concat([s for _, s in steps])

    def select(self, state, rows):
        index = torch.as_tensor(rows, dtype=torch.long, device=state[0].device)
        return [s.index_select(0, index) for s in state]
