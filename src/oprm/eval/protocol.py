"""What the eval runner needs from an engine: a small typed contract instead of probing attributes.

``oprm.OPRM`` satisfies it; so can a fake in tests or a remote engine. The runner reads only these members.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from oprm.config import OPRMConfig

__all__ = ["EvalEngine", "EvalResult", "ChunkInfo"]


class ChunkInfo(Protocol):
    """Per-chunk diagnostics written to the prediction files."""

    index: int
    entropy: float
    is_idk: bool


class EvalResult(Protocol):
    text: str
    chosen: list[int]  # decoded chunks
    chunks: Sequence[ChunkInfo]  # one per chunk (one for the whole prompt outside OPRM mode)
    selection: str | None
    idk_fallback_used: bool
    timings: dict  # seconds; "total" is recorded


@runtime_checkable
class EvalEngine(Protocol):
    config: OPRMConfig  # the defaults every call starts from (chunk size, decode, ...)
    tokenizer: Any  # counts tokens for BM25 budgets and synthetic lengths; None counts words

    @property
    def name(self) -> str:  # the model's name: the results folder when none is given
        ...

    def generate(self, context: str | None = None, query: str | None = None, *, template: str | None = None,
                 fields: dict | None = None, **options: Any) -> EvalResult:
        """Answer from ``context`` with ``template``/``fields``; ``options`` are OPRMConfig fields, generation
        options (``max_new_tokens``), ``answer_prefix``, ``gold_text`` and ``context_tail_tokens``."""
        ...
