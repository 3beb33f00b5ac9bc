"""One OPRM answer over the chunks of a context: speculative prefill (micro-batches -> chunk records and kept
states), the candidate policy, the merge across ranks under chunk parallelism, and decoding of the winners."""

from __future__ import annotations

import os
import time

import torch

from .chunking import extra_tokens, make_chunks
from .config import OPRMConfig
from .decoding import Answer, AnswerDecoder, eos_ids, greedy_lookahead
from .document import EncodedDocument
from .errors import OPRMUsageError
from .prefill import Prefiller
from .prompts import PromptParts
from .result import OPRMResult, make_result
from .selection import CandidatePolicy, chunk_records, make_selector, query_logprobs, support

CHUNKING_OPTIONS = ("chunk_size", "overlap", "chunking")


def chunking_of(config: OPRMConfig) -> dict:
    return {k: getattr(config, k) for k in CHUNKING_OPTIONS}


def reusable(prompt: PromptParts, config: OPRMConfig) -> bool:
    """Whether S alone yields every logit selection needs, so chunk states after [P, C_i] can be reused: S is not
    empty and, for query_likelihood, the query does not open S (its first token is predicted from C_i's end)."""
    if not prompt.suffix_ids:
        return False
    return config.selection != "query_likelihood" or prompt.query_span is None or prompt.query_span[0] > 0


def cache_folder(config: OPRMConfig) -> str | None:
    folder = config.cache_dir or os.environ.get("OPRM_CACHE_DIR") or None
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
        raise OPRMUsageError(f"the cache folder {folder} is a file, not a folder")
    return folder


def chunking_used(prompt: PromptParts, config: OPRMConfig) -> str:
    """The configured chunking, or plain tokens where the text or its token offsets are unknown (pre-tokenized)."""
    known = prompt.context_text is not None and prompt.context_offsets is not None
    return config.chunking if known else "tokens"


class ChunkRun:
    """One OPRM answer: speculative prefill (micro-batches -> chunk records and kept states), the candidate policy,
    the merge across ranks under chunk parallelism, and decoding of the winners. ``engine`` is the calling
    :class:`~oprm.engine.OPRM` (its adapter, tokenizer, IDK ids and chunk parallelism)."""

    def __init__(self, engine, prompt: PromptParts, config: OPRMConfig, prefiller: Prefiller,
                 decoder: AnswerDecoder, document: EncodedDocument | None = None, keep: dict | None = None):
        self.engine, self.prompt, self.config = engine, prompt, config
        self.prefiller, self.decoder = prefiller, decoder
        self.document, self.keep = document, keep
        self.chunks = document.chunks if document is not None else self.chunks_of(prompt, config)
        self.chunking = document.meta["chunking"] if document is not None else chunking_used(prompt, config)

    @staticmethod
    def chunks_of(prompt: PromptParts, config: OPRMConfig):
        """The chunks of the context; boundary-safe chunking needs the text and its token offsets, so pre-tokenized
        input is chunked in plain token windows (``chunking_used``)."""
        return make_chunks(len(prompt.context_ids), config.chunk_size, config.overlap, prompt.context_offsets,
                           chunking=chunking_used(prompt, config), text=prompt.context_text)

    def batches(self, chunks, num_logits: int):
        """Micro-batches of every chunk's [P, C_i, S]: from scratch, or S on top of an encoded document."""
        p = self.prompt
        if self.document is None:
            return self.prefiller.chunk_prompts(p.prefix_ids, p.context_ids, p.suffix_ids, chunks, num_logits,
                                                self.config.shared_prefix, keep=self.keep)
        missing = sorted({c.index for c in chunks} - set(self.document.held))
        if missing:
            raise OPRMUsageError(f"the encoded document holds no state for chunk {missing[0]} (encoded by another "
                                 "rank or world size?)")
        return self.prefiller.on_document(self.document, chunks, p.suffix_ids, num_logits,
                                          self.engine.state_template() if self.document.on_disk else None)

    def run(self, gold_chunk: int | None, gold_text: str | None) -> OPRMResult:
        config, engine, parallel = self.config, self.engine, self.engine.chunk_parallel
        selector = make_selector(config.selection, seed=config.seed,
                                 gold_chunks=self.gold_chunks(gold_chunk, gold_text))
        use_idk = config.idk is not None and selector.uses_idk_filter and config.decode != "all"
        policy = CandidatePolicy(selector, config.decode, config.num_decode, use_idk, config.idk_fallback,
                                 config.idk if use_idk else None)
        idk_ids = engine.idk_ids(config.idk) if use_idk else set()
        num_logits, query_ids = self.query_positions(selector.needs_query_logprob)

        records, answers = [], []
        mine = parallel.share(self.chunks) if parallel else self.chunks
        for batch in self.batches(mine, num_logits):
            answers += self.observe(batch, policy, records, idk_ids, query_ids)
            del batch  # before the next micro-batch runs: one batch of activations and states at a time

        candidates, fallbacks = policy.keys()
        if parallel:
            records, candidates, fallbacks = parallel.merge_selection(records, candidates, fallbacks)
        if config.decode == "all":
            winners, fallback_used = [c.index for c in self.chunks], False
        else:
            choice = policy.choose(records, candidates, fallbacks)
            winners, fallback_used = sorted(choice.winners), choice.fallback_used
            kept = policy.states()  # under chunk parallelism, only the rank holding a winner decodes it
            kept.update(self.prefill_again([i for i in winners if i not in kept and self.holds(i)]))
            answers += [self.decoder.answer(i, *kept[i], self.chunk_prompt(i)) for i in winners if i in kept]
        if parallel:
            answers = parallel.merge_answers(answers, self.prefiller.stats, self.prefiller.shared_prefix_tokens)
        if not winners:  # every chunk said IDK: the answer is the IDK word
            answers = [Answer(None, config.idk, engine.tokenizer(config.idk, add_special_tokens=False)["input_ids"])]
        answers.sort(key=lambda a: -1 if a.chunk is None else a.chunk)
        return make_result("oprm", self.prompt, self.prefiller.stats, self.decoder.logits, answers, winners, records,
                           selection=config.selection, idk_fallback_used=fallback_used or not winners,
                           chunk_size=config.chunk_size, chunking=self.chunking,
                           extra_tokens=extra_tokens(self.chunks, len(self.prompt.context_ids)))

    def holds(self, index: int) -> bool:
        """Whether this process prefills chunk ``index`` (every chunk, or this rank's round-robin share)."""
        parallel = self.engine.chunk_parallel
        return parallel is None or index % parallel.world_size == parallel.rank

    def prefill_again(self, indices: list[int]) -> dict[int, tuple]:
        """States and first-token logits of chunks whose states were not kept (look-ahead selection ranks chunks
        only once all are known): their prompts run again, exactly as in the speculative prefill."""
        kept = {}
        for batch in self.batches([self.chunks[i] for i in indices], 1) if indices else ():
            kept.update({c.index: (self.engine.adapter.select(batch.state, [r]), batch.logits[r, -1].clone())
                         for r, c in enumerate(batch.chunks)})
        return kept

    def observe(self, batch, policy: CandidatePolicy, records: list, idk_ids: set[int], query_ids) -> list[Answer]:
        """Record one micro-batch's chunks and keep the states that can still win; with ``decode="all"`` decode its
        chunks at once (summaries: memory stays bounded)."""
        t = time.perf_counter()
        engine, config = self.engine, self.config
        first = batch.logits[:, -1]
        qlp = None if query_ids is None else query_logprobs(batch.logits[:, :len(query_ids)], query_ids)
        batch_records = chunk_records(batch.chunks, first, idk_ids, engine.tokenizer, config.top_k_tokens, qlp)
        records += batch_records
        self.prefiller.stats.timings["selection"] += time.perf_counter() - t
        if policy.selector.lookahead and not policy.decode_all:
            self.look_ahead(batch, batch_records, policy.selector.name == "support")
        t = time.perf_counter()
        decode_now = policy.observe(batch_records, lambda r: (engine.adapter.select(batch.state, [r]),
                                                              first[r].clone()))
        self.prefiller.stats.timings["selection"] += time.perf_counter() - t
        return [self.decoder.answer(rec.index, *kept, self.chunk_prompt(rec.index)) for rec, kept in decode_now]

    def look_ahead(self, batch, records: list, with_support: bool) -> None:
        """Decode ``lookahead_tokens`` greedily from every chunk of the batch that passes the first-token IDK filter
        (all rows in one batch) and note each answer, its log-probabilities and, for ``support``, its extractive
        support in the chunk."""
        t = time.perf_counter()
        engine, p = self.engine, self.prompt
        rows = [r for r, rec in enumerate(records) if not rec.is_idk]
        if rows:
            state = engine.adapter.select(batch.state, rows)
            position = len(p.prefix_ids) + batch.chunks[0].num_tokens + len(p.suffix_ids)
            # the answer ends where the model ends it, whatever eos the caller decodes with (e.g. none)
            eos = eos_ids(self.decoder.config) | eos_ids(getattr(engine.model, "generation_config", None))
            tokens, logprobs = greedy_lookahead(engine.adapter, state, batch.logits[rows, -1], position,
                                                self.config.lookahead_tokens, eos)
            steps = len(rows) * (max(map(len, logprobs)) - 1)  # the first token came with the prefill
            self.prefiller.stats.tokens_processed += steps
            self.prefiller.stats.lookahead_tokens += steps
            for r, ids, lps in zip(rows, tokens, logprobs):
                rec = records[r]
                rec.lookahead_ids, rec.lookahead_logprobs = ids, lps
                rec.lookahead = (engine.tokenizer.decode(ids, skip_special_tokens=True).strip() if engine.tokenizer
                                 else " ".join(map(str, ids)))
                if with_support and p.context_text is not None and p.query_text and rec.char_start is not None:
                    rec.support = support(p.context_text[rec.char_start:rec.char_end], rec.lookahead, p.query_text)
        self.prefiller.stats.timings["lookahead"] += time.perf_counter() - t

    def query_positions(self, needed: bool) -> tuple[int, torch.Tensor | None]:
        """(logits to keep per row, query token ids): the query-likelihood criterion scores the query tokens of S."""
        suffix = self.prompt.suffix_ids
        if not needed:
            return 1, None
        if self.prompt.query_span is None:
            raise OPRMUsageError("query_likelihood selection needs to know the query tokens: use a template with "
                                 "{input} (query=...) or pass query_span for pre-tokenized input")
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
                    text = self.engine.tokenizer.decode(p.context_ids[c.token_start:c.token_end])
                if gold_text in text:
                    gold.add(c.index)
        return gold
