"""One OPRM answer over the chunks of a context: speculative prefill (micro-batches -> chunk records and kept
states), the candidate policy, the merge across ranks under chunk parallelism, and decoding of the winners."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from .chunking import extra_tokens, make_chunks
from .config import OPRMConfig
from .decoding import Answer, AnswerDecoder
from .document import EncodedDocument
from .errors import OPRMUsageError
from .lookahead import LookaheadSearch
from .models import CACHE_OFF
from .prefill import Prefiller
from .prompts import PromptParts
from .result import OPRMResult, make_result
from .records import chunk_records, not_run, query_logprobs
from .selection import SelectionPolicy, require, selection_needs

CHUNKING_OPTIONS = ("chunk_size", "overlap", "chunking")


def chunking_of(config: OPRMConfig) -> dict:
    return {k: getattr(config, k) for k in CHUNKING_OPTIONS}


def reusable(prompt: PromptParts, config: OPRMConfig) -> bool:
    """Whether S alone yields every logit selection needs, so chunk states after [P, C_i] can be reused: S is not
    empty and, for query_likelihood, the query does not open S (its first token is predicted from C_i's end)."""
    if not prompt.suffix_ids:
        return False
    return "query_span" not in selection_needs(config) or prompt.query_span is None or prompt.query_span[0] > 0


def cache_folder(config: OPRMConfig) -> str | None:
    """Where encoded documents are also written: ``cache_dir``, else ``$OPRM_CACHE_DIR`` (``off``: none)."""
    folder = config.cache_dir or os.environ.get("OPRM_CACHE_DIR") or None
    if folder is None or folder.strip().lower() in CACHE_OFF:
        return None
    folder = os.path.expanduser(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OPRMUsageError(f"the cache folder {folder} is a file, not a folder")
    return folder


def chunking_used(prompt: PromptParts, config: OPRMConfig) -> str:
    """The configured chunking, or plain tokens where the text or its token offsets are unknown (pre-tokenized)."""
    known = prompt.context_text is not None and prompt.context_offsets is not None
    return config.chunking if known else "tokens"


class ChunkRun:
    """One OPRM answer: speculative prefill (micro-batches -> chunk records and kept states), the selection policy,
    the merge across ranks under chunk parallelism, and decoding of the winners.

    It holds what one call needs and nothing of the engine: the config, the model's adapter and tokenizer, the
    tokenized prompt (or an encoded document), the prefiller and decoder of the call, and ``idk_ids`` (an IDK word's
    first tokens), ``model_eos`` (where the model ends an answer), ``parallel`` (a ``ChunkParallel`` or None) and
    ``state_template`` (a batch-1 state, to rebuild states read from disk). With ``keep`` (a ``document.NewDocument``),
    every chunk's state after [P, C_i] is handed to it as its micro-batch goes by (what the document cache keeps)."""

    def __init__(self, prompt: PromptParts, config: OPRMConfig, adapter, tokenizer, prefiller: Prefiller,
                 decoder: AnswerDecoder, *, idk_ids: Callable[[str], set[int]], model_eos: set[int] = frozenset(),
                 parallel=None, document: EncodedDocument | None = None, state_template: Callable | None = None,
                 keep=None):
        self.prompt, self.config, self.adapter, self.tokenizer = prompt, config, adapter, tokenizer
        self.prefiller, self.decoder = prefiller, decoder
        self.idk_ids, self.model_eos, self.parallel = idk_ids, set(model_eos), parallel
        self.document, self.state_template, self.keep = document, state_template, keep
        self.chunks = document.chunks if document is not None else self.chunks_of(prompt, config)
        self.chunking = document.meta["chunking"] if document is not None else chunking_used(prompt, config)

    @staticmethod
    def chunks_of(prompt: PromptParts, config: OPRMConfig):
        """The chunks of the context; boundary-safe chunking needs the text and its token offsets, so pre-tokenized
        input is chunked in plain token windows (``chunking_used``)."""
        return make_chunks(len(prompt.context_ids), config.chunk_size, config.overlap, prompt.context_offsets,
                           chunking=chunking_used(prompt, config), text=prompt.context_text)

    def batches(self, chunks, num_logits: int, keep=None, defer: bool = False):
        """Micro-batches of every chunk's [P, C_i, S]: from scratch (handing states to ``keep``: ``chunk_prompts``),
        or S on top of an encoded document."""
        p = self.prompt
        if self.document is None:
            return self.prefiller.chunk_prompts(p.prefix_ids, p.context_ids, p.suffix_ids, chunks, num_logits,
                                                self.config.shared_prefix, keep, defer)
        missing = sorted({c.index for c in chunks} - set(self.document.held))
        if missing:
            raise OPRMUsageError(f"the encoded document holds no state for chunk {missing[0]} (encoded by another "
                                 "rank or world size?)")
        template = self.state_template() if self.document.on_disk and self.state_template else None
        return self.prefiller.on_document(self.document, chunks, p.suffix_ids, num_logits, template)

    def run(self, gold_chunk: int | None = None, gold_text: str | None = None) -> OPRMResult:
        config, parallel, p = self.config, self.parallel, self.prompt
        gold = self.gold_chunks(gold_chunk, gold_text)
        require(config, query_text=p.query_text, query_span=p.query_span, gold=bool(gold),
                text=p.context_text is not None)
        policy = SelectionPolicy(config, gold, text=p.context_text is not None and bool(p.query_text))
        search = LookaheadSearch(self, policy) if policy.looks_ahead else None
        idk_ids = self.idk_ids(policy.idk) if policy.idk is not None else set()
        num_logits, query_ids = self.query_positions(policy.needs_query_logprob)

        records, answers = [], []
        mine = parallel.share(self.chunks) if parallel else self.chunks
        # chunks run tier by tier: S on an encoded document; the whole prompt where nothing keeps the states
        whole = self.document is None and self.keep is None and self.tiered(search)
        waiting = list(mine) if self.document is not None or whole else []
        if self.document is None and not whole:
            # a miss: states after [P, C_i] go to the document cache as they are made, and while it keeps them all,
            # S waits to run tier by tier on them as on a hit (``tiers``)
            for batch in self.batches(mine, num_logits, self.keep, defer=self.tiered(search)):
                if batch.logits is None:
                    waiting += batch.chunks
                    continue
                answers += self.observe(batch, policy, records, idk_ids, query_ids, search)
                del batch  # before the next micro-batch runs: one batch of activations and states at a time
            if waiting and self.keep.holds_all():  # (else its states were dropped: S runs with [P, C_i] again)
                self.document = self.keep.document()
        for tier in self.tiers(waiting, search):
            if records and self.tiered(search):
                search.complete(records)  # the look-aheads the choice needs among the chunks run so far
                kth = policy.kth_support(records)
                if kth is not None and search.bounds.get(tier[0].index, 0.0) < kth:
                    break  # S never runs on the chunks left: none can be chosen or move the choice
            for batch in self.batches(tier, num_logits):
                answers += self.observe(batch, policy, records, idk_ids, query_ids, search)
                del batch

        candidates, fallbacks = policy.keys()
        if parallel:
            records, candidates, fallbacks = parallel.merge_selection(records, candidates, fallbacks)
        if search is not None:
            search.complete(records)  # the look-aheads the choice still needs
        choice = policy.choose(records, candidates, fallbacks)
        winners, fallback_used = sorted(choice.winners), choice.fallback_used
        if not policy.decode_all:  # decode_all decoded every chunk as its micro-batch went by
            reused = [a for a in (search.answer(i) for i in winners) if a is not None] if search else []
            todo = [i for i in winners if i not in {a.chunk for a in reused}]
            kept = search.states() if search else policy.states()  # under chunk parallelism, only the rank
            kept.update(self.prefill_again([i for i in todo if i not in kept and self.holds(i)]))  # holding it
            answers += reused + [self.decoder.answer(i, *kept[i], self.chunk_prompt(i)) for i in todo if i in kept]
        if parallel:
            answers = parallel.merge_answers(answers, self.prefiller.stats, self.prefiller.shared_prefix_tokens)
        if not winners:  # every chunk said IDK: the answer is the IDK word
            answers = [Answer(None, config.idk, self.tokenizer(config.idk, add_special_tokens=False)["input_ids"])]
        answers.sort(key=lambda a: -1 if a.chunk is None else a.chunk)
        ran = {r.index for r in records}
        records = sorted(records + [not_run(c, search.bounds.get(c.index)) for c in mine if c.index not in ran],
                         key=lambda r: r.index)
        result = make_result("oprm", p, self.prefiller.stats, self.decoder.logits, answers, winners, records,
                             selection=config.selection, idk_fallback_used=fallback_used or not winners,
                             chunk_size=config.chunk_size, chunking=self.chunking,
                             extra_tokens=extra_tokens(self.chunks, len(p.context_ids)))
        return result

    def tiered(self, search: LookaheadSearch | None) -> bool:
        """Whether S runs tier by tier of support bound where it runs alone: the bounded ``support`` search on text
        (``search.defer`` already rules out chunk parallelism)."""
        return search is not None and search.defer and bool(search.bounds)

    def tiers(self, chunks, search: LookaheadSearch | None) -> list[list]:
        """The chunks in the order they run (S on an encoded document; [P, C_i, S] where no document cache keeps
        the states): all at once; or, with ``tiered``, in tiers of equal support bound, highest first, so that the
        tiers below the support found are never run: the choice is the one a run on every chunk would give
        (``SelectionPolicy.pending``), at the price of the few chunks that can hold the answer."""
        if not chunks or not self.tiered(search):
            return [chunks] if chunks else []
        tiers: dict[float, list] = {}
        for c in chunks:
            tiers.setdefault(search.bounds.get(c.index, 0.0), []).append(c)
        return [tiers[b] for b in sorted(tiers, reverse=True)]

    def holds(self, index: int) -> bool:
        """Whether this process prefills chunk ``index`` (every chunk, or this rank's round-robin share)."""
        return self.parallel is None or index % self.parallel.world_size == self.parallel.rank

    def prefill_again(self, indices: list[int]) -> dict[int, tuple]:
        """States and first-token logits of chunks whose states were not kept (look-ahead selection ranks chunks
        only once all are known): their prompts run again, exactly as in the speculative prefill."""
        kept = {}
        for batch in self.batches([self.chunks[i] for i in indices], 1) if indices else ():
            kept.update({c.index: (self.adapter.select(batch.state, [r]), batch.logits[r, -1].clone())
                         for r, c in enumerate(batch.chunks)})
        return kept

    def observe(self, batch, policy: SelectionPolicy, records: list, idk_ids: set[int], query_ids,
                search: LookaheadSearch | None = None) -> list[Answer]:
        """Record one micro-batch's chunks and keep the states that can still win (look-ahead selection: ``search``);
        with ``decode="all"`` decode its chunks at once (summaries: memory stays bounded)."""
        t = time.perf_counter()
        first = batch.logits[:, -1]
        qlp = None if query_ids is None else query_logprobs(batch.logits[:, :len(query_ids)], query_ids)
        batch_records = chunk_records(batch.chunks, first, idk_ids, self.tokenizer, self.config.top_k_tokens, qlp)
        records += batch_records
        self.prefiller.stats.timings["selection"] += time.perf_counter() - t
        if search is not None:
            search.observe(batch, batch_records)
            return []
        t = time.perf_counter()
        decode_now = policy.observe(batch_records, lambda r: (self.adapter.select(batch.state, [r]), first[r].clone()))
        self.prefiller.stats.timings["selection"] += time.perf_counter() - t
        return [self.decoder.answer(rec.index, *kept, self.chunk_prompt(rec.index)) for rec, kept in decode_now]

    def query_positions(self, needed: bool) -> tuple[int, torch.Tensor | None]:
        """(logits to keep per row, query token ids): the query-likelihood criterion scores the query tokens of S."""
        suffix = self.prompt.suffix_ids
        if not needed:
            return 1, None
        q0, q1 = self.prompt.query_span
        return len(suffix) - q0 + 1, self.prefiller.tensor([suffix[q0:q1]])[0]

    def chunk_prompt(self, index: int) -> list[int]:
        p, c = self.prompt, self.chunks[index]
        return p.prefix_ids + p.context_ids[c.token_start:c.token_end] + p.suffix_ids

    def gold_chunks(self, gold_chunk: int | None, gold_text: str | None) -> set[int]:
        """The chunks holding the gold: by index, and/or those whose text contains ``gold_text``."""
        gold = set()
        if gold_chunk is not None:
            if not 0 <= gold_chunk < len(self.chunks):
                raise OPRMUsageError(f"gold_chunk {gold_chunk} is out of range (0..{len(self.chunks) - 1})")
            gold.add(gold_chunk)
        if gold_text:
            p = self.prompt
            for c in self.chunks:
                if p.context_text is not None and c.char_start is not None:
                    text = p.context_text[c.char_start:c.char_end]
                else:
                    text = self.tokenizer.decode(p.context_ids[c.token_start:c.token_end])
                if gold_text in text:
                    gold.add(c.index)
        return gold
