"""The OPRM engine: speculative prefill of every [P, C_i, S], selection, and decoding from the chosen state.

    engine = OPRM.from_pretrained("path/or/id", chunk_size=2000)
    result = engine.generate(context=long_text, query="Who ...?")
    result.text, result.chosen, result.chunks

The answer for the chosen chunk j equals ``model.generate`` on [P, C_j, S] alone: the chunk's state and first-token
logits come from the same forward computation, only batched with the other chunks (tests prove it per architecture).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from .adapters import get_adapter
from .chunking import make_chunks
from .config import OPRMConfig, split_options
from .decoding import Answer, AnswerDecoder, make_generation_config
from .errors import OPRMUsageError
from .prefill import Prefiller, RunStats
from .prompts import PromptParts, build_prompt, default_qa_template, idk_token_ids
from .runtime import default_threads, set_threads  # noqa: F401 - their former home; kept importable
from .selection import CandidatePolicy, ChunkRecord, chunk_records, make_selector, query_logprobs

__all__ = ["OPRM", "OPRMResult", "Answer", "default_max_batch_tokens", "default_threads", "set_threads"]


@dataclass
class OPRMResult:
    text: str
    token_ids: list[int]
    mode: str
    chosen: list[int]  # indices of the decoded chunks, in document order
    chunks: list[ChunkRecord]  # one record per chunk (one record for the whole prompt in vanilla/truncate mode)
    answers: list[Answer]
    selection: str | None = None
    idk_fallback_used: bool = False
    chunk_size: int | None = None
    prompt_tokens: dict = field(default_factory=dict)  # |P|, |C|, |S|
    tokens_processed: int = 0
    timings: dict = field(default_factory=dict)  # seconds: prefill, selection, decode, total
    logits: list[torch.Tensor] | None = None  # raw logits of each generated token (output_logits=True, one answer)

    @property
    def chosen_spans(self) -> list[dict]:
        return [{"chunk": c.index, "token_start": c.token_start, "token_end": c.token_end,
                 "char_start": c.char_start, "char_end": c.char_end} for c in self.chunks if c.index in self.chosen]

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "logits"}
        d["chosen_spans"] = self.chosen_spans
        return d


class OPRM:
    """OPRM inference over a causal LM whose state an adapter understands (see ``oprm.adapters``).

    Options are an :class:`~oprm.config.OPRMConfig` (``config=``) and/or its fields as keywords; ``generate`` takes
    the same keywords as per-call overrides, plus GenerationConfig options (``max_new_tokens``, ...).
    """

    def __init__(self, model, tokenizer=None, config: OPRMConfig | None = None, *, generation_config=None,
                 adapter=None, chunk_parallel=None, **options):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter or get_adapter(model)  # a custom StateAdapter serves models we do not know
        self.config = (config or OPRMConfig()).replace(**options)
        self.generation_config = generation_config
        self.chunk_parallel = chunk_parallel  # a parallel.ChunkParallel: shard chunks across torch.distributed ranks
        self._idk_ids: dict[str, set[int]] = {}

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, *, dtype: str | torch.dtype = "float32", device: str | None = None,
                        gguf_file: str | None = None, trust_remote_code: bool = False, **engine_kwargs) -> "OPRM":
        """Load a model and tokenizer the transformers way (a hub id, a local folder, a ``.gguf`` file, or the name
        of a model that ships with oprm)."""
        from .models import load_model

        model, tokenizer = load_model(model_id_or_path, dtype=dtype, device=device, gguf_file=gguf_file,
                                      trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, **engine_kwargs)

    @property
    def name(self) -> str:
        config = getattr(self.model, "config", None)
        return getattr(config, "_name_or_path", None) or type(self.model).__name__

    # --- prompts ----------------------------------------------------------------------------------------------------
    def build_prompt(self, context: str | None = None, query: str | None = None, *, template: str | None = None,
                     fields: dict | None = None, answer_prefix: str | None = None,
                     config: OPRMConfig | None = None) -> PromptParts:
        if self.tokenizer is None:
            raise OPRMUsageError("text input needs a tokenizer; pass prefix_ids/context_ids/suffix_ids instead")
        config = config or self.config
        fields = dict(fields or {})
        if query is not None:
            if not query.strip():
                raise OPRMUsageError("the question is empty")
            fields["input"] = query
        if template is None:
            if "input" not in fields:
                raise OPRMUsageError("a question is needed (query=...) or a template with {context}")
            template = default_qa_template(config.idk)
        return build_prompt(self.tokenizer, context, template, fields, chat=config.chat,
                            system_prompt=config.system_prompt, answer_prefix=answer_prefix)

    def idk_ids(self, idk: str) -> set[int]:
        if idk not in self._idk_ids:
            if self.tokenizer is None:
                raise OPRMUsageError("the IDK filter needs a tokenizer (or pass idk=None)")
            self._idk_ids[idk] = idk_token_ids(self.tokenizer, idk)
        return self._idk_ids[idk]

    def _prompt(self, context, query, template, fields, answer_prefix, prefix_ids, context_ids, suffix_ids,
                query_span, config) -> PromptParts:
        if context_ids is not None:
            if not context_ids:
                raise OPRMUsageError("the context is empty")
            return PromptParts(list(prefix_ids or []), list(context_ids), list(suffix_ids or []),
                               query_span=query_span)
        return self.build_prompt(context, query, template=template, fields=fields, answer_prefix=answer_prefix,
                                 config=config)

    # --- answering --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, context: str | None = None, query: str | None = None, *, template: str | None = None,
                 fields: dict | None = None, answer_prefix: str | None = None, prompt: PromptParts | None = None,
                 prefix_ids: list[int] | None = None, context_ids: list[int] | None = None,
                 suffix_ids: list[int] | None = None, query_span: tuple[int, int] | None = None,
                 gold_chunk: int | None = None, gold_text: str | None = None, context_tail_tokens: int | None = None,
                 generation_config=None, streamer=None, output_logits: bool = False, **options) -> OPRMResult:
        """Answer from a long context. Give text (``context`` + ``query`` or a ``template`` with ``{context}``,
        optionally an ``answer_prefix`` the answer continues), a ready ``prompt``, or pre-tokenized
        ``prefix_ids``/``context_ids``/``suffix_ids``.

        ``options`` are OPRMConfig fields (chunk_size, selection, idk, decode, mode, ...) for this call, and
        GenerationConfig fields: max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
        eos_token_id, stop_strings. ``gold_chunk``/``gold_text`` serve ``selection="oracle"``;
        ``context_tail_tokens`` keeps only the context's last tokens (LongBench lcc under OPRM).
        """
        start_time = time.perf_counter()
        overrides, generation_options = split_options(options)
        config = self.config.replace(**overrides)
        if prompt is None:
            prompt = self._prompt(context, query, template, fields, answer_prefix, prefix_ids, context_ids,
                                  suffix_ids, query_span, config)
        if context_tail_tokens:
            prompt = prompt.context_tail(context_tail_tokens)
        generation = make_generation_config(self.model, generation_config or self.generation_config,
                                            **generation_options)
        generator = None
        if generation.do_sample:
            generator = torch.Generator(device=self.adapter.device).manual_seed(config.seed)
        stats = RunStats()
        prefiller = Prefiller(self.adapter, stats, config.max_batch_tokens or default_max_batch_tokens(self.adapter.device),
                              model_name=self.name)
        decoder = AnswerDecoder(self.adapter, generation, self.tokenizer, generator, streamer, output_logits, stats,
                                model_name=self.name)
        try:
            if config.mode == "oprm":
                result = _ChunkRun(self, prompt, config, prefiller, decoder).run(gold_chunk, gold_text)
            else:
                result = self._whole_prompt(prompt, config, prefiller, decoder)
        finally:
            if streamer is not None:
                streamer.end()
        result.timings["total"] = time.perf_counter() - start_time
        return result

    def _whole_prompt(self, prompt: PromptParts, config: OPRMConfig, prefiller: Prefiller,
                      decoder: AnswerDecoder) -> OPRMResult:
        """vanilla: the whole prompt in one pass; truncate: LongBench's middle truncation first."""
        ids = prompt.full_ids()
        if config.mode == "truncate":
            if not config.max_input_tokens:
                raise OPRMUsageError("truncate mode needs max_input_tokens")
            if len(ids) > config.max_input_tokens:  # LongBench: keep the first and last halves of the prompt
                half = config.max_input_tokens // 2
                ids = ids[:half] + ids[-half:]
        last, state = prefiller.long(ids)
        whole = make_chunks(len(prompt.context_ids), max(1, len(prompt.context_ids)))
        record = chunk_records(whole, last, set(), self.tokenizer, config.top_k_tokens)[0]
        answer = decoder.answer(None, state, last[0], ids)
        return make_result(config.mode, prompt, prefiller.stats, decoder, [answer], [], [record])

    def stream(self, *args, **kwargs):
        """Like ``generate`` but yields the answer text piece by piece (transformers' TextIteratorStreamer)."""
        from threading import Thread

        from transformers import TextIteratorStreamer

        if self.tokenizer is None:
            raise OPRMUsageError("streaming text needs a tokenizer")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors = []

        def work():
            try:
                self.generate(*args, streamer=streamer, **kwargs)
            except BaseException as e:  # surface worker errors in the caller
                errors.append(e)

        thread = Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]


class _ChunkRun:
    """One OPRM answer: speculative prefill (micro-batches -> chunk records and kept states), the candidate policy,
    the merge across ranks under chunk parallelism, and decoding of the winners."""

    def __init__(self, engine: OPRM, prompt: PromptParts, config: OPRMConfig, prefiller: Prefiller,
                 decoder: AnswerDecoder):
        self.engine, self.prompt, self.config = engine, prompt, config
        self.prefiller, self.decoder = prefiller, decoder
        self.chunks = make_chunks(len(prompt.context_ids), config.chunk_size, config.overlap, prompt.context_offsets)

    def run(self, gold_chunk: int | None, gold_text: str | None) -> OPRMResult:
        config, engine, parallel = self.config, self.engine, self.engine.chunk_parallel
        selector = make_selector(config.selection, seed=config.seed,
                                 gold_chunks=self.gold_chunks(gold_chunk, gold_text))
        use_idk = config.idk is not None and selector.uses_idk_filter and config.decode != "all"
        policy = CandidatePolicy(selector, config.decode, config.num_decode, use_idk, config.idk_fallback)
        idk_ids = engine.idk_ids(config.idk) if use_idk else set()
        num_logits, query_ids = self.query_positions(selector.needs_query_logprob)

        records, answers = [], []
        mine = parallel.share(self.chunks) if parallel else self.chunks
        for batch in self.prefiller.chunk_prompts(self.prompt.prefix_ids, self.prompt.context_ids,
                                                  self.prompt.suffix_ids, mine, num_logits, config.shared_prefix):
            t = time.perf_counter()
            first = batch.logits[:, -1]
            qlp = None if query_ids is None else query_logprobs(batch.logits[:, :len(query_ids)], query_ids)
            batch_records = chunk_records(batch.chunks, first, idk_ids, engine.tokenizer, config.top_k_tokens, qlp)
            records += batch_records
            decode_now = policy.observe(batch_records, lambda r: (engine.adapter.select(batch.state, [r]),
                                                                  first[r].clone()))
            self.prefiller.stats.timings["selection"] += time.perf_counter() - t
            answers += [self.decoder.answer(rec.index, *kept, self.chunk_prompt(rec.index))
                        for rec, kept in decode_now]  # summaries: decoded as soon as prefilled (bounded memory)
            del batch

        candidates, fallbacks = policy.keys()
        if parallel:
            records, candidates, fallbacks = parallel.merge_selection(records, candidates, fallbacks)
        if config.decode == "all":
            winners, fallback_used = [c.index for c in self.chunks], False
        else:
            choice = policy.choose(candidates, fallbacks)
            winners, fallback_used = sorted(choice.winners), choice.fallback_used
            kept = policy.states()  # under chunk parallelism, only the rank holding a winner decodes it
            answers += [self.decoder.answer(i, *kept[i], self.chunk_prompt(i)) for i in winners if i in kept]
        if parallel:
            answers, self.prefiller.stats.tokens_processed = parallel.merge_answers(
                answers, self.prefiller.stats.tokens_processed, self.prefiller.shared_prefix_tokens)
        if not winners:  # every chunk said IDK: the answer is the IDK word
            answers = [Answer(None, config.idk, engine.tokenizer(config.idk, add_special_tokens=False)["input_ids"])]
        answers.sort(key=lambda a: -1 if a.chunk is None else a.chunk)
        return make_result("oprm", self.prompt, self.prefiller.stats, self.decoder, answers, winners, records,
                           selection=config.selection, idk_fallback_used=fallback_used or not winners,
                           chunk_size=config.chunk_size)

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


def make_result(mode: str, prompt: PromptParts, stats: RunStats, decoder: AnswerDecoder, answers: list[Answer],
                chosen: list[int], records: list[ChunkRecord], **extra) -> OPRMResult:
    return OPRMResult("\n".join(a.text for a in answers), [t for a in answers for t in a.token_ids], mode, chosen,
                      records, answers, prompt_tokens={"prefix": len(prompt.prefix_ids),
                                                       "context": len(prompt.context_ids),
                                                       "suffix": len(prompt.suffix_ids)},
                      tokens_processed=stats.tokens_processed, timings=stats.timings, logits=decoder.logits, **extra)


def default_max_batch_tokens(device) -> int:
    """Tokens per prefill micro-batch. Measured on CPU (docs/bench): 8192 is faster than 32768 for Mamba and Mamba2
    (the reference scans' temporaries grow with the batch) and 3-4x lighter; GPUs batch more rows for free."""
    return 8192 if torch.device(device).type == "cpu" else 32768
