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

    # --- helpers --------------------------------------------------------------------------------------------------
    def position_ids(self, batch: int, length: int, start: int) -> torch.Tensor:
        return torch.arange(start, start + length, device=self.device).unsqueeze(0).expand(batch, -1)

    @staticmethod
    def last_logits(logits: torch.Tensor, num_logits: int) -> torch.Tensor:
        # some models (xLSTM) ignore logits_to_keep and return every position
        return logits[:, -num_logits:].float()


def copy_structure(obj):
    """Deep-copy the Python structure of ``obj`` but share its large tensors.

    Row selection then replaces the state tensors (``index_select``) inside the copy without touching the original
    and without first copying every row of a large batch state. Small tensors (offsets, counters that models update
    in place) are copied.
    """
    memo: dict[int, object] = {}

    def visit(x, seen):
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            if x.numel() > 64:
                memo[id(x)] = x
        elif isinstance(x, dict):
            for v in x.values():
                visit(v, seen)
        elif isinstance(x, (list, tuple, set)):
            for v in x:
                visit(v, seen)
        elif hasattr(x, "__dict__") and not isinstance(x, (type, torch.nn.Module)):
            for v in vars(x).values():
                visit(v, seen)

    visit(obj, set())
    return copy.deepcopy(obj, memo)
