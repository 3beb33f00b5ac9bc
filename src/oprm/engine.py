"""The OPRM engine: speculative prefill of every [P, C_i, S], selection, and decoding from the chosen state.

    engine = OPRM.from_pretrained("path/or/id", chunk_size=2000)
    result = engine.generate(context=long_text, query="Who ...?")
    result.text, result.chosen, result.chunks

The answer for the chosen chunk j equals ``model.generate`` on [P, C_j, S] alone: the chunk's state and first-token
logits come from the same forward computation, only batched with the other chunks (tests prove it per architecture).
"""

from __future__ import annotations

import time

import torch

from .adapters import get_adapter
from .chunking import make_chunks
from .config import OPRMConfig, split_options
from .decoding import Answer, AnswerDecoder, eos_ids, make_generation_config
from .document import DocumentCache, EncodedDocument, NewDocument, document_key, fingerprint
from .document_extend import extend_cached
from .errors import OPRMUsageError
from .heap import release_freed_memory
from .prefill import Prefiller, RunStats
from .prompts import PromptFormat, PromptParts, build_prompt, default_qa_template, idk_token_ids, prompt_frame
from .result import OPRMResult, make_result
from .run import CHUNKING_OPTIONS, ChunkRun, cache_folder, chunking_of, chunking_used, reusable
from .records import chunk_records

__all__ = ["OPRM", "OPRMResult", "Answer", "default_max_batch_tokens"]


class OPRM:
    """OPRM inference over a causal LM whose state an adapter understands (see ``oprm.adapters``).

    Options are an :class:`~oprm.config.OPRMConfig` (``config=``) and/or its fields as keywords; ``generate`` takes
    the same keywords as per-call overrides, plus GenerationConfig options (``max_new_tokens``, ...).
    """

    def __init__(self, model, tokenizer=None, config: OPRMConfig | None = None, *, generation_config=None,
                 adapter=None, chunk_parallel=None, prompt_format: PromptFormat | None = None, **options):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter or get_adapter(model)  # a custom StateAdapter serves models we do not know
        self.config = (config or OPRMConfig()).replace(**options)
        self.generation_config = generation_config
        self.chunk_parallel = chunk_parallel  # a parallel.ChunkParallel: shard chunks across torch.distributed ranks
        self.prompt_format = prompt_format  # the model's own prompt, for questions asked without a template
        self.documents = DocumentCache()  # the automatic cache of encoded documents (config.document_cache_bytes)
        self._idk_ids: dict[str, set[int]] = {}
        self._fingerprint: dict | None = None
        self._state_template = None

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, *, dtype: str | torch.dtype = "auto", device: str | None = None,
                        gguf_file: str | None = None, trust_remote_code: bool = False, **engine_kwargs) -> "OPRM":
        """Load a model and tokenizer the transformers way (a hub id, a local folder, a ``.gguf`` file, or the name
        of a model that ships with oprm), or an RWKV ``.pth`` checkpoint on the `rwkv` runtime (``dtype`` may then be a
        runtime strategy, e.g. "cuda fp16i8"). Without ``chunk_size`` or ``config``, a folder's measured best chunk
        size (``chunk_sizes.json``) is the default, and a folder's ``prompt_format.json`` the prompt of questions asked
        without a template."""
        from .models import default_chunk_size, load_model, resolve_model

        model, tokenizer = load_model(model_id_or_path, dtype=dtype, device=device, gguf_file=gguf_file,
                                      trust_remote_code=trust_remote_code)
        if "config" not in engine_kwargs and "chunk_size" not in engine_kwargs:
            engine_kwargs["chunk_size"] = default_chunk_size(model_id_or_path)
        engine_kwargs.setdefault("prompt_format", PromptFormat.load(resolve_model(model_id_or_path, gguf_file)[0]))
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
        template, answer_prefix = self._model_prompt(query, template, answer_prefix)
        template, fields = self._template(query, template, fields, config)
        return build_prompt(self.tokenizer, context, template, fields, chat=config.chat,
                            system_prompt=config.system_prompt, answer_prefix=answer_prefix)

    def _model_prompt(self, query, template, answer_prefix) -> tuple[str | None, str | None]:
        """Without a template, the model's own prompt format (if it has one) gives the template and answer prefix."""
        if template is not None or self.prompt_format is None:
            return template, answer_prefix
        fmt = self.prompt_format
        return fmt.template, answer_prefix if answer_prefix is not None else fmt.answer_prefix_for(query)

    def _template(self, query, template, fields, config) -> tuple[str, dict]:
        fields = dict(fields or {})
        if query is not None:
            if not query.strip():
                raise OPRMUsageError("the question is empty")
            fields["input"] = query
        if template is None:
            if "input" not in fields:
                raise OPRMUsageError("a question is needed (query=...) or a template with {context}")
            template = default_qa_template(config.idk)
        return template, fields

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
    def generate(self, context: str | None = None, query: str | None = None, *,
                 document: EncodedDocument | None = None, template: str | None = None,
                 fields: dict | None = None, answer_prefix: str | None = None, prompt: PromptParts | None = None,
                 prefix_ids: list[int] | None = None, context_ids: list[int] | None = None,
                 suffix_ids: list[int] | None = None, query_span: tuple[int, int] | None = None,
                 gold_chunk: int | None = None, gold_text: str | None = None, context_tail_tokens: int | None = None,
                 generation_config=None, streamer=None, output_logits: bool = False, should_stop=None,
                 **options) -> OPRMResult:
        """Answer from a long context. Give text (``context`` + ``query`` or a ``template`` with ``{context}``,
        optionally an ``answer_prefix`` the answer continues), a ready ``prompt``, or pre-tokenized
        ``prefix_ids``/``context_ids``/``suffix_ids``.

        ``document`` is an :meth:`encode`-d context: only S is run on top of its chunk states.
        ``options`` are OPRMConfig fields (chunk_size, selection, idk, decode, mode, ...) for this call, and
        GenerationConfig fields: max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
        eos_token_id, stop_strings. ``gold_chunk``/``gold_text`` serve ``selection="oracle"``;
        ``context_tail_tokens`` keeps only the context's last tokens (LongBench lcc under OPRM). ``should_stop``
        (a callable) is asked before every forward pass of the prefill; when it returns True, ``GenerationCancelled``
        is raised (a streamer may raise it during decoding too).
        """
        start_time = time.perf_counter()
        overrides, generation_options = split_options(options)
        config = self.config.replace(**overrides)
        if document is not None:
            config = self._document_config(document, overrides, config)
            prompt = self._document_prompt(document, query, template, fields, answer_prefix, suffix_ids, query_span,
                                           config)
        elif prompt is None:
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
                              model_name=self.name, should_stop=should_stop)
        decoder = AnswerDecoder(self.adapter, generation, self.tokenizer, generator, streamer, output_logits, stats,
                                model_name=self.name)
        try:
            if config.mode == "oprm":
                result = self._answer_from_chunks(prompt, config, prefiller, decoder, document, gold_chunk, gold_text)
            else:
                result = self._whole_prompt(prompt, config, prefiller, decoder)
        finally:
            if streamer is not None:
                streamer.end()
        result.timings["total"] = time.perf_counter() - start_time
        result.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return result

    def _answer_from_chunks(self, prompt, config, prefiller, decoder, document, gold_chunk, gold_text) -> OPRMResult:
        """OPRM on the chunks, reusing an encoded document (given, or from the automatic cache) when there is one;
        on a cache miss the new document's states are kept as they are made (``NewDocument``: within the budget)."""
        info, key = None, None
        if document is not None:
            info = {"source": "document"}
        else:
            document, info, key = self._cached_document(prompt, config)
            if key is not None and document is None:  # a document that extends a cached one: only new chunks
                document, extended = extend_cached(self, prompt, config, key, prefiller)
                info.update(extended)
        if document is not None and not document.held:
            document = None  # the architecture cannot continue a state exactly: recomputed from the tokens
        keep = None
        try:
            run = ChunkRun(prompt, config, self.adapter, self.tokenizer, prefiller, decoder, idk_ids=self.idk_ids,
                           model_eos=eos_ids(getattr(self.model, "generation_config", None)),
                           parallel=self.chunk_parallel, document=document, state_template=self.state_template)
            if key is not None and document is None:  # a cache miss: the new document's states, within the budget
                mine = self.chunk_parallel.share(run.chunks) if self.chunk_parallel else run.chunks
                keep = run.keep = NewDocument(self.documents, key, config.document_cache_bytes, cache_folder(config),
                                              len(mine))
                keep.describe(self.document_meta(config, run.chunking), prompt.prefix_ids, prompt.context_ids,
                              run.chunks, prompt.context_text)  # kept (and waiting requests go on) once made
            result = run.run(gold_chunk, gold_text)
        except BaseException:
            if keep is not None:
                keep.abort()
            elif key is not None and document is None:  # who waits for this document (here or a replica) goes on
                self.documents.settle(key)
            raise
        if keep is not None:
            info["kept"] = keep.finish(self.document_meta(config, run.chunking), prompt.prefix_ids,
                                       prompt.context_ids, run.chunks, prompt.context_text)
            run.keep = keep = None
            release_freed_memory()  # a miss allocated and freed a document's worth of small tensors
        result.document = info
        return result

    def _cached_document(self, prompt, config) -> tuple[EncodedDocument | None, dict | None, str | None]:
        """(document, what the cache did, key) for the automatic document cache; (None, None, None) when off."""
        folder = cache_folder(config)
        if not (self.adapter.continuation_exact and (config.document_cache_bytes or folder) and reusable(prompt, config)):
            return None, None, None
        key = document_key(self.fingerprint, chunking_of(config), prompt.prefix_ids, prompt.context_ids)
        document, status = self.documents.get(key, folder)
        return document, {"source": "cache", "cache": status}, key

    @property
    def fingerprint(self) -> dict:
        """What encoded documents depend on (model, tokenizer, dtype, oprm version)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model, self.tokenizer)
        return self._fingerprint

    def document_meta(self, config: OPRMConfig, chunking: str) -> dict:
        """What an encoded document records: the fingerprint it must match, its chunking, and the model's name (the
        default ``--model`` of ``oprm ask --document``; not checked)."""
        return {"model": self.name, **self.fingerprint, **chunking_of(config), "chunking": chunking}

    def state_template(self):
        """A batch-1 state of this model: the layout that states read from disk are rebuilt into."""
        if self._state_template is None:
            ids = torch.zeros(1, 1, dtype=torch.long, device=self.adapter.device)
            self._state_template = self.adapter.prefill(ids)[1]
        return self._state_template

    @torch.no_grad()
    def encode(self, context: str | None = None, *, template: str | None = None, fields: dict | None = None,
               prefix_ids: list[int] | None = None, context_ids: list[int] | None = None,
               **options) -> EncodedDocument:
        """Prefill [P, C_i] of every chunk once and keep the states; ask questions with
        ``generate(document=..., query=...)``. The template's part before ``{context}`` (P) must not hold the
        question."""
        config = self.config.replace(**options)
        if context_ids is not None:
            if not context_ids:
                raise OPRMUsageError("the context is empty")
            prompt = PromptParts(list(prefix_ids or []), list(context_ids), [])
        else:
            template, _ = self._model_prompt(None, template, None)
            template, fields = self._template("?", template, fields, config)
            if "{input}" in template.split("{context}")[0]:
                raise OPRMUsageError("this template asks the question before {context}: a document encoded with it "
                                     "could not be reused across questions")
            prompt = build_prompt(self.tokenizer, context, template, fields, chat=config.chat,
                                  system_prompt=config.system_prompt)
        chunks = ChunkRun.chunks_of(prompt, config)
        parallel = self.chunk_parallel
        states = {}
        if self.adapter.continuation_exact:  # elsewhere questions recompute [P, C_i, S] from the kept tokens
            prefiller = Prefiller(self.adapter, RunStats(), config.max_batch_tokens or
                                  default_max_batch_tokens(self.adapter.device), model_name=self.name)
            states = prefiller.chunk_states(prompt.prefix_ids, prompt.context_ids,
                                            parallel.share(chunks) if parallel else chunks, config.shared_prefix)
        meta = self.document_meta(config, chunking_used(prompt, config))
        return EncodedDocument(meta, prompt.prefix_ids, prompt.context_ids, chunks, prompt.context_text, states=states)

    def _document_config(self, document: EncodedDocument, overrides: dict, config: OPRMConfig) -> OPRMConfig:
        """The document's chunking wins; asking for another one in the same call is an error."""
        document.check(self.fingerprint, {k: v for k, v in overrides.items() if k in CHUNKING_OPTIONS})
        return config.replace(**{k: document.meta[k] for k in CHUNKING_OPTIONS})

    def _document_prompt(self, document, query, template, fields, answer_prefix, suffix_ids, query_span,
                         config) -> PromptParts:
        if suffix_ids is not None:
            frame = PromptParts(document.prefix_ids, [], list(suffix_ids), query_span=query_span)
        else:
            if self.tokenizer is None:
                raise OPRMUsageError("text input needs a tokenizer; pass suffix_ids instead")
            template, answer_prefix = self._model_prompt(query, template, answer_prefix)
            template, fields = self._template(query, template, fields, config)
            frame = prompt_frame(self.tokenizer, template, fields, chat=config.chat, system_prompt=config.system_prompt,
                                 answer_prefix=answer_prefix)
            if frame.prefix_ids != document.prefix_ids:
                raise OPRMUsageError("this prompt's prefix P differs from the encoded document's: use the template, "
                                     "chat setting and system prompt it was encoded with")
        prompt = PromptParts(document.prefix_ids, document.context_ids, frame.suffix_ids, document.context_text,
                             query_span=frame.query_span, query_text=frame.query_text)
        if not reusable(prompt, config):
            raise OPRMUsageError("a question on an encoded document needs a non-empty suffix S whose first token is "
                                 "not a query token scored by query_likelihood (the context's last logits are not kept)")
        return prompt

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
        return make_result(config.mode, prompt, prefiller.stats, decoder.logits, [answer], [], [record])

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


def default_max_batch_tokens(device) -> int:
    """Tokens per prefill micro-batch. Measured on CPU (docs/bench): 8192 is faster than 32768 for Mamba and Mamba2
    (the reference scans' temporaries grow with the batch) and 3-4x lighter; GPUs batch more rows for free."""
    return 8192 if torch.device(device).type == "cpu" else 32768
