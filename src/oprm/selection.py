"""Chunk selection: the IDK filter, the selection criteria and the policy (chunk records: ``oprm.records``).

First-token criteria (the paper's entropy and query likelihood; max_prob, p_idk, random, oracle) map a chunk's record
to a score where higher is better, so candidates are ranked as soon as a micro-batch is prefilled and only the best
states are kept. Look-ahead criteria (``lookahead``, ``support``) rank chunks by a few greedily decoded tokens, decoded
only where the choice needs them (``SelectionPolicy.pending``, ``oprm.lookahead``; the study behind them:
benchmarks/selection_study.md):

* an IDK word anywhere in the look-ahead, or an empty one, drops the chunk (models that restate the question before
  answering say "The ..." first: their first token carries no signal);
* ``lookahead``: the mean log-probability of the look-ahead answer from where the contenders' answers start to differ;
* ``support``: first the answer's extractive support — the largest share of the question's content words in a
  sentence of the chunk that holds the answer's value — then ``lookahead``. A key-less chunk that copies the value
  of another fact it holds gets little support; the needle's own sentence gets all of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import SELECTIONS
from .errors import OPRMUsageError
from .records import ChunkRecord
from .support import support


# what a selection may need from a call, and how a caller gives it (the one-line error when it is missing)
NEEDS = {
    "query_span": "the question's tokens in S: a template with {input} (query=...), or query_span= for pre-tokenized "
                  "input",
    "query_text": "the question's text: query=... (a template's {input}), or lm-eval's query_field=",
    "gold": "the gold chunk (gold_chunk=) or gold text (gold_text=, --gold-text, oprm.gold_text)",
}


class Selector:
    """A selection criterion. ``score`` is higher for better chunks. ``needs`` names what a call must give it (keys
    of ``NEEDS``): a call without it fails instead of ranking differently."""

    name = "base"
    needs: frozenset[str] = frozenset()
    uses_idk_filter = True
    lookahead = False  # ranks chunks by a decoded look-ahead, once every chunk is known (``rank``)

    @property
    def needs_query_logprob(self) -> bool:
        return "query_span" in self.needs

    def score(self, record: ChunkRecord) -> float:
        raise NotImplementedError

    def annotate(self, record: ChunkRecord, chunk_text: str | None, query_text: str | None) -> None:
        """Note on a look-ahead record what this criterion ranks by besides the look-ahead itself (nothing here)."""


class EntropySelector(Selector):
    name = "entropy"  # the paper's default: the most confident chunk

    def score(self, record):
        return -record.entropy


class QueryLikelihoodSelector(Selector):
    name = "query_likelihood"  # the paper's alternative: Pr(Q | [P, C_i])
    needs = frozenset({"query_span"})

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
    needs = frozenset({"gold"})
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
    """Ranks the chunks that pass by their look-ahead answer's confidence, from where the contenders' answers differ.

    ``search``: how much of the look-ahead the choice needs (``SelectionPolicy.pending``): ``"full"`` every chunk
    that passes the first-token IDK filter; ``"bounded"`` (support on text) only the chunks whose support bound can
    still reach the support already found — the choice is the full search's, by construction; ``"first_token"``
    (support without a text to find support in) the chunks in first-token order until one passes."""

    name = "lookahead"
    lookahead = True

    def search(self, text: bool) -> str:
        return "full"

    @staticmethod
    def passes(record: ChunkRecord, idk: str | None) -> bool:
        """A look-ahead answer that is not empty and holds no IDK word."""
        return not record.is_idk and bool(record.lookahead) and not (idk and idk in record.lookahead)

    def provisional(self, record: ChunkRecord) -> float:
        """A key known as soon as the chunk's micro-batch is (the whole answer's mean log-probability), to keep the
        states of the likely winners; ``rank`` decides once every chunk is known."""
        return sum(record.lookahead_logprobs) / len(record.lookahead_logprobs)

    def rank(self, records: list[ChunkRecord], idk: str | None, k: int = 1) -> list[ChunkRecord]:
        """The records that pass (no IDK word, a non-empty answer), scored, best first (ties to the earlier). The score
        is the mean log-probability of the answer from where the contenders' answers differ; the contenders are the
        chunks that pass with a support at least the k-th best's (every chunk that passes when there is no support):
        chunks that cannot be chosen do not move the others' scores. Contenders that all give the same answer are
        scored on the whole of it."""
        passing = [r for r in records if self.passes(r, idk)]
        if not passing:
            return []
        kth = sorted((r.support or 0.0 for r in passing), reverse=True)[min(k, len(passing)) - 1]
        answers = {tuple(r.lookahead_ids) for r in passing if (r.support or 0.0) >= kth}
        start = divergence([list(a) for a in answers]) if len(answers) > 1 else 0  # one answer: all of it
        for r in passing:  # the answer's tokens from where the answers differ (the eos's alone if none are left)
            answer = r.lookahead_logprobs[start:len(r.lookahead_ids)] or r.lookahead_logprobs[-1:]
            r.score = sum(answer) / len(answer)
        return sorted(passing, key=lambda r: (*self.key(r), -r.index), reverse=True)

    def key(self, record) -> tuple:
        return (record.score,)


class SupportSelector(LookaheadSelector):
    name = "support"
    needs = frozenset({"query_text"})

    def search(self, text):
        return "bounded" if text else "first_token"

    def annotate(self, record, chunk_text, query_text):
        if chunk_text is not None:
            record.support = support(chunk_text, record.lookahead, query_text)

    def provisional(self, record):
        return 100 * (record.support or 0.0) + super().provisional(record)  # support first: it is in [0, 1]

    def key(self, record) -> tuple:
        return (record.support or 0.0, record.score)


def search_order(record: ChunkRecord) -> tuple:
    """The look-ahead search's order (smaller first): the highest support bound, then the first token least inclined
    to the IDK word (the lowest P(IDK), where the IDK filter is on), then the lowest entropy, then the earlier."""
    return (-(record.support_bound or 0.0), record.p_idk or 0.0, record.entropy, record.index)


def first_token_score(record: ChunkRecord) -> float:
    """What ``"first_token"`` search ranks by (reported as the score): -P(IDK) with the IDK filter, else -entropy."""
    return -record.p_idk if record.p_idk is not None else -record.entropy


def divergence(answers: list[list[int]]) -> int:
    """The first position where the candidates' look-ahead tokens differ (0 for fewer than two candidates)."""
    if len(answers) < 2:
        return 0
    t = 0
    while len({tuple(a[t:t + 1]) for a in answers}) == 1 and any(len(a) > t for a in answers):
        t += 1
    return t


SELECTORS = {cls.name: cls for cls in (SupportSelector, LookaheadSelector, PIdkSelector, EntropySelector,
                                        QueryLikelihoodSelector, MaxProbSelector, RandomSelector, OracleSelector)}
assert tuple(SELECTORS) == SELECTIONS  # the config's choices are these criteria, in its order


def selector_class(name: str) -> type[Selector]:
    if name not in SELECTORS:
        raise OPRMUsageError(f"unknown selection {name!r}; choose one of: {', '.join(SELECTIONS)}")
    return SELECTORS[name]


def make_selector(name: str, *, seed: int = 0, gold_chunks: set[int] | None = None) -> Selector:
    cls = selector_class(name)
    if cls is RandomSelector:
        return RandomSelector(seed)
    if cls is OracleSelector:
        if not gold_chunks:
            raise OPRMUsageError(f"oracle selection needs {NEEDS['gold']}")
        return OracleSelector(gold_chunks)
    return cls()


def selection_needs(config) -> frozenset[str]:
    """What a call with ``config`` must give its selection (keys of ``NEEDS``). Decoding every chunk ranks nothing, so
    it needs nothing but the scores it reports (a query_likelihood score needs the query's tokens)."""
    needs = selector_class(config.selection).needs
    return needs & {"query_span"} if config.decode == "all" else needs


def looks_ahead(config) -> bool:
    """Whether the selection decodes a look-ahead from every chunk (its ``lookahead_tokens`` matter)."""
    return selector_class(config.selection).lookahead and config.decode != "all"


def require(config, *, query_text: str | None = None, query_span=None, gold: bool = False,
            text: bool = True) -> None:
    """Fail in one line when the call cannot give what ``config``'s selection needs (rather than rank differently).
    ``text``: whether the context's text is known; pre-tokenized input has no text to find a question's words in, so
    there ``support`` ranks by its look-ahead alone (documented, the same on every entry point)."""
    given = {"query_text": bool(query_text and query_text.strip()) or not text, "query_span": query_span is not None,
             "gold": gold}
    for need in sorted(selection_needs(config)):
        if not given[need]:
            raise OPRMUsageError(f"{config.selection} selection needs {NEEDS[need]}")


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


@dataclass
class Choice:
    """The outcome of selection: the chunks to decode, or none (every chunk said IDK: answer the IDK word)."""

    winners: list[int]
    fallback_used: bool = False


class SelectionPolicy:
    """The one owner of a call's selection decisions: which chunks get a look-ahead (``looks_ahead``, ``pending``),
    whether the IDK filter applies (``idk``), which states to keep while micro-batches stream by, which chunks to
    decode (every chunk with ``decode_all``, else the winners of ``choose``) and what the call must give it
    (``require``).

    ``decode="one"`` / ``"top_k"``: the k best chunks that pass the IDK filter, by the selector's score. Until one
    passes, the k lowest-entropy IDK chunks are kept too when ``idk_fallback="min_entropy"``; they are dropped as soon
    as a chunk passes. ``decode="all"``: every chunk is handed back at once to be decoded (summaries), so memory stays
    one micro-batch plus one state however many chunks there are. Look-ahead selectors rank chunks only once their
    look-aheads are known: which ones the choice needs is ``pending`` (``oprm.lookahead`` decodes them).
    """

    LOOKAHEAD_KEPT = 4  # states kept for look-ahead selection: the final ranking rarely leaves these

    def __init__(self, config, gold_chunks: set[int] | None = None, *, text: bool = True):
        self.config = config
        self.selector = make_selector(config.selection, seed=config.seed, gold_chunks=gold_chunks)
        self.decode_all = config.decode == "all"
        use_idk = config.idk is not None and self.selector.uses_idk_filter and not self.decode_all
        self.idk = config.idk if use_idk else None  # the IDK word of the filter (None: no filter)
        self.looks_ahead = self.selector.lookahead and not self.decode_all
        # how much look-ahead the choice needs (text: whether the context's text and the question are known)
        self.search = self.selector.search(text) if self.looks_ahead else None
        self.k = config.num_decode if config.decode == "top_k" else 1
        self.pool = CandidatePool(max(self.k, self.LOOKAHEAD_KEPT) if self.selector.lookahead else self.k)
        self.min_entropy_fallback = use_idk and config.idk_fallback == "min_entropy"
        self.fallback = CandidatePool(self.k if self.min_entropy_fallback and not self.selector.lookahead else 0)

    @property
    def needs_query_logprob(self) -> bool:
        return self.selector.needs_query_logprob

    def annotate(self, record: ChunkRecord, chunk_text: str | None, query_text: str | None) -> None:
        """What the selector ranks a look-ahead record by besides the look-ahead (``support``'s extractive support)."""
        self.selector.annotate(record, chunk_text, query_text)

    def observe(self, records: list[ChunkRecord], take) -> list[tuple[ChunkRecord, object]]:
        """Score ``records`` (one micro-batch); keep the states that can still win (``take(r)`` copies row r's
        state out of the batch). Returns the (record, state) pairs to decode now (``decode="all"``)."""
        decode_now, selector = [], self.selector
        for r, rec in enumerate(records):
            if not selector.lookahead:
                rec.score = selector.score(rec)
            if self.decode_all:
                decode_now.append((rec, take(r)))
            elif selector.lookahead:
                if selector.passes(rec, self.idk) and self.pool.would_accept(selector.provisional(rec)):
                    self.pool.add(selector.provisional(rec), rec.index, take(r))
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

    # --- look-ahead selection -----------------------------------------------------------------------------------
    def pending(self, records: list[ChunkRecord]) -> list[ChunkRecord]:
        """The chunks whose look-ahead the choice may still need, in search order (``search_order``); [] once the
        choice is known. A record has been looked ahead once its ``lookahead_ids`` is set.

        * ``"full"``: every chunk that passes the first-token IDK filter.
        * ``"bounded"``: once k chunks pass with a support of at least s_k (the k-th best), a chunk whose support
          bound is below s_k can neither be chosen nor be a contender (``rank``), and s_k only grows as more chunks
          are looked at: so the chunks still needed are those with a bound of at least s_k, and none once s_k
          exceeds every bound left. The choice is then the one ``rank`` makes with every look-ahead known.
        * ``"first_token"``: the choice is the first k chunks in search order that pass (``choose``); needed are the
          chunks from the first one not yet looked at, until k pass.
        """
        candidates = sorted((r for r in records if not r.is_idk), key=search_order)
        unseen = [r for r in candidates if r.lookahead_ids is None]
        if not unseen or self.search == "full":
            return unseen
        if self.search == "first_token":
            passed = 0
            for r in candidates:
                if r.lookahead_ids is None:
                    return unseen
                passed += self.selector.passes(r, self.idk)
                if passed >= self.k:
                    return []
            return unseen
        kth = self.kth_support(candidates)
        return [r for r in unseen if kth is None or (r.support_bound or 0.0) >= kth]

    def kth_support(self, records: list[ChunkRecord]) -> float | None:
        """``"bounded"`` search: s_k, the k-th best support of the passing look-aheads in ``records`` (None until k
        pass). A chunk whose bound is below it can neither be chosen nor be a contender; it only grows."""
        supports = sorted(((r.support or 0.0) for r in records
                           if r.lookahead_ids is not None and self.selector.passes(r, self.idk)), reverse=True)
        return supports[self.k - 1] if len(supports) >= self.k else None

    def ranked(self, records: list[ChunkRecord]) -> list[ChunkRecord]:
        """The look-ahead records that pass, best first: by ``rank``, or (``"first_token"``) in search order."""
        seen = [r for r in records if r.lookahead_ids is not None]
        if self.search != "first_token":
            return self.selector.rank(seen, self.idk, self.k)
        passing = sorted((r for r in seen if self.selector.passes(r, self.idk)), key=search_order)
        for r in passing:
            r.score = first_token_score(r)
        return passing

    def choose(self, records: list[ChunkRecord], candidates: list[tuple[float, int]],
               fallbacks: list[tuple[float, int]]) -> Choice:
        """The chunks to decode: every chunk with ``decode_all``; else the winners among (key, chunk) pairs (this
        process's, or every rank's) — or, for look-ahead selectors, among every chunk's record: best first, ties to
        the earlier chunk."""
        if self.decode_all:
            return Choice(sorted(r.index for r in records))
        best = lambda items: [i for _, i in sorted(items, key=lambda it: (-it[0], it[1]))[:self.k]]  # noqa: E731
        if self.selector.lookahead:
            ranked = self.ranked(records)
            if ranked:
                return Choice([r.index for r in ranked[:self.k]])
            fallbacks = [(-r.entropy, r.index) for r in records] if self.min_entropy_fallback else []
        elif candidates:
            return Choice(best(candidates))
        return Choice(best(fallbacks), fallback_used=True)
