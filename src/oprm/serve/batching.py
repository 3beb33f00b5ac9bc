"""Decode steps, and prefill micro-batches, of several requests in one forward.

Each request's engine call decodes its own state one token at a time (``adapter.step``); the scheduler gathers the
steps that wait at the same moment and runs them as one batch: the states are stacked row-wise, run once, and split
back. A decode step reads every weight for one token per row, so B rows cost little more than one.

States stack as they are where every layer is recurrent (Mamba2's conv and SSM states have no length). Attention
layers hold keys/values of each request's own length: rows are left-padded to the longest and the padding is masked
(an attention mask of zeros), positions are given per row, and the padding is cut off again after the step. Other
state layouts (sliding windows, hybrids mixing both, RWKV/xLSTM runtimes) are not stacked: their steps run one by one,
still interleaved with the other requests' work.

Prefill micro-batches of different requests (``pack_prefills``) share a forward where their rows have the same length
and start position and their start states stack as they are (none, or one of the layouts above at the same
length): the rows are concatenated and split back, with no padding, under the engine's token budget per forward.

Batching changes the shapes of the matrix products, so the logits can differ from a batch-1 step in the last bits
(the float noise of the prefill's micro-batches too); ``tests/test_serve_batching.py`` shows the answers equal, or the
top-2 margin at the first divergent token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapters.base import state_from_leaves, state_leaves
from ..adapters.cache import CacheAdapter

try:  # transformers >= 5
    from transformers.cache_utils import DynamicCache, DynamicLayer, LinearAttentionLayer
except ImportError:  # pragma: no cover - older transformers: nothing is stacked
    DynamicCache = DynamicLayer = LinearAttentionLayer = None


def layout(state) -> str | None:
    """'recurrent' (every layer a linear-attention/SSM layer), 'attention' (every layer plain keys/values) or None
    (not stacked across requests)."""
    if DynamicCache is None or type(state) is not DynamicCache:
        return None
    kinds = {type(layer) for layer in state.layers}
    if kinds == {LinearAttentionLayer}:
        return "recurrent"
    if kinds == {DynamicLayer}:
        return "attention"
    return None


def _length(state) -> int:
    return state.layers[0].get_seq_length()


def _rows(state) -> int:
    leaf = state_leaves(state)[0]
    return next(t.shape[0] for t in leaf if t.dim())


def _pad_left(state, pad: int):
    """A copy of an attention state whose keys/values are left-padded with ``pad`` zero positions."""
    if pad == 0:
        return state
    out = DynamicCache.__new__(DynamicCache)
    out.__dict__.update(state.__dict__)
    out.layers = []
    for layer in state.layers:
        new = DynamicLayer.__new__(DynamicLayer)
        new.__dict__.update(layer.__dict__)
        new.keys = F.pad(layer.keys, (0, 0, pad, 0))
        new.values = F.pad(layer.values, (0, 0, pad, 0))
        out.layers.append(new)
    return out


def _cat(states: list, rows: list[int]):
    """One state whose rows are those of ``states`` in order (each holding ``rows[i]`` rows)."""
    leaves = [state_leaves(s) for s in states]
    tensors = []
    for parts in zip(*(t for t, _ in leaves)):
        if all(p.dim() and p.shape[0] == r for p, r in zip(parts, rows)):
            tensors.append(torch.cat(parts))
        else:  # a counter (same for every row) or a shared value
            tensors.append(parts[0].clone())
    return state_from_leaves(states[0], tensors, leaves[0][1])


class StepBatcher:
    """Runs a list of decode steps ``(token [b, 1], state, position)`` as few forwards as it can."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.enabled = isinstance(adapter, CacheAdapter)
        self.batched_steps = 0  # forwards that served more than one request
        self.rows_stepped = 0

    def run(self, items: list[tuple]) -> list[tuple]:
        """[(logits [b, V] float32, new state)] per item, in order."""
        groups: dict[str, list[int]] = {}
        out: list = [None] * len(items)
        for i, (_, state, _) in enumerate(items):
            kind = layout(state) if self.enabled else None
            if kind is None:
                out[i] = self.adapter.step(*items[i])
            else:
                groups.setdefault(kind, []).append(i)
        for kind, members in groups.items():
            if len(members) == 1:
                out[members[0]] = self.adapter.step(*items[members[0]])
                continue
            for i, result in zip(members, self._stacked(kind, [items[i] for i in members])):
                out[i] = result
            self.batched_steps += 1
        self.rows_stepped += sum(item[0].shape[0] for item in items)
        return out

    def _stacked(self, kind: str, items: list[tuple]) -> list[tuple]:
        adapter = self.adapter
        rows = [token.shape[0] for token, _, _ in items]
        states = [state for _, state, _ in items]
        device = items[0][0].device
        positions = torch.cat([torch.full((b, 1), p, dtype=torch.long, device=device)
                               for b, (_, _, p) in zip(rows, items)])
        extra = {}
        pads = [0] * len(items)
        if kind == "attention":
            lengths = [_length(s) for s in states]
            longest = max(lengths)
            pads = [longest - n for n in lengths]
            states = [_pad_left(s, p) for s, p in zip(states, pads)]
            if any(pads):
                mask = torch.ones(sum(rows), longest + 1, dtype=torch.long, device=device)
                r = 0
                for b, p in zip(rows, pads):
                    mask[r:r + b, :p] = 0
                    r += b
                extra["attention_mask"] = mask
        counters = [[layer.cumulative_length_linear.clone() for layer in s.layers] if kind == "recurrent" else None
                    for s in states]
        logits, cache = adapter.forward(torch.cat([token for token, _, _ in items]), _cat(states, rows),
                                        positions if adapter.takes_position_ids else None, 1, **extra)
        logits = logits[:, -1]
        out, r = [], 0
        for b, pad, counter in zip(rows, pads, counters):
            state = adapter.select(cache, list(range(r, r + b)))
            for k, layer in enumerate(state.layers):
                if pad:
                    layer.keys = layer.keys[:, :, pad:].contiguous()
                    layer.values = layer.values[:, :, pad:].contiguous()
                if counter is not None:  # each request's own token count, not the first row's
                    layer.cumulative_length_linear = counter[k] + 1
            out.append((logits[r:r + b], state))
            r += b
        return out


def packable(a: tuple, b: tuple) -> bool:
    """Whether two prefill calls ``(input_ids, state, start, num_logits)`` can share a forward unpadded: rows of the
    same length from the same start position, and start states that stack as they are."""
    (ids_a, state_a, *rest_a), (ids_b, state_b, *rest_b) = a, b
    if ids_a.shape[1] != ids_b.shape[1] or rest_a != rest_b or (state_a is None) != (state_b is None):
        return False
    return state_a is None or (layout(state_a) is not None and layout(state_a) == layout(state_b)
                               and _length(state_a) == _length(state_b))


def prefill_size(call: tuple) -> int:
    """What a prefill call weighs against the token budget, as the engine sizes its micro-batches: each row's tokens
    and the positions its start state holds (S on an encoded document: few tokens, a whole state per row)."""
    ids, state, start, _ = call
    return ids.shape[0] * (ids.shape[1] + (start if state is not None else 0))


def pack_prefills(adapter, items: list[tuple]) -> list[tuple]:
    """Prefill calls ``(input_ids, state, start, num_logits)`` (all ``packable`` with the first) as one forward:
    [(logits, state)] per call, in order, each state its own copy of its rows."""
    rows = [ids.shape[0] for ids, *_ in items]
    states = [state for _, state, *_ in items]
    _, _, start, num_logits = items[0]
    state = None if states[0] is None else _cat(states, rows)
    logits, state = adapter.prefill(torch.cat([ids for ids, *_ in items]), state, start, num_logits)
    out, r = [], 0
    for b in rows:
        out.append((logits[r:r + b], adapter.select(state, list(range(r, r + b)))))
        r += b
    return out
