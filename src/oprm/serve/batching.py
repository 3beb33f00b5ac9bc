"""Decode steps, and prefill micro-batches, of several requests in one forward.

Each request's engine call decodes its own state one token at a time (``adapter.step``); the scheduler gathers the
steps that wait at the same moment and runs them as one batch: the states are stacked row-wise, run once, and split
back. A decode step reads every weight for one token per row, so B rows cost little more than one.

Recurrent layers stack as they are (Mamba2's conv and SSM states have no length). Attention layers hold keys/values
of each request's own length: they are left-padded to the longest and the padding is masked (an attention mask of
zeros), positions are given per row, and the padding is cut off again after the step. Hybrids (Jamba, Bamba, Zamba2,
FalconH1, ...: recurrent and attention layers in one cache, or both in one layer) do both, layer by layer. A
sliding window (Gemma 3) holds at most its window: each layer is padded to its own longest, and its count of tokens
sizes the mask. Every request keeps its own counters. xLSTM's states (no length, no positions) are stacked by its
adapter (``stacks_steps``). Other layouts (the RWKV and RecurrentGemma runtimes) are not stacked: their steps run one
by one, still interleaved with the other requests' work.

Prefill micro-batches of different requests (``pack_prefills``) share a forward where their rows have the same length
and start position and their start states stack as they are (none, or one of the layouts above at the same
length): the rows are concatenated and split back, with no padding, under the engine's token budget per forward.

Batching changes the shapes of the matrix products, so the logits can differ from a batch-1 step in the last bits
(the float noise of the prefill's micro-batches too); ``tests/test_serve_batching.py`` shows the answers equal, or the
top-2 margin at the first divergent token.
"""

from __future__ import annotations

import weakref

import torch

from ..adapters.base import state_from_leaves, state_leaves
from ..adapters.cache import CacheAdapter

try:  # transformers >= 5
    from transformers.cache_utils import (DummyLayer, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer,
                                          LinearAttentionAndFullAttentionLayer, LinearAttentionLayer)
    # exact types (a subclass may keep its state otherwise)
    KV_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionAndFullAttentionLayer)  # keys/values
    LINEAR_LAYERS = (LinearAttentionLayer, LinearAttentionAndFullAttentionLayer)  # states without length
    STACKED_LAYERS = {*KV_LAYERS, *LINEAR_LAYERS, DummyLayer}
except ImportError:  # pragma: no cover - older transformers: nothing is stacked
    DynamicCache = None


def layout(state) -> str | None:
    """'recurrent' (every layer an SSM / linear-attention layer), 'attention' (every layer keys/values, in full or
    in a sliding window), 'hybrid' (both) or None (not stacked across requests)."""
    if DynamicCache is None or type(state) is not DynamicCache:
        return None
    kinds = {type(layer) for layer in state.layers}
    if not kinds <= STACKED_LAYERS or any(getattr(layer, "record_past", False) for layer in state.layers):
        return None
    kv, linear = any(k in KV_LAYERS for k in kinds), any(k in LINEAR_LAYERS for k in kinds)
    return "hybrid" if kv and linear else "attention" if kv else "recurrent" if linear else None


def _counters(state) -> list[int | None]:
    """Each layer's own count of what it has seen (a sliding window's tokens, a recurrent layer's counter, whose unit
    is the model's: not always tokens), None for a layer without one."""
    return [layer.cumulative_length if type(layer) is DynamicSlidingWindowLayer
            else int(layer.cumulative_length_linear) if type(layer) in LINEAR_LAYERS else None
            for layer in state.layers]


def _set_counters(state, counts: list[int | None]) -> None:
    for layer, n in zip(state.layers, counts):
        if type(layer) is DynamicSlidingWindowLayer:
            layer.cumulative_length = n
        elif type(layer) in LINEAR_LAYERS:
            layer.cumulative_length_linear = torch.tensor(n)


def _length(state) -> int:
    """Tokens the state has seen: its full keys/values' length (else the largest counter: no keys to align)."""
    for layer in state.layers:
        if type(layer) in (DynamicLayer, LinearAttentionAndFullAttentionLayer):
            return layer.keys.shape[-2]
    return max(n for n in _counters(state) if n is not None)


def _cat(states: list, rows: list[int]):
    """One state whose rows are those of ``states`` in order (each holding ``rows[i]`` rows); keys/values shorter than
    the longest of their layer are left-padded with zeros in the same copy."""
    leaves = [state_leaves(s) for s in states]
    kv = {id(t) for layer in states[0].layers if type(layer) in KV_LAYERS for t in (layer.keys, layer.values)}
    tensors = []
    for parts in zip(*(t for t, _ in leaves)):
        longest = max(p.shape[-2] for p in parts) if id(parts[0]) in kv else None
        if longest is not None and any(p.shape[-2] != longest for p in parts):  # [b, heads, length, dim] each
            out = parts[0].new_empty((sum(rows), *parts[0].shape[1:-2], longest, parts[0].shape[-1]))
            r = 0
            for part, b in zip(parts, rows):
                pad = longest - part.shape[-2]
                out[r:r + b, ..., :pad, :] = 0
                out[r:r + b, ..., pad:, :] = part
                r += b
            tensors.append(out)
        elif all(p.dim() and p.shape[0] == r for p, r in zip(parts, rows)):
            tensors.append(torch.cat(parts))
        else:  # a counter (same for every row) or a shared value
            tensors.append(parts[0].clone())
    return state_from_leaves(states[0], tensors, leaves[0][1])


def _split(state, rows: list[int]) -> list:
    """The states of ``rows[i]`` consecutive rows each, as views of ``state``'s tensors (no copy: a decode step's
    state lives until the next step, which copies it into the next batch or continues it alone)."""
    tensors, scalars = state_leaves(state)
    total, out, r = sum(rows), [], 0
    for b in rows:
        out.append(state_from_leaves(state, [t.narrow(0, r, b) if t.dim() and t.shape[0] == total else t.clone()
                                             for t in tensors], scalars))
        r += b
    return out


def _own_rows(state) -> None:
    """Give a state handed out as a view of a batch copies of its own rows, in place (the request keeps the same
    object), so that the batch's memory can go."""
    tensors, scalars = state_leaves(state)
    own = [t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t for t in tensors]
    vars(state).update(vars(state_from_leaves(state, own, scalars)))


class BatchStateLost(RuntimeError):
    """A batch continued in place failed mid-forward: its requests' states (views of it) may have changed, so none
    can be stepped again on its own. ``__cause__`` is the model's error."""


class StepBatcher:
    """Runs a list of decode steps ``(token [b, 1], state, position)`` as few forwards as it can.

    The states handed back are views of the batch's state. When the next round brings the same states back, none
    stepped elsewhere in between, the batch continues in place: no copy in or out (``reused_steps``); any other
    round stacks its states anew. A view that steps alone is first copied, so that it does not keep the whole
    batch's memory for the rest of its request; a view that sits out a round (a decode paused while its request runs
    more look-aheads) is given its own rows then, so the batch it came from can go."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.rows = getattr(adapter, "stacks_steps", False)  # the adapter stacks its states itself
        self.enabled = self.rows or isinstance(adapter, CacheAdapter)  # off: every step alone
        self.batched_steps = 0  # forwards that served more than one request
        self.reused_steps = 0  # of which: continued the previous batch in place
        self.rows_stepped = 0
        self._batch = None  # (states handed out, their lengths, the batch's state they are views of)
        self._views = weakref.WeakSet()  # every state handed out as a view of a batch, while someone holds it

    def release(self) -> None:
        """Forget the last batch (a request left): its memory goes with the requests' own states."""
        self._batch = None

    def run(self, items: list[tuple]) -> list[tuple]:
        """[(logits [b, V] float32, new state)] per item, in order."""
        stepping = {id(state) for _, state, _ in items}
        for view in [v for v in self._views if id(v) not in stepping]:  # the batch moves on without it
            _own_rows(view)
            self._views.discard(view)
        groups: dict[str, list[int]] = {}
        out: list = [None] * len(items)
        for i, (_, state, _) in enumerate(items):
            kind = None if not self.enabled else "rows" if self.rows else layout(state)
            if kind is None:
                out[i] = self._alone(items[i])
            else:
                groups.setdefault(kind, []).append(i)
        for kind, members in groups.items():
            if len(members) == 1:
                out[members[0]] = self._alone(items[members[0]])
                continue
            group = [items[i] for i in members]
            for i, result in zip(members, self._rows(group) if kind == "rows" else self._stacked(kind, group)):
                out[i] = result
            self.batched_steps += 1
        self.rows_stepped += sum(item[0].shape[0] for item in items)
        return out

    def _alone(self, item: tuple) -> tuple:
        token, state, position = item
        if state in self._views:  # its own copy: a step in place would keep writing into the batch's memory
            state = self.adapter.select(state, list(range(token.shape[0])))
        return self.adapter.step(token, state, position)

    def _rows(self, items: list[tuple]) -> list[tuple]:
        """States the adapter stacks itself (``stacks_steps``): one step on their concatenation, split into copies."""
        rows = [token.shape[0] for token, _, _ in items]
        logits, state = self.adapter.step(torch.cat([token for token, _, _ in items]),
                                          self.adapter.concat([state for _, state, _ in items]), items[0][2])
        out, r = [], 0
        for b in rows:
            out.append((logits[r:r + b].clone(), self.adapter.select(state, list(range(r, r + b)))))
            r += b
        return out

    def _stacked(self, kind: str, items: list[tuple]) -> list[tuple]:
        last, self._batch = self._batch, None
        lengths = [_length(state) for _, state, _ in items]
        where = {id(state): i for i, (_, state, _) in enumerate(items)}
        if last is not None and len(last[0]) == len(items) and all(
                id(s) in where and lengths[where[id(s)]] == n for s, n in zip(last[0], last[1])):
            order = [where[id(s)] for s in last[0]]  # the last batch's row order
            batched, reused = last[2], True
            self.reused_steps += 1
        else:
            order, batched, reused = list(range(len(items))), None, False
        items, lengths = [items[i] for i in order], [lengths[i] for i in order]
        rows = [token.shape[0] for token, _, _ in items]
        device = items[0][0].device
        positions = torch.cat([torch.full((b, 1), p, dtype=torch.long, device=device)
                               for b, (_, _, p) in zip(rows, items)])
        longest = max(lengths)
        pads = [longest - n for n in lengths] if kind != "recurrent" else [0] * len(items)
        extra = {}
        if any(pads):
            mask = torch.ones(sum(rows), longest + 1, dtype=torch.long, device=device)
            r = 0
            for b, p in zip(rows, pads):
                mask[r:r + b, :p] = 0
                r += b
            extra["attention_mask"] = mask
        if batched is None:
            batched = _cat([state for _, state, _ in items], rows)
        counts = [_counters(state) for _, state, _ in items]
        # the batch's geometry: every row as far as the furthest (a sliding window's mask is sized by its count)
        _set_counters(batched, [None if c[0] is None else max(c) for c in zip(*counts)])
        try:
            logits, cache = self.adapter.forward(torch.cat([token for token, _, _ in items]), batched,
                                                 positions if self.adapter.takes_position_ids else None, 1, **extra)
        except BaseException as e:
            if reused and kind != "attention":  # keys/values are replaced, never written: only these changed
                raise BatchStateLost("a batched decode step failed") from e
            raise
        logits, states, r = logits[:, -1], _split(cache, rows), 0
        out: list = [None] * len(items)
        for i, state, b, n, own in zip(order, states, rows, lengths, counts):
            for layer in state.layers:  # each request's own keys/values and counters, not the batch's
                if type(layer) in KV_LAYERS:
                    keep = min(n + 1, layer.sliding_window - 1) if type(layer) is DynamicSlidingWindowLayer else n + 1
                    layer.keys, layer.values = layer.keys[:, :, -keep:], layer.values[:, :, -keep:]
            _set_counters(state, [None if c is None else c + 1 for c in own])
            out[i] = (logits[r:r + b].clone(), state)  # a request may keep its logits: not the batch's
            r += b
        self._views.update(states)
        self._batch = (states, [n + 1 for n in lengths], cache)
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
