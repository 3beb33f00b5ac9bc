"""Baselines of ``oprm eval`` that change the input rather than the engine: BM25 retrieval of the best passages."""

from __future__ import annotations

import re
from typing import Callable

from oprm.errors import OPRMUsageError

__all__ = ["bm25_context", "template_query"]

_SENT_END = re.compile(r"(?<=[。？！；.!?;\n])")


def _bm25_tokens(text: str, language: str) -> list[str]:
    if language == "zh":
        return [ch for ch in text if not ch.isspace() and ch.isalnum()]
    return re.findall(r"\w+", text.lower())


def _split_passages(text: str, max_words: int, language: str) -> list[str]:
    size = (lambda s: len(s)) if language == "zh" else (lambda s: len(s.split()))
    limit = max_words * (2 if language == "zh" else 1)  # ~2 characters per Chinese word
    passages: list[str] = []
    cur: list[str] = []
    n = 0
    for unit in (u for u in _SENT_END.split(text) if u):
        k = size(unit)
        if cur and n + k > limit:
            passages.append("".join(cur))
            cur, n = [], 0
        cur.append(unit)
        n += k
    if cur:
        passages.append("".join(cur))
    return [p for p in passages if p.strip()]


def bm25_context(context: str, query: str, budget_tokens: int, count_tokens: Callable[[str], int] | None = None,
                 chunk_words: int = 200, language: str = "en") -> tuple[str, list[int]]:
    """The passages that best match ``query`` (BM25Okapi) within ``budget_tokens``, joined in document order.

    Passages have at most ``min(chunk_words, budget_tokens // 4)`` words (sentences are not split, so a long
    sentence makes a longer passage). Returns (new context, indices of the kept passages). Unlike LongBench's own
    BM25 script (which feeds raw strings to BM25Okapi and so ranks by characters), passages are tokenized into
    lower-cased words (characters for Chinese).
    """
    try:
        from rank_bm25 import BM25Okapi  # noqa: PLC0415
    except ImportError:
        raise OPRMUsageError("the bm25 mode needs rank_bm25: pip install rank_bm25") from None
    count_tokens = count_tokens or (lambda s: len(s.split()))
    # passages stay well below the budget so that several of them fit (at most a quarter of it, in words)
    chunk_words = max(1, min(chunk_words, budget_tokens // 4 or 1))
    passages = _split_passages(context, chunk_words, language)
    if not passages:
        return context, []
    corpus = [_bm25_tokens(p, language) or ["_"] for p in passages]
    q = _bm25_tokens(query, language)
    scores = BM25Okapi(corpus).get_scores(q) if q else [0.0] * len(passages)
    order = sorted(range(len(passages)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    used = 0
    for i in order:
        n = count_tokens(passages[i])
        if used + n <= budget_tokens:
            kept.append(i)
            used += n
    if not kept:  # even the best passage is too long: keep its head
        kept = [order[0]]
    kept.sort()
    return "\n".join(passages[i].strip() for i in kept), kept


def template_query(template: str) -> str:
    """A BM25 query for tasks without a question (summaries): the instruction text of the template."""
    return re.sub(r"\{[a-zA-Z_]+\}", " ", template)
