"""The adapter interface: the only code that knows how a model family holds, slices and continues its state.

The engine never touches a state's internals; it asks the adapter to prefill token ids (optionally on top of a state),
to take some rows of a batched state, and to run one decoding step. States are passed explicitly and never hidden on
the model (RecurrentGemma keeps its state on its modules; its adapter swaps it in and out around each call).
"""

from __future__ import annotations

import copy
import inspect

import torch


class StateAdapter:
    #: True when a multi-token forward from a cached state is exact, so P's state can be computed once and broadcast
    continuation_exact: bool = True
    #: P's state is shared only when P holds at least this fraction of a row's other tokens ([C_i, S]): rows that
    #: continue a KV cache run attention on its masked path (SmolLM2 bf16: OPRM's prefill at 0.70x a plain forward's
    #: tok/s with P shared, 0.98x with P recomputed in every row; docs/speed.md). 0: always share.
    prefix_share_fraction: float = 0.0
    #: the window of a model with sliding-window attention layers, else None (see ``long_prefill_segment``)
    sliding_window: int | None = None
    #: the server may run decode steps of different requests as one batch through ``concat``, ``step`` and ``select``:
    #: states whose tensors have no length, a model without positions whose batched step is exact (xLSTM). Cache
    #: states (attention, SSM, hybrids) are stacked by serve/batching.py itself.
    stacks_steps: bool = False

    def __init__(self, model):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in params

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- the three operations the engine needs -------------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, state=None, start: int = 0, num_logits: int = 1):
        """Run ``input_ids`` [B, T] (on top of ``state`` when given, whose rows have seen ``start`` tokens).

        Returns (logits [B, num_logits, V] in float32 for the last positions, new state). ``state`` may be consumed.
        """
        raise NotImplementedError

    def select(self, state, rows: list[int]):
        """A new state holding ``rows`` of ``state`` (a list of row indices; repeat an index to broadcast).

        The result shares no mutable storage with ``state``.
        """
        raise NotImplementedError

    def step(self, token: torch.Tensor, state, position: int):
        """One decoding step of ``token`` [1, 1] at absolute ``position``; returns (logits [1, V] float32, state)."""
        logits, state = self.prefill(token, state, start=position, num_logits=1)
        return logits[:, -1], state

    def concat(self, states: list):
        """One batched state whose rows are the given batch-1 states, in order (the inverse of ``select``).

        Generic over every state layout: tensors with a leading batch dimension are concatenated, everything else
        (flags, offsets) is taken from the first state. The result shares no storage with the inputs."""
        leaves = [state_leaves(s) for s in states]
        tensors = [torch.cat(parts) if parts[0].dim() and parts[0].shape[0] == 1 else parts[0].clone()
                   for parts in zip(*(t for t, _ in leaves))]
        return state_from_leaves(states[0], tensors, leaves[0][1])

    def long_prefill_segment(self, max_batch_tokens: int) -> int:
        """Tokens per forward of a long batch-1 prompt. A sliding-window layer attends over the whole segment through
        a mask (SDPA skips no masked block on CPU), so on CPU segments of four windows do less work: Gemma-3-270M
        (window 512), bf16, one thread, prefill CPU seconds at 16K: 31.6 / 18.3 / 17.4 / 19.6 for segments of 8192 /
        2048 / 1024 / 512 tokens, at 32K 84.1 / 46.6 (8192 / 2048; docs/speed.md). Not measured on GPUs."""
        if self.sliding_window and self.device.type == "cpu":
            return min(max_batch_tokens, 4 * self.sliding_window)
        return max_batch_tokens

    # --- helpers --------------------------------------------------------------------------------------------------
    def position_ids(self, batch: int, length: int, start: int) -> torch.Tensor:
        return torch.arange(start, start + length, device=self.device).unsqueeze(0).expand(batch, -1)

    @staticmethod
    def last_logits(logits: torch.Tensor, num_logits: int) -> torch.Tensor:
        # some models (xLSTM) ignore logits_to_keep and return every position
        return logits[:, -num_logits:].float()


def _walk(obj, visit_tensor, visit_scalar, seen=None):
    """Visit the tensors and plain values of a state object in a fixed order (dicts in key order, lists in order,
    objects by attribute), skipping modules, dtypes and devices."""
    if isinstance(obj, torch.Tensor):
        visit_tensor(obj)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        visit_scalar(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _walk(value, visit_tensor, visit_scalar)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _walk(value, visit_tensor, visit_scalar)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        for value in vars(obj).values():
            _walk(value, visit_tensor, visit_scalar)


def state_leaves(state) -> tuple[list[torch.Tensor], list]:
    """The tensors and the plain values (flags, offsets) of a state, in a fixed order: with a template state of the
    same model, ``state_from_leaves`` rebuilds it (documents on disk keep only these)."""
    tensors, scalars = [], []
    _walk(state, tensors.append, scalars.append)
    return tensors, scalars


def state_nbytes(state) -> int:
    """Bytes of a state's tensors."""
    return sum(t.numel() * t.element_size() for t in state_leaves(state)[0])


def state_from_leaves(template, tensors: list[torch.Tensor], scalars: list):
    """A state shaped like ``template`` holding ``tensors`` and ``scalars`` (as ``state_leaves`` lists them)."""
    tensor_iter, scalar_iter = iter(tensors), iter(scalars)

    def build(obj):
        if isinstance(obj, torch.Tensor):
            return next(tensor_iter)
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return next(scalar_iter)
        if isinstance(obj, dict):
            return type(obj)((key, build(value)) for key, value in obj.items())
        if isinstance(obj, (list, tuple)):
            items = [build(value) for value in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        if hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
            new = copy.copy(obj)
            new.__dict__.update({key: build(value) for key, value in vars(obj).items()})
            return new
        return obj

    state = build(template)
    if next(tensor_iter, None) is not None or next(scalar_iter, _END) is not _END:
        raise ValueError("the state does not fit the model's state layout")
    return state


_END = object()


def copy_structure(obj):
    """Deep-copy the Python structure of ``obj`` but share its large tensors.

    Row selection then replaces the state tensors (``index_select``) inside the copy without touching the original
    and without first copying every row of a large batch state. Small tensors (offsets, counters that models update
    in place) are copied.
    """
    memo: dict[int, object] = {}
    # an explicit stack, not a recursive closure: a nested function that calls itself is a reference cycle (function
    # -> cell -> function) holding ``memo``, so every copy (and the batch tensors it shares) would live until Python's
    # cyclic GC ran, which large tensors hardly trigger: a prefill's selected rows piled up micro-batch after
    # micro-batch (hundreds of MB on a long document)
    seen, stack = set(), [obj]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            if x.numel() > 64:
                memo[id(x)] = x
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set)):
            stack.extend(x)
        elif hasattr(x, "__dict__") and not isinstance(x, (type, torch.nn.Module)):
            stack.extend(vars(x).values())
    return copy.deepcopy(obj, memo)
