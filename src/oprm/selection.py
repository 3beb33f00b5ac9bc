"""Chunk selection: per-chunk statistics of the first answer token, the IDK filter and the selection criteria.

First-token criteria (the paper's entropy and query likelihood; max_prob, p_idk, random, oracle) map a chunk's record
to a score where higher is better, so candidates are ranked as soon as a micro-batch is prefilled and only the best
states are kept. Look-ahead criteria (``lookahead``, ``support``) first decode a few tokens from every chunk that
passes the IDK filter and rank the chunks once all are known (the study behind them: benchmarks/selection_study.md):

* an IDK word anywhere in the look-ahead, or an empty one, drops the chunk (models that restate the question before
  answering say "The ..." first: their first token carries no signal);
* ``lookahead``: the mean log-probability of the look-ahead answer from where the chunks' answers start to differ;
* ``support``: first the answer's extractive support — the largest share of the question's content words in a
  sentence of the chunk that holds the answer's value — then ``lookahead``. A key-less chunk that copies the value
  of another fact it holds gets little support; the needle's own sentence gets all of it.
"""

from __future__ import annotations

import random
import re
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
    p_idk: float | None = None  # first-token probability of the IDK word's tokens
    lookahead: str | None = None  # look-ahead selection: the chunk's greedy answer (up to lookahead_tokens)
    lookahead_ids: list[int] | None = None  # its token ids (before any eos)
    lookahead_logprobs: list[float] | None = None  # the log-probability of each of its tokens (and of the eos)
    support: float | None = None  # support selection: the answer's extractive support in its chunk


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
    lookahead = False  # ranks chunks by a decoded look-ahead, once every chunk is known (``rank``)

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


class PIdkSelector(Selector):
    name = "p_idk"  # the chunk least inclined to say IDK

    def score(self, record):
        return -(record.p_idk or 0.0)


class LookaheadSelector(Selector):
    name = "lookahead"
    lookahead = True

    @staticmethod
    def passes(record: ChunkRecord, idk: str | None) -> bool:
        """A look-ahead answer that is not empty and holds no IDK word."""
        return not record.is_idk and bool(record.lookahead) and not (idk and idk in record.lookahead)

    def provisional(self, record: ChunkRecord) -> float:
        """A key known as soon as the chunk's micro-batch is (the whole answer's mean log-probability), to keep the
        states of the likely winners; ``rank`` decides once every chunk is known."""
        return sum(record.lookahead_logprobs) / len(record.lookahead_logprobs)

    def rank(self, records: list[ChunkRecord], idk: str | None) -> list[ChunkRecord]:
        """The records that pass (no IDK word, a non-empty answer), scored, best first (ties to the earlier)."""
        passing = [r for r in records if self.passes(r, idk)]
        start = divergence([r.lookahead_ids for r in passing])
        for r in passing:  # the answer's tokens from where the answers differ (the eos's alone if none are left)
            answer = r.lookahead_logprobs[start:len(r.lookahead_ids)] or r.lookahead_logprobs[-1:]
            r.score = sum(answer) / len(answer)
        return sorted(passing, key=lambda r: (*self.key(r), -r.index), reverse=True)

    def key(self, record) -> tuple:
        return (record.score,)


class SupportSelector(LookaheadSelector):
    name = "support"

    def provisional(self, record):
        return 100 * (record.support or 0.0) + super().provisional(record)  # support first: it is in [0, 1]

    def key(self, record) -> tuple:
        return (record.support or 0.0, record.score)


def divergence(answers: list[list[int]]) -> int:
    """The first position where the candidates' look-ahead tokens differ (0 for fewer than two candidates)."""
    if len(answers) < 2:
        return 0
    t = 0
    while len({tuple(a[t:t + 1]) for a in answers}) == 1 and any(len(a) > t for a in answers):
        t += 1
    return t


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


_PLAIN_SELECTORS = {"support": SupportSelector, "lookahead": LookaheadSelector, "p_idk": PIdkSelector,
                    "entropy": EntropySelector, "query_likelihood": QueryLikelihoodSelector, "max_prob": MaxProbSelector}


def make_selector(name: str, *, seed: int = 0, gold_chunks: set[int] | None = None) -> Selector:
    if name in _PLAIN_SELECTORS:
        return _PLAIN_SELECTORS[name]()
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
        return len(self.items) < self.k or (self.k > 0 and key > self.items[-1][0])

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
    ids = sorted(idk_ids)
    p_idk = torch.softmax(first_logits.float(), -1)[:, ids].sum(-1) if ids else None
    records = []
    for r, chunk in enumerate(chunks):
        tops = [(int(i), tokenizer.decode([int(i)]) if tokenizer else None, float(p))
                for i, p in zip(top_i[r], top_p[r])]
        records.append(ChunkRecord(chunk.index, chunk.token_start, chunk.token_end, chunk.char_start, chunk.char_end,
                                   float(entropy[r]), int(argmax[r]), float(max_prob[r]), int(argmax[r]) in idk_ids,
                                   tops, None if query_logprob is None else float(query_logprob[r]),
                                   p_idk=None if p_idk is None else float(p_idk[r])))
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
    one micro-batch plus one state however many chunks there are. Look-ahead selectors keep no state: their winners
    are known only once every chunk is: the states of the few best by a provisional key are kept, and a winner
    outside them is prefilled again to be decoded.
    """

    LOOKAHEAD_KEPT = 4  # states kept for look-ahead selection: the final ranking rarely leaves these

    def __init__(self, selector: Selector, decode: str, num_decode: int, use_idk: bool, idk_fallback: str,
                 idk: str | None = None):
        self.selector, self.decode_all, self.idk = selector, decode == "all", idk
        self.k = num_decode if decode == "top_k" else 1
        self.pool = CandidatePool(max(self.k, self.LOOKAHEAD_KEPT) if selector.lookahead else self.k)
        self.min_entropy_fallback = use_idk and idk_fallback == "min_entropy"
        self.fallback = CandidatePool(self.k if self.min_entropy_fallback and not selector.lookahead else 0)

    def observe(self, records: list[ChunkRecord], take) -> list[tuple[ChunkRecord, object]]:
        """Score ``records`` (one micro-batch); keep the states that can still win (``take(r)`` copies row r's
        state out of the batch). Returns the (record, state) pairs to decode now (``decode="all"``)."""
        decode_now = []
        for r, rec in enumerate(records):
            if not self.selector.lookahead:
                rec.score = self.selector.score(rec)
            if self.decode_all:
                decode_now.append((rec, take(r)))
            elif self.selector.lookahead:
                if self.selector.passes(rec, self.idk) and self.pool.would_accept(self.selector.provisional(rec)):
                    self.pool.add(self.selector.provisional(rec), rec.index, take(r))
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

    def choose(self, records: list[ChunkRecord], candidates: list[tuple[float, int]],
               fallbacks: list[tuple[float, int]]) -> Choice:
        """The winners among (key, chunk) pairs (this process's, or every rank's) — or, for look-ahead selectors,
        among every chunk's record: best first, ties to the earlier chunk."""
        best = lambda items: [i for _, i in sorted(items, key=lambda it: (-it[0], it[1]))[:self.k]]  # noqa: E731
        if self.selector.lookahead:
            ranked = self.selector.rank(records, self.idk)
            if ranked:
                return Choice([r.index for r in ranked[:self.k]])
            fallbacks = [(-r.entropy, r.index) for r in records] if self.min_entropy_fallback else []
        elif candidates:
            return Choice(best(candidates))
        return Choice(best(fallbacks), fallback_used=True)
