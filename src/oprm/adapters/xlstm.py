"""xLSTM: ``xLSTMCache`` (not a transformers ``Cache``) with ``rnn_state = {layer: (C, n, m)}``.

Multi-token continuation is exact. Exactness in float32 needs ``autocast_kernel_dtype="float32"`` in the config
(the default is bfloat16), and ``logits_to_keep`` is ignored by the model (handled in ``last_logits``).
"""

from __future__ import annotations

import torch

from .base import StateAdapter, copy_structure


class XlstmAdapter(StateAdapter):
    stacks_steps = True  # (C, n, m) per layer have no length; seqlen_offset only counts and follows the first row
    def prefill(self, input_ids, state=None, start=0, num_logits=1):
        if state is not None:
            state = self.select(state, list(range(input_ids.shape[0])))  # the model updates its cache in place
        out = self.model(input_ids=input_ids, cache=state, use_cache=True)
        return self.last_logits(out.logits, num_logits), out.cache

    def concat(self, states):
        merged = copy_structure(states[0])  # seqlen_offset is one counter for the batch, not a row tensor
        merged.rnn_state = {layer: tuple(torch.cat(parts) for parts in zip(*(s.rnn_state[layer] for s in states)))
                            for layer in states[0].rnn_state}
        return merged

    def select(self, state, rows):
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        selected = copy_structure(state)
        selected.rnn_state = {layer: tuple(t.index_select(0, index) for t in tensors)
                              for layer, tensors in state.rnn_state.items()}
        return selected
