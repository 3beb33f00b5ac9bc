"""Chunk selection: per-chunk statistics of the first answer token, the IDK filter and the selection criteria.

Every criterion maps a chunk's record to a score where higher is better, so candidates can be ranked as soon as a
micro-batch is prefilled and only the best states need to be kept.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import SELECTIONS
from .errors import OPRMUsageError


@dataclass
class ChunkRecord:
    """What the speculative prefill learned about one chunk."""

    index: int
    token_start: int
    token_end: int
    char_start: int | None
    char_end: int | None
    entropy: float  # nats, of the first-answer-token distribution
    argmax: int
    max_prob: float
    is_idk: bool
    top_tokens: list[tuple[int, str | None, float]] = field(default_factory=list)  # (id, text, probability), best first
    query_logprob: float | None = None  # sum of log p(query tokens | P, C_i)
    score: float | None = None  # the selection criterion's value (higher is better)


def first_token_stats(logits: torch.Tensor, top_k: int = 5):
    """Entropy (nats), argmax, max probability and top-k of each row of ``logits`` [B, V]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    top_p, top_i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return entropy, top_i[:, 0], top_p[:, 0], top_i, top_p


def query_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(target_t) given logits [B, T, V] that predict targets [T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1).sum(-1)


class Selector:
    """A selection criterion. ``score`` is higher for better chunks."""

    name = "base"
    needs_query_logprob = False
    uses_idk_filter = True

    def score(self, record: ChunkRecord) -> float:
        raise NotImplementedError


class EntropySelector(Selector):
    name = "entropy"  # the paper's default: the most confident chunk

    def score(self, record):
        return -record.entropy


class QueryLikelihoodSelector(Selector):
    name = "query_likelihood"  # the paper's alternative: Pr(Q | [P, C_i])
    needs_query_logprob = True

    def score(self, record):
        if record.query_logprob is None:
            raise OPRMUsageError("query_likelihood selection needs a query (the {input} field) in the suffix")
        return record.query_logprob


class MaxProbSelector(Selector):
    name = "max_prob"

    def score(self, record):
        return record.max_prob


class RandomSelector(Selector):
    """A seeded random chunk, for ablations: one uniform draw per chunk index, so streaming does not change it."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, record):
        return random.Random(f"{self.seed}:{record.index}").random()


class OracleSelector(Selector):
    """The gold chunk(s), for ablations; ignores the IDK filter. Ties go to the lowest entropy."""

    name = "oracle"
    uses_idk_filter = False

    def __init__(self, gold_chunks: set[int]):
        self.gold_chunks = gold_chunks

    def score(self, record):
        return (1e9 if record.index in self.gold_chunks else 0.0) - record.entropy


def make_selector(name: str, *, seed: int = 0, gold_chunks: set[int] | None = None) -> Selector:
    if name == "entropy":
        return EntropySelector()
    if name == "query_likelihood":
        return QueryLikelihoodSelector()
    if name == "max_prob":
        return MaxProbSelector()
    if name == "random":
        return RandomSelector(seed)
    if name == "oracle":
        if not gold_chunks:
            raise OPRMUsageError("oracle selection needs the gold chunk (gold_chunk=) or gold text (gold_text=)")
        return OracleSelector(gold_chunks)
    raise OPRMUsageError(f"unknown selection {name!r}; choose one of: {', '.join(SELECTIONS)}")


class CandidatePool:
    """The k best chunks seen so far by one ranking key, each with its kept model state.

    States of chunks that fall out of the top k are dropped, so memory stays bounded by k states whatever the number
    of chunks. Ties keep the earlier chunk.
    """

    def __init__(self, k: int):
        self.k = k
        self.items: list[tuple[float, int, object]] = []  # (key, chunk index, payload)

    def would_accept(self, key: float) -> bool:
        return len(self.items) < self.k or key > self.items[-1][0]

    def add(self, key: float, index: int, payload) -> None:
        self.items.append((key, index, payload))
        self.items.sort(key=lambda it: (-it[0], it[1]))
        del self.items[self.k:]

    def __len__(self):
        return len(self.items)


def chunk_records(chunks, first_logits: torch.Tensor, idk_ids: set[int], tokenizer=None, top_k: int = 5,
                  query_logprob: torch.Tensor | None = None) -> list[ChunkRecord]:
    """One record per chunk from its first-answer-token logits [B, V] (and query log-probabilities [B])."""
    entropy, argmax, max_prob, top_i, top_p = first_token_stats(first_logits, top_k)
    records = []
    for r, chunk in enumerate(chunks):
        tops = [(int(i), tokenizer.decode([int(i)]) if tokenizer else None, float(p))
                for i, p in zip(top_i[r], top_p[r])]
        records.append(ChunkRecord(chunk.index, chunk.token_start, chunk.token_end, chunk.char_start, chunk.char_end,
                                   float(entropy[r]), int(argmax[r]), float(max_prob[r]), int(argmax[r]) in idk_ids,
                                   tops, None if query_logprob is None else float(query_logprob[r])))
    return records


@dataclass
class Choice:
    """The outcome of selection: the chunks to decode, or none (every chunk said IDK: answer the IDK word)."""

    winners: list[int]
    fallback_used: bool = False


class CandidatePolicy:
    """Which chunk states to keep while micro-batches stream by, and which chunks win at the end.

    ``decode="one"`` / ``"top_k"``: the k best chunks that pass the IDK filter, by the selector's score. Until one
    passes, the k lowest-entropy IDK chunks are kept too when ``idk_fallback="min_entropy"``; they are dropped as soon
    as a chunk passes. ``decode="all"``: every chunk is handed back at once to be decoded (summaries), so memory stays
    one micro-batch plus one state however many chunks there are.
    """

    def __init__(self, selector: Selector, decode: str, num_decode: int, use_idk: bool, idk_fallback: str):
        self.selector, self.decode_all = selector, decode == "all"
        self.k = num_decode if decode == "top_k" else 1
        self.pool = CandidatePool(self.k)
        self.fallback = CandidatePool(self.k if use_idk and idk_fallback == "min_entropy" else 0)

    def observe(self, records: list[ChunkRecord], take) -> list[tuple[ChunkRecord, object]]:
        """Score ``records`` (one micro-batch); keep the states that can still win (``take(r)`` copies row r's
        state out of the batch). Returns the (record, state) pairs to decode now (``decode="all"``)."""
        decode_now = []
        for r, rec in enumerate(records):
            rec.score = self.selector.score(rec)
            if self.decode_all:
                decode_now.append((rec, take(r)))
            elif not rec.is_idk and self.pool.would_accept(rec.score):
                self.pool.add(rec.score, rec.index, take(r))
            elif rec.is_idk and len(self.pool) == 0 and self.fallback.k and self.fallback.would_accept(-rec.entropy):
                self.fallback.add(-rec.entropy, rec.index, take(r))
        if len(self.pool):
            self.fallback.items.clear()
        return decode_now

    def keys(self) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        """(key, chunk) of the kept candidates and fallbacks: what ranks exchange under chunk parallelism."""
        return [(key, i) for key, i, _ in self.pool.items], [(key, i) for key, i, _ in self.fallback.items]

    def states(self) -> dict[int, object]:
        return {i: state for _, i, state in self.pool.items + self.fallback.items}

    def choose(self, candidates: list[tuple[float, int]], fallbacks: list[tuple[float, int]]) -> Choice:
        """The winners among (key, chunk) pairs (this process's, or every rank's): best key first, ties to the
        earlier chunk."""
        best = lambda items: [i for _, i in sorted(items, key=lambda it: (-it[0], it[1]))[:self.k]]  # noqa: E731
        if candidates:
            return Choice(best(candidates))
        return Choice(best(fallbacks), fallback_used=True)
