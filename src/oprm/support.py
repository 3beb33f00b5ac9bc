"""Extractive support, what the ``support`` selection ranks by first: the largest share of the question's content
words found in a sentence of the chunk that holds the look-ahead answer's value (benchmarks/selection_study.md)."""

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


def support(chunk_text: str, answer: str, query: str) -> float:
    """The largest share of the query's content words found in a sentence of ``chunk_text`` that holds the answer's
    value (as a whole number or word); 0 when the value is absent or the query has no content words."""
    from .chunking import sentence_spans

    value, words = answer_value(answer), query_words(query)
    if not value or not words:
        return 0.0
    pattern = re.compile(r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])")
    best = 0.0
    for s0, s1 in sentence_spans(chunk_text):
        sentence = chunk_text[s0:s1]
        if pattern.search(sentence):
            best = max(best, len(words & set(re.findall(r"[a-z0-9]+", sentence.lower()))) / len(words))
    return best
