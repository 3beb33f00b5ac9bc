"""The OPRM engine: speculative prefill of every [P, C_i, S], selection, and decoding from the chosen state.

    engine = OPRM.from_pretrained("path/or/id", chunk_size=2000)
    result = engine.generate(context=long_text, query="Who ...?")
    result.text, result.chosen, result.chunks

The answer for the chosen chunk j equals ``model.generate`` on [P, C_j, S] alone: the chunk's state and first-token
logits come from the same forward computation, only batched with the other chunks (tests prove it per architecture).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from .adapters import get_adapter
from .chunking import make_chunks
from .decoding import decode, make_generation_config
from .errors import OPRMUsageError
from .prompts import IDK_DEFAULT, PromptParts, build_prompt, default_qa_template, idk_token_ids
from .selection import CandidatePool, ChunkRecord, first_token_stats, make_selector, query_logprobs

MODES = ("oprm", "vanilla", "truncate")
DECODES = ("one", "all", "top_k")
IDK_FALLBACKS = ("answer", "min_entropy")
_UNSET = object()


@dataclass
class Answer:
    """The decoded answer of one chunk (or of the whole prompt in vanilla/truncate mode)."""

    chunk: int | None
    text: str
    token_ids: list[int]


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
    """OPRM inference over a causal LM whose state an adapter understands (see ``oprm.adapters``)."""

    def __init__(self, model, tokenizer=None, *, chunk_size: int = 2000, overlap: int = 0, selection: str = "entropy",
                 idk: str | None = IDK_DEFAULT, idk_fallback: str = "answer", decode: str = "one", num_decode: int = 1,
                 max_batch_tokens: int | None = None, shared_prefix: bool = True, chat: bool = True,
                 system_prompt: str | None = None, top_k_tokens: int = 5, seed: int = 0,
                 generation_config=None, adapter=None, chunk_parallel=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter or get_adapter(model)  # a custom StateAdapter serves models we do not know
        self.chunk_size, self.overlap, self.selection = chunk_size, overlap, selection
        self.idk, self.idk_fallback = idk, idk_fallback
        self.decode, self.num_decode = decode, num_decode
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(self.adapter.device)
        self.shared_prefix = shared_prefix
        self.chat, self.system_prompt = chat, system_prompt
        self.top_k_tokens, self.seed = top_k_tokens, seed
        self.generation_config = generation_config
        self.chunk_parallel = chunk_parallel  # a parallel.ChunkParallel: shard chunks across torch.distributed ranks
        self._idk_ids: dict[str, set[int]] = {}
        _check_choice("idk_fallback", idk_fallback, IDK_FALLBACKS)
        _check_choice("decode", decode, DECODES)

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_id_or_path: str, *, dtype: str | torch.dtype = "float32", device: str | None = None,
                        gguf_file: str | None = None, trust_remote_code: bool = False, **engine_kwargs) -> "OPRM":
        """Load a model and tokenizer the transformers way (a hub id, a local folder, or a ``.gguf`` file), or an RWKV
        ``.pth`` checkpoint on the `rwkv` runtime (``dtype`` may then be a runtime strategy, e.g. "cuda fp16i8")."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models import resolve_model

        path, gguf_file = resolve_model(model_id_or_path, gguf_file)
        if path.endswith(".pth"):  # hook: RWKV v5-v7 checkpoints run on the `rwkv` runtime (adapters/rwkv_runtime.py)
            from .adapters.rwkv_runtime import load_rwkv_runtime
            return cls(*load_rwkv_runtime(path, dtype, device), **engine_kwargs)
        torch_dtype = dtype if isinstance(dtype, torch.dtype) or dtype == "auto" else getattr(torch, dtype, None)
        if torch_dtype is None:
            raise OPRMUsageError(f"unknown dtype {dtype!r}; use float32, float16, bfloat16 or auto")
        kwargs = {"trust_remote_code": trust_remote_code}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
        except OPRMUsageError:
            raise
        except Exception as e:  # noqa: BLE001 - one clear line for the user, whatever transformers raised
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "Unrecognized configuration class" in first:
                from .adapters import SUPPORTED

                raise OPRMUsageError(f"unsupported architecture: {model_id_or_path!r} is not a causal LM; "
                                     f"supported: {', '.join(SUPPORTED)}") from None
            raise OPRMUsageError(f"could not load model {model_id_or_path!r}: {first}") from e
        if device:
            model = model.to(device)
        return cls(model, tokenizer, **engine_kwargs)

    # ------------------------------------------------------------------------------------------------------------
    def build_prompt(self, context: str | None = None, query: str | None = None, *, template: str | None = None,
                     fields: dict | None = None, chat: bool | None = None, idk=_UNSET,
                     answer_prefix: str | None = None) -> PromptParts:
        if self.tokenizer is None:
            raise OPRMUsageError("text input needs a tokenizer; pass prefix_ids/context_ids/suffix_ids instead")
        idk = self.idk if idk is _UNSET else idk
        fields = dict(fields or {})
        if query is not None:
            fields["input"] = query
        if template is None:
            if "input" not in fields:
                raise OPRMUsageError("a question is needed (query=...) or a template with {context}")
            template = default_qa_template(idk)
        return build_prompt(self.tokenizer, context, template, fields, chat=self.chat if chat is None else chat,
                            system_prompt=self.system_prompt, answer_prefix=answer_prefix)

    def idk_ids(self, idk: str) -> set[int]:
        if idk not in self._idk_ids:
            if self.tokenizer is None:
                raise OPRMUsageError("the IDK filter needs a tokenizer (or pass idk=None)")
            self._idk_ids[idk] = idk_token_ids(self.tokenizer, idk)
        return self._idk_ids[idk]

    @torch.no_grad()
    def generate(self, context: str | None = None, query: str | None = None, *, template: str | None = None,
                 fields: dict | None = None, answer_prefix: str | None = None, prompt: PromptParts | None = None,
                 prefix_ids: list[int] | None = None, context_ids: list[int] | None = None,
                 suffix_ids: list[int] | None = None, query_span: tuple[int, int] | None = None,
                 mode: str = "oprm", chunk_size: int | None = None, overlap: int | None = None,
                 selection: str | None = None, idk=_UNSET, idk_fallback: str | None = None,
                 decode: str | None = None, num_decode: int | None = None, gold_chunk: int | None = None,
                 gold_text: str | None = None, max_input_tokens: int | None = None,
                 context_tail_tokens: int | None = None, chat: bool | None = None,
                 max_batch_tokens: int | None = None, generation_config=None,
                 streamer=None, output_logits: bool = False, **generation_options) -> OPRMResult:
        """Answer from a long context. Give text (``context`` + ``query`` or a ``template`` with ``{context}``,
        optionally an ``answer_prefix`` the answer continues), a ready ``prompt``, or pre-tokenized
        ``prefix_ids``/``context_ids``/``suffix_ids``.

        ``generation_options`` are GenerationConfig fields: max_new_tokens, do_sample, temperature, top_p, top_k,
        repetition_penalty, eos_token_id, stop_strings (and ``seed`` for sampling).
        """
        start_time = time.perf_counter()
        _check_choice("mode", mode, MODES)
        idk = self.idk if idk is _UNSET else idk
        if prompt is None:
            if context_ids is not None:
                prompt = PromptParts(list(prefix_ids or []), list(context_ids), list(suffix_ids or []),
                                     query_span=query_span)
                if not prompt.context_ids:
                    raise OPRMUsageError("the context is empty")
            else:
                prompt = self.build_prompt(context, query, template=template, fields=fields, chat=chat, idk=idk,
                                           answer_prefix=answer_prefix)
        if context_tail_tokens:  # LongBench lcc in OPRM: keep only the most recent code
            tail = prompt.context_ids[-context_tail_tokens:]
            cut = len(prompt.context_ids) - len(tail)
            offsets = prompt.context_offsets[cut:] if prompt.context_offsets else None
            prompt = PromptParts(prompt.prefix_ids, tail, prompt.suffix_ids, prompt.context_text, offsets,
                                 prompt.query_span)
        config = make_generation_config(self.model, generation_config or self.generation_config, **generation_options)
        generator = None
        if config.do_sample:
            generator = torch.Generator(device=self.adapter.device).manual_seed(
                generation_options.get("seed", self.seed))
        pick = lambda value, default: default if value is None else value  # noqa: E731 - 0 is not "unset"
        max_batch_tokens = pick(max_batch_tokens, self.max_batch_tokens)
        if max_batch_tokens <= 0:
            raise OPRMUsageError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        run = _Run(self, prompt, config, generator, streamer, output_logits, max_batch_tokens)
        try:
            if mode == "oprm":
                result = run.oprm(pick(chunk_size, self.chunk_size), pick(overlap, self.overlap),
                                  pick(selection, self.selection), idk, pick(idk_fallback, self.idk_fallback),
                                  pick(decode, self.decode), pick(num_decode, self.num_decode), gold_chunk, gold_text)
            else:
                result = run.single(mode, max_input_tokens)
        finally:
            if streamer is not None:
                streamer.end()
        result.timings["total"] = time.perf_counter() - start_time
        return result

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


class _Run:
    """One call of ``generate``: holds the prompt, the adapter and the counters."""

    def __init__(self, engine: OPRM, prompt: PromptParts, config, generator, streamer, output_logits,
                 max_batch_tokens: int):
        self.engine, self.adapter, self.prompt = engine, engine.adapter, prompt
        self.max_batch_tokens = max_batch_tokens
        self.config, self.generator, self.streamer = config, generator, streamer
        self.output_logits = output_logits
        self.tokens_processed = 0
        self.timings = {"prefill": 0.0, "selection": 0.0, "decode": 0.0}
        self.logits: list[torch.Tensor] | None = None
        self.streamed = False

    def tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.adapter.device)

    def prefill(self, ids: torch.Tensor, state=None, start: int = 0, num_logits: int = 1):
        t = time.perf_counter()
        logits, state = self.adapter.prefill(ids, state, start=start, num_logits=num_logits)
        self.timings["prefill"] += time.perf_counter() - t
        self.tokens_processed += ids.numel()
        return logits, state

    def prefill_long(self, ids: list[int]):
        """Batch-1 prefill of a long prompt, in segments where continuation is exact (bounded activations)."""
        segment = self.max_batch_tokens if self.adapter.continuation_exact else len(ids)
        state, logits = None, None
        for start in range(0, len(ids), max(1, segment)):
            logits, state = self.prefill(self.tensor([ids[start:start + segment]]), state, start=start)
        return logits[:, -1], state

    def records(self, chunks, logits: torch.Tensor, idk_ids: set[int], qlogprobs=None) -> list[ChunkRecord]:
        tokenizer = self.engine.tokenizer
        entropy, argmax, max_prob, top_i, top_p = first_token_stats(logits, self.engine.top_k_tokens)
        out = []
        for r, chunk in enumerate(chunks):
            tops = [(int(i), tokenizer.decode([int(i)]) if tokenizer else None, float(p))
                    for i, p in zip(top_i[r], top_p[r])]
            out.append(ChunkRecord(chunk.index, chunk.token_start, chunk.token_end, chunk.char_start, chunk.char_end,
                                   float(entropy[r]), int(argmax[r]), float(max_prob[r]), int(argmax[r]) in idk_ids,
                                   tops, None if qlogprobs is None else float(qlogprobs[r])))
        return out

    def answer(self, chunk_index, state, first_logits, prompt_ids: list[int]) -> Answer:
        t = time.perf_counter()
        tokenizer = self.engine.tokenizer
        keep_logits = self.output_logits and self.logits is None
        logits_list = [] if keep_logits else None
        if self.streamer is not None and not self.streamed:  # transformers' streamers skip the first put (prompt)
            self.streamer.put(torch.tensor(prompt_ids))
            self.streamed = True
        tokens = []
        for step in decode(self.adapter, state, first_logits, prompt_ids, len(prompt_ids), self.config, tokenizer,
                           self.generator):
            tokens.append(step.token)
            if logits_list is not None:
                logits_list.append(step.logits)
            if self.streamer is not None:
                self.streamer.put(torch.tensor([step.token]))
        if keep_logits:
            self.logits = logits_list
        self.tokens_processed += max(0, len(tokens) - 1)
        self.timings["decode"] += time.perf_counter() - t
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip() if tokenizer else ""
        return Answer(chunk_index, text, tokens)

    def result(self, mode, answers: list[Answer], chosen, chunks, **extra) -> OPRMResult:
        p = self.prompt
        text = "\n".join(a.text for a in answers)
        token_ids = [t for a in answers for t in a.token_ids]
        return OPRMResult(text, token_ids, mode, chosen, chunks, answers,
                          prompt_tokens={"prefix": len(p.prefix_ids), "context": len(p.context_ids),
                                         "suffix": len(p.suffix_ids)},
                          tokens_processed=self.tokens_processed, timings=self.timings, logits=self.logits, **extra)

    # --- vanilla / truncate -----------------------------------------------------------------------------------------
    def single(self, mode: str, max_input_tokens: int | None) -> OPRMResult:
        ids = self.prompt.full_ids()
        if mode == "truncate":
            if not max_input_tokens or max_input_tokens <= 0:
                raise OPRMUsageError("truncate mode needs max_input_tokens > 0")
            if len(ids) > max_input_tokens:  # LongBench: keep the first and last halves of the prompt
                half = max_input_tokens // 2
                ids = ids[:half] + ids[-half:]
        last, state = self.prefill_long(ids)
        record = self.records([_WholePrompt(len(self.prompt.context_ids))], last, set())[0]
        answer = self.answer(None, state, last[0], ids)
        return self.result(mode, [answer], [], [record])

    # --- OPRM -----------------------------------------------------------------------------------------------------
    def oprm(self, chunk_size, overlap, selection, idk, idk_fallback, decode_mode, num_decode, gold_chunk,
             gold_text) -> OPRMResult:
        _check_choice("idk_fallback", idk_fallback, IDK_FALLBACKS)
        _check_choice("decode", decode_mode, DECODES)
        if decode_mode == "top_k" and num_decode < 1:
            raise OPRMUsageError(f"num_decode must be at least 1, got {num_decode}")
        engine, p = self.engine, self.prompt
        chunks = make_chunks(len(p.context_ids), chunk_size, overlap, p.context_offsets)
        selector = make_selector(selection, seed=engine.seed, gold_chunks=self.gold_chunks(chunks, gold_chunk, gold_text))
        use_idk = idk is not None and selector.uses_idk_filter and decode_mode != "all"
        idk_ids = engine.idk_ids(idk) if use_idk else set()
        if selector.needs_query_logprob and p.query_span is None:
            raise OPRMUsageError("query_likelihood selection needs to know the query tokens: use a template with "
                                 "{input} (query=...) or pass query_span for pre-tokenized input")
        q0, q1 = p.query_span if selector.needs_query_logprob else (len(p.suffix_ids), len(p.suffix_ids))
        num_logits = len(p.suffix_ids) - q0 + 1
        query_targets = self.tensor([p.suffix_ids[q0:q1]])[0]

        shared = engine.shared_prefix and self.adapter.continuation_exact and len(p.prefix_ids) > 0
        prefix_state = self.prefill(self.tensor([p.prefix_ids]))[1] if shared else None
        row_prefix = [] if shared else p.prefix_ids
        row_len = len(row_prefix) + chunks[0].num_tokens + len(p.suffix_ids)
        rows_per_batch = max(1, self.max_batch_tokens // row_len)
        k = len(chunks) if decode_mode == "all" else (num_decode if decode_mode == "top_k" else 1)
        pool, fallback = CandidatePool(k), CandidatePool(k if idk_fallback == "min_entropy" and use_idk else 0)
        records: list[ChunkRecord] = []
        answers: list[Answer] = []
        parallel = engine.chunk_parallel
        my_chunks = parallel.share(chunks) if parallel else chunks

        for b0 in range(0, len(my_chunks), rows_per_batch):
            batch = my_chunks[b0:b0 + rows_per_batch]
            ids = self.tensor([row_prefix + p.context_ids[c.token_start:c.token_end] + p.suffix_ids for c in batch])
            start_state = self.adapter.select(prefix_state, [0] * len(batch)) if shared else None
            logits, state = self.prefill(ids, start_state, start=len(p.prefix_ids) if shared else 0,
                                         num_logits=num_logits)
            t = time.perf_counter()
            first = logits[:, -1]
            qlp = query_logprobs(logits[:, : q1 - q0], query_targets) if selector.needs_query_logprob else None
            batch_records = self.records(batch, first, idk_ids, qlp)
            records.extend(batch_records)
            keep = []
            for r, rec in enumerate(batch_records):
                rec.score = selector.score(rec)
                if decode_mode == "all":
                    keep.append((r, None))
                elif not rec.is_idk and pool.would_accept(rec.score):
                    keep.append((r, pool))
                elif rec.is_idk and len(pool) == 0 and fallback.k and fallback.would_accept(-rec.entropy):
                    keep.append((r, fallback))
            for r, target in keep:  # keep only the states that can still win
                rec = batch_records[r]
                payload = (self.adapter.select(state, [r]), first[r].clone())
                if target is None:  # summarization: decode every chunk as soon as it is prefilled, bounded memory
                    self.timings["selection"] += time.perf_counter() - t
                    answers.append(self.answer(rec.index, *payload, self.chunk_prompt(chunks[rec.index])))
                    t = time.perf_counter()
                else:
                    target.add(rec.score if target is pool else -rec.entropy, rec.index, payload)
            if len(pool):
                fallback.items.clear()
            del state, start_state, logits
            self.timings["selection"] += time.perf_counter() - t

        # the winners: (key, chunk index), best first; with chunk parallelism, over every rank's candidates
        candidates = [(key, index) for key, index, _ in pool.items]
        fallbacks = [(key, index) for key, index, _ in fallback.items]
        if parallel:
            shared_view = parallel.gather((records, candidates, fallbacks))
            records = sorted((r for part in shared_view for r in part[0]), key=lambda r: r.index)
            candidates = [c for part in shared_view for c in part[1]]
            fallbacks = [c for part in shared_view for c in part[2]]
        best = lambda items: sorted(items, key=lambda it: (-it[0], it[1]))[:k]  # noqa: E731

        fallback_used = False
        if decode_mode == "all":
            winners = [c.index for c in chunks]
        else:
            winners = [index for _, index in best(candidates)]
            if not winners:
                fallback_used = True
                if idk_fallback == "answer":
                    if parallel:
                        self.tokens_processed = self.total_tokens(parallel.gather(self.tokens_processed), shared)
                    tokens = engine.tokenizer(idk, add_special_tokens=False)["input_ids"]
                    return self.result("oprm", [Answer(None, idk, tokens)], [], records, selection=selection,
                                       idk_fallback_used=True, chunk_size=chunk_size)
                winners = [index for _, index in best(fallbacks)]
            kept = {index: payload for _, index, payload in pool.items + fallback.items}
            for index in sorted(winners):  # decode (on the rank that holds the state) and join in document order
                if index in kept:
                    answers.append(self.answer(index, *kept[index], self.chunk_prompt(chunks[index])))
        if parallel:
            shared_view = parallel.gather((answers, self.tokens_processed))
            answers = [a for part in shared_view for a in part[0]]
            self.tokens_processed = self.total_tokens([part[1] for part in shared_view], shared)
        answers.sort(key=lambda a: a.chunk)
        return self.result("oprm", answers, sorted(winners), records, selection=selection,
                           idk_fallback_used=fallback_used, chunk_size=chunk_size)

    def total_tokens(self, per_rank: list[int], shared: bool) -> int:
        """Tokens processed over the ranks, with the shared prefix counted once (as one process counts it)."""
        return sum(per_rank) - (len(per_rank) - 1) * len(self.prompt.prefix_ids) * shared

    def chunk_prompt(self, chunk) -> list[int]:
        p = self.prompt
        return p.prefix_ids + p.context_ids[chunk.token_start:chunk.token_end] + p.suffix_ids

    def gold_chunks(self, chunks, gold_chunk, gold_text) -> set[int]:
        gold = set()
        if gold_chunk is not None:
            if not 0 <= gold_chunk < len(chunks):
                raise OPRMUsageError(f"gold_chunk {gold_chunk} is out of range (0..{len(chunks) - 1})")
            gold.add(gold_chunk)
        if gold_text:
            p, tokenizer = self.prompt, self.engine.tokenizer
            for c in chunks:
                if p.context_text is not None and c.char_start is not None:
                    text = p.context_text[c.char_start:c.char_end]
                else:
                    text = tokenizer.decode(p.context_ids[c.token_start:c.token_end])
                if gold_text in text:
                    gold.add(c.index)
        return gold


@dataclass(frozen=True)
class _WholePrompt:
    """The single "chunk" of a vanilla or truncated run: the whole context."""

    num_context_tokens: int
    index: int = 0
    token_start: int = 0
    char_start: None = None
    char_end: None = None

    @property
    def token_end(self):
        return self.num_context_tokens


def _check_choice(name, value, choices):
    if value not in choices:
        raise OPRMUsageError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def default_max_batch_tokens(device) -> int:
    """Tokens per prefill micro-batch. Measured on CPU (docs/bench): 8192 is faster than 32768 for Mamba and Mamba2
    (the reference scans' temporaries grow with the batch) and 3-4x lighter; GPUs batch more rows for free."""
    return 8192 if torch.device(device).type == "cpu" else 32768


def default_threads() -> int:
    """Torch CPU threads: 1 on small machines, where the recurrent scans run 2-25x faster single-threaded."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else max(1, math.floor(cores / 2))


def set_threads(value: int | None = None) -> None:
    """Set torch's CPU thread count (``None``: the measured default)."""
    torch.set_num_threads(value or default_threads())
