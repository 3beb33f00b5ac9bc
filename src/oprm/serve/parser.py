"""Checked OpenAI requests (:mod:`oprm.serve.protocol`) -> a :class:`~oprm.serve.plan.Plan`: what to ask the engine
and how to shape the answer, within the server's limits."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from ..config import OPRMConfig
from ..errors import OPRMUsageError
from ..prompts import template_fields
from ..selection import selection_needs
from .plan import DOC_CLOSE, DOC_OPEN, APIError, Limits, Plan, bad
from .protocol import ChatRequest, CompletionRequest, parse


class Parser:
    """Turns request bodies into plans, against the served model's names, base config, default generation and the
    server's limits."""

    def __init__(self, model_names: list[str], config: OPRMConfig, default_generation: dict,
                 limits: Limits | None = None):
        self.model_names = model_names
        self.config = config
        self.default_generation = dict(default_generation)
        self.limits = limits or Limits()

    def chat(self, body) -> Plan:
        request = self._common(parse(ChatRequest, body))
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if messages[-1]["role"] != "user":
            raise bad("the last message must be the user's question", "messages")
        max_tokens = request.max_completion_tokens or request.max_tokens
        logprobs, top = bool(request.logprobs), request.top_logprobs or 0
        if top and not logprobs:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        plan = self._plan("chat", request, max_tokens, logprobs, top)
        ext = request.oprm
        document, system_text, question = self._find_document(messages)
        if ext is not None and ext.context is not None:
            if document is not None:
                raise bad("give the document either in oprm.context or in a <document> block, not both", "oprm.context")
            document, plan.document_from = ext.context, "extension"
            question = messages[-1]["content"]
            system_text = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
        elif document is not None:
            plan.document_from = "message"
        if plan.oprm:
            if any(m["role"] == "assistant" for m in messages) or sum(m["role"] == "user" for m in messages) > 1:
                raise bad("an OPRM request (with a document) takes one user question; earlier turns are not supported",
                          "messages")
            self._oprm_call(plan, ext, document, question, system_text)
        else:
            self._vanilla(plan, ext)
            plan.vanilla_messages = messages
        return _seed_sampling(plan)

    def completion(self, body) -> Plan:
        request = self._common(parse(CompletionRequest, body))
        prompt = request.prompt
        plan = self._plan("completion", request, request.max_tokens, request.logprobs is not None,
                          request.logprobs or 0)
        ext = request.oprm
        document, _, question = self._find_document([{"role": "user", "content": prompt}])
        if ext is not None and ext.context is not None:
            if document is not None:
                raise bad("give the document either in oprm.context or in a <document> block, not both", "oprm.context")
            document, question, plan.document_from = ext.context, prompt, "extension"
        elif document is not None:
            plan.document_from = "message"
        if plan.oprm:
            self._oprm_call(plan, ext, document, question, None)
        else:
            self._vanilla(plan, ext)
            if not prompt:
                raise bad("prompt is empty", "prompt")
            plan.vanilla_prompt = prompt
        return _seed_sampling(plan)

    # --- pieces ---------------------------------------------------------------------------------------------------
    def _common(self, request):
        if request.oprm is not None and request.oprm.context is not None and not request.oprm.context.strip():
            raise bad("oprm.context is empty", "oprm.context")
        if request.model not in self.model_names:
            raise APIError(404, f"The model {request.model!r} does not exist; this server serves "
                                f"{self.model_names[0]!r}", param="model", code="model_not_found")
        if request.n is not None and request.n != 1:
            raise bad("n must be 1: one answer per request (send several requests for several answers)", "n",
                      "unsupported_value")
        unsupported = request.unsupported()
        if unsupported:
            raise bad(f"{unsupported} is not supported by this server", unsupported, "unsupported_parameter")
        if request.response_format is not None and request.response_format != {"type": "text"}:
            raise bad("only response_format {\"type\": \"text\"} is supported", "response_format", "unsupported_value")
        return request

    def _plan(self, kind: str, request, max_tokens: int | None, logprobs: bool, top: int) -> Plan:
        stream = bool(request.stream)
        include_usage = False
        if request.stream_options is not None:
            if not stream:
                raise bad("stream_options needs stream: true", "stream_options")
            include_usage = request.stream_options.include_usage
        if stream and logprobs:
            raise bad("logprobs are returned without streaming only", "logprobs", "unsupported_value")
        generation = dict(self.default_generation)
        if max_tokens is not None:
            if max_tokens > self.limits.max_tokens:
                param = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
                raise bad(f"{param} is {max_tokens}; this server decodes at most {self.limits.max_tokens} tokens "
                          "(oprm serve --max-tokens-limit)", param)
            generation["max_new_tokens"] = max_tokens
        generation["max_new_tokens"] = min(int(generation.get("max_new_tokens") or 64), self.limits.max_tokens)
        if request.temperature is not None:  # 0 (or nothing, as `oprm ask`) is greedy; above 0 samples
            generation["do_sample"] = request.temperature > 0
            if request.temperature > 0:
                generation["temperature"] = float(request.temperature)
        if request.top_p is not None:
            generation["top_p"] = float(request.top_p)
        stop = request.stop or list(generation.get("stop_strings") or [])  # the request's, else the server's
        if stop:
            generation["stop_strings"] = stop
        kwargs: dict[str, Any] = dict(generation)
        if request.seed is not None:
            kwargs["seed"] = request.seed
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return Plan(kind, request.model, kwargs, stream=stream, include_usage=include_usage, stop=stop,
                    max_new_tokens=generation["max_new_tokens"], logprobs=logprobs, top_logprobs=top,
                    id=prefix + uuid.uuid4().hex[:24], created=int(time.time()))

    def _vanilla(self, plan: Plan, ext) -> None:
        """Without a document the request is plain chat: OPRM options would silently do nothing, so they are refused."""
        if ext is not None:
            needs_document = sorted(k for k in ext.model_fields_set if k in set(OPRMConfig.names())
                                    | {"context", "template", "answer_prefix", "gold_text"})
            if needs_document:
                raise bad(f"oprm.{needs_document[0]} needs a document: put it in oprm.context or a <document> block",
                          f"oprm.{needs_document[0]}", "missing_document")
        self._generation_extension(ext, plan.engine_kwargs)
        plan.explain = bool(ext is not None and ext.explain)

    @staticmethod
    def _generation_extension(ext, kwargs: dict) -> dict:
        if ext is None:
            return kwargs
        if ext.top_k is not None:
            kwargs["top_k"] = ext.top_k
        if ext.repetition_penalty is not None:
            kwargs["repetition_penalty"] = float(ext.repetition_penalty)
        if ext.do_sample is not None:
            kwargs["do_sample"] = ext.do_sample
        if ext.ignore_eos:
            kwargs["eos_token_id"] = []  # decode to max_tokens (or a stop string)
        return kwargs

    @staticmethod
    def _find_document(messages: list[dict]) -> tuple[str | None, str | None, str]:
        """(document, system prompt, question) from a <document> block in a system message or the last user message."""
        found, system_parts = [], []
        question = messages[-1]["content"]
        for i, m in enumerate(messages):
            if m["role"] not in ("system", "user") or (m["role"] == "user" and i != len(messages) - 1):
                continue
            text = m["content"]
            start = text.find(DOC_OPEN)
            if start < 0:
                if m["role"] == "system":
                    system_parts.append(text)
                continue
            end = text.rfind(DOC_CLOSE)
            if end < start:
                raise bad(f"a {DOC_OPEN} block has no closing {DOC_CLOSE}", f"messages[{i}].content")
            found.append(text[start + len(DOC_OPEN):end])
            rest = (text[:start] + text[end + len(DOC_CLOSE):]).strip()
            if m["role"] == "system":
                if rest:
                    system_parts.append(rest)
            else:
                question = rest
        if len(found) > 1:
            raise bad("more than one <document> block", "messages")
        if not found:
            return None, None, question
        if not found[0].strip():
            raise bad("the <document> block is empty", "messages")
        return found[0], "\n\n".join(system_parts) or None, question

    def _oprm_call(self, plan: Plan, ext, document: str, question: str, system_text: str | None) -> None:
        limits = self.limits
        size = len(document.encode("utf-8", "surrogatepass"))
        if size > limits.max_document_bytes:
            raise APIError(413, f"the document is {size} bytes; this server takes at most {limits.max_document_bytes} "
                                "(oprm serve --max-document-bytes)", param="oprm.context" if
                           plan.document_from == "extension" else "messages", code="document_too_large")
        template = ext.template if ext is not None else None
        answer_prefix = ext.answer_prefix if ext is not None else None
        for name, text in (("template", template), ("answer_prefix", answer_prefix)):
            if text is None:
                continue
            if len(text) > limits.max_template_chars:
                raise bad(f"oprm.{name} has {len(text)} characters; this server takes at most "
                          f"{limits.max_template_chars} (oprm serve --max-template-chars)", f"oprm.{name}")
            try:
                template_fields(text)
            except OPRMUsageError as e:
                raise bad(str(e), f"oprm.{name}") from None
        if template is not None and template.count("{context}") != 1:
            raise bad("oprm.template must contain {context} exactly once", "oprm.template")
        if not question.strip() and (template is None or "{input}" in template):
            raise bad("the question (the last user message) is empty", "messages")
        overrides = ext.config_overrides() if ext is not None else {}
        if system_text and "system_prompt" not in overrides:
            overrides["system_prompt"] = system_text
        if "seed" in plan.engine_kwargs:
            overrides.setdefault("seed", plan.engine_kwargs.pop("seed"))
        try:
            config = self.config.replace(**overrides)
        except OPRMUsageError as e:
            raise bad(str(e), "oprm") from None
        plan.decode = config.decode
        if config.lookahead_tokens > self.limits.max_tokens and config.selection in ("support", "lookahead"):
            raise bad(f"oprm.lookahead_tokens is {config.lookahead_tokens}; this server decodes at most "
                      f"{self.limits.max_tokens} tokens (oprm serve --max-tokens-limit)", "oprm.lookahead_tokens")
        gold_text = ext.gold_text if ext is not None else None
        if "gold" in selection_needs(config) and not gold_text:
            raise bad(f"selection {config.selection} needs oprm.gold_text (the text the right chunk holds)",
                      "oprm.gold_text")
        kwargs = plan.engine_kwargs
        kwargs.update(overrides)
        self._generation_extension(ext, kwargs)
        kwargs.update(context=document, query=question if question.strip() else None, template=template,
                      answer_prefix=answer_prefix, gold_text=gold_text)
        plan.explain = bool(ext is not None and ext.explain)


def _seed_sampling(plan: Plan) -> Plan:
    """A sampled answer without a ``seed`` gets a fresh one (OpenAI: repeated requests give different samples);
    with a seed it is reproducible."""
    if plan.engine_kwargs.get("do_sample") and "seed" not in plan.engine_kwargs:
        plan.engine_kwargs["seed"] = secrets.randbits(31)
    return plan
