"""Extractive support, what the ``support`` selection ranks by first: the largest share of the question's content
words found in a sentence of the chunk that holds the look-ahead answer's value (benchmarks/selection_study.md).

``support_bound`` is the same share without the value: the most any answer can get from that chunk. It needs no
look-ahead, so the selection can skip the look-ahead of chunks whose bound is below a support already found."""

from __future__ import annotations

import re

_STOP_WORDS = frozenset("a an and are as at be by did do does for from how in is it its many much of on or that the "
                        "this to was were what when where which who whom whose why with".split())


def query_words(query: str) -> set[str]:
    """The question's content words (lower-case, stop words and single letters dropped)."""
    return {w for w in re.findall(r"[a-z0-9]+", query.lower()) if w not in _STOP_WORDS and len(w) > 1}


def answer_value(answer: str) -> str:
    """What an answer asserts: its first run of digits (numbers, codes), else its stripped text."""
    match = re.search(r"\d+", answer)
    return match.group(0) if match else answer.strip()


def _best_share(chunk_text: str, words: set[str], pattern: re.Pattern | None) -> float:
    """The largest share of ``words`` in a sentence of ``chunk_text`` (that ``pattern`` matches, when given)."""
    from .chunking import sentence_spans

    best = 0.0
    for s0, s1 in sentence_spans(chunk_text):
        sentence = chunk_text[s0:s1]
        if pattern is None or pattern.search(sentence):
            best = max(best, len(words & set(re.findall(r"[a-z0-9]+", sentence.lower()))) / len(words))
    return best


def support(chunk_text: str, answer: str, query: str) -> float:
    """The largest share of the query's content words found in a sentence of ``chunk_text`` that holds the answer's
    value (as a whole number or word); 0 when the value is absent or the query has no content words."""
    value, words = answer_value(answer), query_words(query)
    if not value or not words:
        return 0.0
    return _best_share(chunk_text, words, re.compile(r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])"))


def support_bound(chunk_text: str, query: str) -> float:
    """The largest ``support`` any answer can get in ``chunk_text``: the largest share of the query's content words in
    one of its sentences (``support`` takes the same share over the sentences holding the answer's value)."""
    words = query_words(query)
    return _best_share(chunk_text, words, None) if words else 0.0
