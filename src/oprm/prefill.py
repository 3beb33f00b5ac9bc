"""Speculative prefill: the prompts [P, C_i, S] of every chunk, run in micro-batches.

All rows of a micro-batch have the same length (every chunk is exactly L tokens), so nothing is ever padded. Where
the architecture continues a cached state exactly, P is run once and its state is broadcast to the rows, which then
hold only [C_i, S]. A micro-batch holds at most ``max_batch_tokens`` tokens, so memory is bounded by one micro-batch
whatever the number of chunks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .chunking import Chunk
from .errors import GenerationCancelled, model_failures


@dataclass
class RunStats:
    """What one ``generate`` call did: tokens run through the model and seconds per phase."""

    tokens_processed: int = 0
    lookahead_tokens: int = 0  # of which: look-ahead decoding for the selection (support / lookahead)
    timings: dict = field(default_factory=lambda: {"prefill": 0.0, "selection": 0.0, "lookahead": 0.0, "decode": 0.0})


@dataclass
class MicroBatch:
    chunks: list[Chunk]
    logits: torch.Tensor  # [B, num_logits, V] float32: the last positions of each row (the last predicts the answer)
    state: object  # the batched model state after each row


class Prefiller:
    """Runs token rows through an adapter, counting tokens and time."""

    def __init__(self, adapter, stats: RunStats, max_batch_tokens: int, model_name: str = "model", should_stop=None):
        self.adapter, self.stats, self.max_batch_tokens = adapter, stats, max_batch_tokens
        self.model_name, self.should_stop = model_name, should_stop
        self.shared_prefix_tokens = 0  # tokens of P run once for all rows (chunk parallelism counts them once)
        self._prefix: tuple[list[int], object] | None = None  # (P, its state) of this call

    def tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.adapter.device)

    def forward(self, rows: list[list[int]], state=None, start: int = 0, num_logits: int = 1):
        if self.should_stop is not None and self.should_stop():  # a long prefill can be abandoned between batches
            raise GenerationCancelled()
        t = time.perf_counter()
        ids = self.tensor(rows)
        with model_failures(self.model_name):
            logits, state = self.adapter.prefill(ids, state, start=start, num_logits=num_logits)
        self.stats.timings["prefill"] += time.perf_counter() - t
        self.stats.tokens_processed += ids.numel()
        return logits, state

    def long(self, ids: list[int], state=None, start: int = 0):
        """Batch-1 prefill of a long prompt, in segments where continuation is exact (bounded activations).

        Returns (logits [1, V] of the last position, state)."""
        segment = self.long_segment(len(ids))
        logits = None
        for offset in range(0, len(ids), max(1, segment)):
            logits, state = self.forward([ids[offset:offset + segment]], state, start=start + offset)
        return logits[:, -1], state

    def long_segment(self, length: int) -> int:
        """Tokens per forward of a long batch-1 prompt of ``length`` tokens: all at once where a state cannot be
        continued exactly, else at most ``max_batch_tokens`` (fewer for sliding windows: the adapter decides)."""
        if not self.adapter.continuation_exact:
            return max(1, length)
        return self.adapter.long_prefill_segment(self.max_batch_tokens)

    def prefix_state(self, prefix: list[int]):
        """P's state, run once per call (chunks that run tier by tier share it)."""
        if self._prefix is None or self._prefix[0] != prefix:
            self._prefix = (list(prefix), self.forward([prefix])[1])
        return self._prefix[1]

    def rows_per_batch(self, row_tokens: int) -> int:
        return max(1, self.max_batch_tokens // max(1, row_tokens))

    def chunk_rows(self, prefix: list[int], context: list[int], chunks: list[Chunk], suffix_tokens: int,
                   shared_prefix: bool):
        """Micro-batches (chunks, rows [P, C_i], start state, start position); P's state is computed once and
        broadcast to the rows (which then hold only C_i) where the architecture continues a state exactly."""
        row_tokens = chunks[0].num_tokens + suffix_tokens
        shared = (shared_prefix and self.adapter.continuation_exact and len(prefix) > 0
                  and len(prefix) >= self.adapter.prefix_share_fraction * row_tokens)
        prefix_state = self.prefix_state(prefix) if shared else None
        self.shared_prefix_tokens = len(prefix) if shared else 0
        row_prefix = [] if shared else prefix
        per_batch = self.rows_per_batch(len(row_prefix) + chunks[0].num_tokens + suffix_tokens)
        for b0 in range(0, len(chunks), per_batch):
            batch = chunks[b0:b0 + per_batch]
            rows = [row_prefix + context[c.token_start:c.token_end] for c in batch]
            start_state = self.adapter.select(prefix_state, [0] * len(batch)) if shared else None
            yield batch, rows, start_state, len(prefix) if shared else 0

    def chunk_prompts(self, prefix: list[int], context: list[int], suffix: list[int], chunks: list[Chunk],
                      num_logits: int, shared_prefix: bool, keep=None, defer: bool = False) -> Iterator[MicroBatch]:
        """Micro-batches of the rows [P, C_i, S] in one forward each. With ``keep`` (a ``document.NewDocument``: the
        document cache filled while answering), the rows whose states it wants are split: their states after
        [P, C_i] are handed to it, then S runs on top in a second forward; with ``defer``, while it keeps every state
        so far, S does not run at all (the batch comes back without logits or state: the caller runs S later, only
        where the choice can need it)."""
        for batch, rows, state, start in self.chunk_rows(prefix, context, chunks, len(suffix), shared_prefix):
            wanted = [r for r, c in enumerate(batch) if keep is not None and keep.wants(c.index)]
            if wanted:
                _, state = self.forward(rows, state, start)
                for r in wanted:
                    keep.add(batch[r].index, self.adapter.select(state, [r]))
                if defer and len(wanted) == len(batch) and keep.holds_all():
                    yield MicroBatch(batch, None, None)
                    continue
                logits, state = self.forward([suffix] * len(batch), state, start + len(rows[0]), num_logits)
            else:
                logits, state = self.forward([row + suffix for row in rows], state, start, num_logits)
            yield MicroBatch(batch, logits, state)
            del logits, state  # before the next forward: one micro-batch of activations and states at a time

    def chunk_states(self, prefix: list[int], context: list[int], chunks: list[Chunk],
                     shared_prefix: bool) -> dict[int, object]:
        """Each chunk's batch-1 state after [P, C_i] (``OPRM.encode``)."""
        states = {}
        for batch, rows, state, start in self.chunk_rows(prefix, context, chunks, 0, shared_prefix):
            _, state = self.forward(rows, state, start)
            states.update({c.index: self.adapter.select(state, [r]) for r, c in enumerate(batch)})
        return states

    def on_document(self, document, chunks: list[Chunk], suffix: list[int], num_logits: int,
                    template) -> Iterator[MicroBatch]:
        """Micro-batches of S run on top of an encoded document's states after [P, C_i]."""
        start = len(document.prefix_ids) + chunks[0].num_tokens
        per_batch = self.rows_per_batch(start + len(suffix))  # a batch of states is as large as a prefill's
        for b0 in range(0, len(chunks), per_batch):
            batch = chunks[b0:b0 + per_batch]
            state = document.batch_state(self.adapter, [c.index for c in batch], template)
            logits, state = self.forward([suffix] * len(batch), state, start, num_logits)
            yield MicroBatch(batch, logits, state)
            del logits, state
