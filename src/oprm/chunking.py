"""Token-level chunking of the context.

Every chunk is exactly ``chunk_size`` tokens (the last one is the final ``chunk_size`` tokens of the context and may
overlap its neighbour), so the b prompts [P, C_i, S] all have the same length and no row is ever padded: padding is
not honoured exactly by several recurrent models (RWKV, xLSTM, RecurrentGemma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OPRMUsageError


@dataclass(frozen=True)
class Chunk:
    index: int
    token_start: int  # span in the context's token ids, end exclusive
    token_end: int
    char_start: int | None = None  # span in the context text, when offsets are known
    char_end: int | None = None

    @property
    def num_tokens(self) -> int:
        return self.token_end - self.token_start


def chunk_spans(num_tokens: int, chunk_size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Token spans of the chunks of a context of ``num_tokens`` tokens.

    With stride = chunk_size - overlap, b = ceil((N - overlap) / stride) chunks (b = ceil(N / L) without overlap);
    N <= L gives one chunk holding the whole context.
    """
    if chunk_size <= 0:
        raise OPRMUsageError(f"chunk size must be a positive number of tokens, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise OPRMUsageError(f"chunk overlap must be in [0, chunk size), got {overlap} with chunk size {chunk_size}")
    if num_tokens <= chunk_size:
        return [(0, num_tokens)]
    stride = chunk_size - overlap
    count = math.ceil((num_tokens - overlap) / stride)
    spans = [(i * stride, i * stride + chunk_size) for i in range(count - 1)]
    spans.append((num_tokens - chunk_size, num_tokens))  # the final L tokens: a full chunk, never padded
    return spans


def make_chunks(num_tokens: int, chunk_size: int, overlap: int = 0,
                offsets: list[tuple[int, int]] | None = None) -> list[Chunk]:
    """Chunks with token spans and, when token character ``offsets`` are given, character spans."""
    chunks = []
    for i, (start, end) in enumerate(chunk_spans(num_tokens, chunk_size, overlap)):
        char_start = char_end = None
        if offsets and end > start:
            char_start, char_end = offsets[start][0], offsets[end - 1][1]
        chunks.append(Chunk(i, start, end, char_start, char_end))
    return chunks
