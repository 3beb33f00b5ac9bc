"""OpenAI request bodies -> engine calls, and engine results -> OpenAI response bodies.

Nothing here touches the network or the model: a request is checked and turned into a :class:`Plan` (what to ask
the engine and how to shape the answer); the worker runs the plan; ``chat_response``/``completion_response`` shape
the result. Every rejection is an :class:`APIError` carrying an OpenAI-style error object.

How the long context travels (see the README's "Serving" section):

* the request extension ``"oprm": {"context": "...", <engine options>}`` (``extra_body`` in the openai client): the
  question is the last user message;
* for clients that cannot send extra fields, a ``<document>...</document>`` block inside the last user message or a
  system message: the block's text is the context and the rest of the user message is the question;
* neither: plain chat on the model (the whole conversation through its chat template, one pass: vanilla).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..config import OPRMConfig
from ..errors import OPRMUsageError

DOC_OPEN, DOC_CLOSE = "<document>", "</document>"
MAX_STOP = 4  # OpenAI's limit on stop sequences
# request-extension keys besides the OPRMConfig fields
EXTENSION_PROMPT_KEYS = ("context", "template", "answer_prefix", "gold_text")
EXTENSION_GENERATION_KEYS = ("top_k", "repetition_penalty", "do_sample", "ignore_eos")
EXTENSION_OTHER_KEYS = ("explain",)
# OpenAI fields we accept but cannot honour unless they hold their neutral value
NEUTRAL_FIELDS = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "best_of": 1, "echo": False,
                  "suffix": None, "tools": None, "functions": None, "tool_choice": None}


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Plan:
    """One checked request: the engine call and how to shape its answer."""

    kind: str  # "chat" | "completion"
    model: str
    engine_kwargs: dict  # for OPRM.generate (prompt arguments, OPRMConfig overrides, generation options)
    vanilla_messages: list | None = None  # plain chat: rendered with the chat template in the worker
    vanilla_prompt: str | None = None  # plain completion: raw text
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    logprobs: bool = False
    top_logprobs: int = 0
    explain: bool = False
    document_from: str | None = None  # "extension" | "message" | None (vanilla)
    decode: str = "one"  # the effective OPRMConfig.decode (request over server default)
    id: str = ""
    created: int = 0

    @property
    def oprm(self) -> bool:
        return self.document_from is not None

    @property
    def streams_pieces(self) -> bool:
        """Several decoded chunks are joined only at the end, so they stream as one piece."""
        return not self.oprm or self.decode == "one"


# --- small checks -------------------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _int(body: dict, name: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise bad(f"{name} must be an integer, got {value!r}", name, "invalid_type")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise bad(f"{name} must be {bounds}, got {value}", name)
    return value


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise bad(f"{name} must be a number, got {value!r}", name, "invalid_type")
    if value > high or value < low or (low_open and value == low):
        raise bad(f"{name} must be {'above' if low_open else 'at least'} {low} and at most {high}, got {value}", name)
    return float(value)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, got {value!r}", name, "invalid_type")
    return value


def _text(content, param: str) -> str:
    """A message's text: a string, or a list of text parts (other part types are not supported)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported", param,
                          "unsupported_content")
            out.append(part["text"])
        return "".join(out)
    raise bad(f"message content must be a string or a list of text parts, got {type(content).__name__}", param,
              "invalid_type")


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of non-empty strings", "stop", "invalid_type")
    if len(stops) > MAX_STOP:
        raise bad(f"stop takes at most {MAX_STOP} sequences, got {len(stops)}", "stop")
    return list(dict.fromkeys(stops))


# --- OPRMConfig fields: types the dataclass itself does not check -------------------------------------------------
_CONFIG_TYPES = {f.name: f.type for f in dataclasses.fields(OPRMConfig)}


def _check_config_type(name: str, value) -> None:
    annotation = str(_CONFIG_TYPES[name])
    optional = "None" in annotation
    if value is None:
        if not optional:
            raise bad(f"oprm.{name} cannot be null", f"oprm.{name}", "invalid_type")
        return
    base = annotation.replace("| None", "").replace("None |", "").strip()
    ok = {"bool": lambda v: isinstance(v, bool), "int": _is_int, "str": lambda v: isinstance(v, str)}.get(base)
    if ok is not None and not ok(value):
        raise bad(f"oprm.{name} must be of type {base}, got {value!r}", f"oprm.{name}", "invalid_type")


# --- the request --------------------------------------------------------------------------------------------------
class Parser:
    """Turns request bodies into plans, against the served model's names, base config and default generation."""

    def __init__(self, model_names: list[str], config: OPRMConfig, default_generation: dict):
        self.model_names = model_names
        self.config = config
        self.default_generation = dict(default_generation)

    def chat(self, body) -> Plan:
        body = self._common(body)
        messages = body.get("messages")
        if messages is None:
            raise bad("messages is required", "messages", "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise bad("messages must be a non-empty list", "messages")
        parsed = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
            role = m.get("role")
            if role not in ("system", "developer", "user", "assistant"):
                raise bad(f"messages[{i}].role must be system, developer, user or assistant, got {role!r}",
                          f"messages[{i}].role")
            content = m.get("content")
            if content is None and role == "assistant":
                content = ""
            parsed.append({"role": "system" if role == "developer" else role,
                           "content": _text(content, f"messages[{i}].content")})
        if parsed[-1]["role"] != "user":
            raise bad("the last message must be the user's question", "messages")
        max_tokens = _int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _int(body, "max_tokens", 1)
        logprobs = _bool(body, "logprobs")
        top = _int(body, "top_logprobs", 0, 20) or 0
        if top and not logprobs:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        plan = self._plan("chat", body, max_tokens, logprobs, top)
        ext = self._extension(body)
        document, system_text, question = self._find_document(parsed)
        if ext.get("context") is not None:
            if document is not None:
                raise bad("give the document either in oprm.context or in a <document> block, not both", "oprm.context")
            document, plan.document_from = ext["context"], "extension"
            question = parsed[-1]["content"]
            system_text = "\n\n".join(m["content"] for m in parsed if m["role"] == "system") or None
        elif document is not None:
            plan.document_from = "message"
        if plan.oprm:
            if any(m["role"] == "assistant" for m in parsed) or sum(m["role"] == "user" for m in parsed) > 1:
                raise bad("an OPRM request (with a document) takes one user question; earlier turns are not supported",
                          "messages")
            self._oprm_call(plan, ext, document, question, system_text)
        else:
            self._vanilla_extension(ext)
            self._generation_extension(ext, plan.engine_kwargs)
            plan.explain = bool(ext.get("explain"))
            plan.vanilla_messages = parsed
        return _seed_sampling(plan)

    def completion(self, body) -> Plan:
        body = self._common(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if prompt is None:
            raise bad("prompt is required", "prompt", "missing_required_parameter")
        if not isinstance(prompt, str):
            raise bad("prompt must be one string (batches and token arrays are not supported)", "prompt",
                      "invalid_type")
        logprobs = _int(body, "logprobs", 0, 5)
        max_tokens = _int(body, "max_tokens", 1)
        plan = self._plan("completion", body, max_tokens, logprobs is not None, logprobs or 0)
        ext = self._extension(body)
        document, system_text, question = self._find_document([{"role": "user", "content": prompt}])
        if ext.get("context") is not None:
            if document is not None:
                raise bad("give the document either in oprm.context or in a <document> block, not both", "oprm.context")
            document, question, plan.document_from = ext["context"], prompt, "extension"
        elif document is not None:
            plan.document_from = "message"
        if plan.oprm:
            self._oprm_call(plan, ext, document, question, None)
        else:
            self._vanilla_extension(ext)
            self._generation_extension(ext, plan.engine_kwargs)
            plan.explain = bool(ext.get("explain"))
            if not prompt:
                raise bad("prompt is empty", "prompt")
            plan.vanilla_prompt = prompt
        return _seed_sampling(plan)

    # --- pieces ---------------------------------------------------------------------------------------------------
    def _common(self, body) -> dict:
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object", None, "invalid_type")
        model = body.get("model")
        if model is None:
            raise bad("model is required", "model", "missing_required_parameter")
        if not isinstance(model, str) or model not in self.model_names:
            raise APIError(404, f"The model {model!r} does not exist; this server serves {self.model_names[0]!r}",
                           param="model", code="model_not_found")
        n = body.get("n")
        if n is not None and n != 1:
            if not _is_int(n):
                raise bad(f"n must be an integer, got {n!r}", "n", "invalid_type")
            raise bad("n must be 1: one answer per request (send several requests for several answers)", "n",
                      "unsupported_value")
        for name, neutral in NEUTRAL_FIELDS.items():
            value = body.get(name)
            empty = value in ([], {}, "") or (name == "tool_choice" and value in ("none", "auto")
                                               and not body.get("tools"))
            if value is not None and value != neutral and not empty:
                raise bad(f"{name} is not supported by this server", name, "unsupported_parameter")
        fmt = body.get("response_format")
        if fmt is not None and fmt != {"type": "text"}:
            raise bad("only response_format {\"type\": \"text\"} is supported", "response_format", "unsupported_value")
        return body

    def _plan(self, kind: str, body: dict, max_tokens: int | None, logprobs: bool, top: int) -> Plan:
        stream = _bool(body, "stream")
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not stream:
                raise bad("stream_options needs stream: true", "stream_options")
            if not isinstance(options, dict):
                raise bad("stream_options must be an object", "stream_options", "invalid_type")
            include_usage = _bool(options, "include_usage")
        if stream and logprobs:
            raise bad("logprobs are returned without streaming only", "logprobs", "unsupported_value")
        generation = dict(self.default_generation)
        if max_tokens is not None:
            generation["max_new_tokens"] = max_tokens
        temperature = _number(body, "temperature", 0.0, 2.0)
        top_p = _number(body, "top_p", 0.0, 1.0, low_open=True)
        if temperature is not None:  # 0 (or nothing, as `oprm ask`) is greedy; above 0 samples
            generation["do_sample"] = temperature > 0
            if temperature > 0:
                generation["temperature"] = temperature
        if top_p is not None:
            generation["top_p"] = top_p
        stop = _stop(body) or list(generation.get("stop_strings") or [])  # the request's, else the server's
        if stop:
            generation["stop_strings"] = stop
        seed = _int(body, "seed")
        kwargs: dict[str, Any] = dict(generation)
        if seed is not None:
            kwargs["seed"] = seed
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return Plan(kind, body["model"], kwargs, stream=stream, include_usage=include_usage, stop=stop,
                    max_new_tokens=int(generation.get("max_new_tokens") or 64), logprobs=logprobs, top_logprobs=top,
                    id=prefix + uuid.uuid4().hex[:24], created=int(time.time()))

    def _extension(self, body: dict) -> dict:
        ext = body.get("oprm")
        if ext is None:
            return {}
        if not isinstance(ext, dict):
            raise bad("oprm must be an object", "oprm", "invalid_type")
        allowed = set(OPRMConfig.names()) | set(EXTENSION_PROMPT_KEYS) | set(EXTENSION_GENERATION_KEYS) \
            | set(EXTENSION_OTHER_KEYS)
        unknown = sorted(set(ext) - allowed)
        if unknown:
            raise bad(f"unknown oprm option(s): {', '.join(unknown)}", f"oprm.{unknown[0]}", "unknown_parameter")
        for key in EXTENSION_PROMPT_KEYS:
            if ext.get(key) is not None and not isinstance(ext[key], str):
                raise bad(f"oprm.{key} must be a string", f"oprm.{key}", "invalid_type")
        if ext.get("context") is not None and not ext["context"].strip():
            raise bad("oprm.context is empty", "oprm.context")
        return ext

    def _vanilla_extension(self, ext: dict) -> None:
        """Without a document the request is plain chat: OPRM options would silently do nothing, so they are refused."""
        needs_document = sorted(k for k in ext if k in set(OPRMConfig.names()) | set(EXTENSION_PROMPT_KEYS))
        if needs_document:
            raise bad(f"oprm.{needs_document[0]} needs a document: put it in oprm.context or a <document> block",
                      f"oprm.{needs_document[0]}", "missing_document")

    @staticmethod
    def _generation_extension(ext: dict, kwargs: dict) -> dict:
        if ext.get("top_k") is not None:
            if not _is_int(ext["top_k"]) or ext["top_k"] < 1:
                raise bad("oprm.top_k must be a positive integer", "oprm.top_k", "invalid_type")
            kwargs["top_k"] = ext["top_k"]
        if ext.get("repetition_penalty") is not None:
            if not _is_number(ext["repetition_penalty"]) or ext["repetition_penalty"] <= 0:
                raise bad("oprm.repetition_penalty must be a positive number", "oprm.repetition_penalty",
                          "invalid_type")
            kwargs["repetition_penalty"] = float(ext["repetition_penalty"])
        for key in ("do_sample", "ignore_eos", "explain"):
            if ext.get(key) is not None and not isinstance(ext[key], bool):
                raise bad(f"oprm.{key} must be true or false", f"oprm.{key}", "invalid_type")
        if ext.get("do_sample") is not None:
            kwargs["do_sample"] = ext["do_sample"]
        if ext.get("ignore_eos"):
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

    def _oprm_call(self, plan: Plan, ext: dict, document: str, question: str, system_text: str | None) -> None:
        template = ext.get("template")
        if template is not None and template.count("{context}") != 1:
            raise bad("oprm.template must contain {context} exactly once", "oprm.template")
        if not question.strip() and (template is None or "{input}" in template):
            raise bad("the question (the last user message) is empty", "messages")
        overrides = {k: v for k, v in ext.items() if k in OPRMConfig.names()}
        for name, value in overrides.items():
            _check_config_type(name, value)
        if system_text and "system_prompt" not in overrides:
            overrides["system_prompt"] = system_text
        if "seed" in plan.engine_kwargs:
            overrides.setdefault("seed", plan.engine_kwargs.pop("seed"))
        try:
            config = self.config.replace(**overrides)
        except OPRMUsageError as e:
            raise bad(str(e), "oprm") from None
        plan.decode = config.decode
        if config.selection == "oracle" and not ext.get("gold_text"):
            raise bad("selection oracle needs oprm.gold_text (the text the right chunk holds)", "oprm.gold_text")
        kwargs = plan.engine_kwargs
        kwargs.update(overrides)
        self._generation_extension(ext, kwargs)
        kwargs.update(context=document, query=question if question.strip() else None, template=template,
                      answer_prefix=ext.get("answer_prefix"), gold_text=ext.get("gold_text"))
        plan.explain = bool(ext.get("explain"))


def _seed_sampling(plan: Plan) -> Plan:
    """A sampled answer without a ``seed`` gets a fresh one (OpenAI: repeated requests give different samples);
    with a seed it is reproducible."""
    if plan.engine_kwargs.get("do_sample") and "seed" not in plan.engine_kwargs:
        plan.engine_kwargs["seed"] = secrets.randbits(31)
    return plan


# --- responses ----------------------------------------------------------------------------------------------------
def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """OpenAI semantics: the text ends before the first stop sequence, which is not returned."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish_reason(result, plan: Plan, stopped: bool, eos: set[int]) -> str:
    if stopped:
        return "stop"
    for answer in result.answers:
        tokens = answer.token_ids
        if answer.chunk is not None or not plan.oprm:  # a decoded answer (not the all-IDK word)
            if len(tokens) >= plan.max_new_tokens and not (tokens and tokens[-1] in eos):
                return "length"
    return "stop"


def usage(result) -> dict:
    prompt = int(sum(result.prompt_tokens.values()))
    completion = len(result.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def oprm_details(result, plan: Plan) -> dict:
    """The OPRM view of an answer: chosen chunk spans, per-chunk entropy and IDK flag, counts and timings."""
    chunks = [{"index": c.index, "token_start": c.token_start, "token_end": c.token_end, "char_start": c.char_start,
               "char_end": c.char_end, "entropy": _finite(c.entropy), "is_idk": bool(c.is_idk),
               "score": _finite(c.score), "top_tokens": [[t, s, _finite(p)] for t, s, p in c.top_tokens]}
              for c in result.chunks]
    details = {"mode": result.mode, "document_from": plan.document_from, "chosen": list(result.chosen),
               "chosen_spans": result.chosen_spans, "chunks": chunks, "selection": result.selection,
               "chunk_size": result.chunk_size, "idk_fallback_used": bool(result.idk_fallback_used),
               "prompt_tokens": dict(result.prompt_tokens), "tokens_processed": int(result.tokens_processed),
               "timings": {k: round(float(v), 6) for k, v in result.timings.items()}}
    document = getattr(result, "document", None)  # the engine's document-state cache, when it reports one
    if document is not None:
        details["document"] = document.to_dict() if hasattr(document, "to_dict") else document
    return details


def _finite(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def token_logprobs(result, tokenizer, top: int, eos: set[int]) -> list[dict] | None:
    """Per generated token: its log-probability under the model's (unprocessed) next-token distribution and the
    ``top`` best alternatives. Only for a single decoded answer (``result.logits`` holds the first answer's)."""
    if result.logits is None or len(result.answers) != 1:
        return None
    import torch

    tokens = result.answers[0].token_ids
    out = []
    for token, logits in zip(tokens, result.logits):
        if token in eos:
            break
        logp = torch.log_softmax(logits.float(), -1)
        entry = {"token_id": token, "token": tokenizer.decode([token]), "logprob": float(logp[token])}
        if top:
            values, ids = logp.topk(top)
            entry["top"] = [(int(i), tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]
        out.append(entry)
    return out


def chat_logprobs(entries: list[dict] | None) -> dict | None:
    if entries is None:
        return None
    return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode()),
                         "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())}
                                          for _, s, v in e.get("top", [])]} for e in entries], "refusal": None}


def completion_logprobs(entries: list[dict] | None) -> dict | None:
    if entries is None:
        return None
    offsets, position = [], 0
    for e in entries:
        offsets.append(position)
        position += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{s: v for _, s, v in e.get("top", [])} for e in entries] if entries and "top" in entries[0]
            else None, "text_offset": offsets}


def chat_response(plan: Plan, text: str, reason: str, result, logprobs: dict | None) -> dict:
    body = {"id": plan.id, "object": "chat.completion", "created": plan.created, "model": plan.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": logprobs, "finish_reason": reason}],
            "usage": usage(result), "system_fingerprint": None}
    return body


def completion_response(plan: Plan, text: str, reason: str, result, logprobs: dict | None) -> dict:
    return {"id": plan.id, "object": "text_completion", "created": plan.created, "model": plan.model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}],
            "usage": usage(result), "system_fingerprint": None}


def chunk_event(plan: Plan, delta_text: str | None, *, role: bool = False, reason: str | None = None) -> dict:
    """One streamed chunk (``chat.completion.chunk`` or ``text_completion``)."""
    if plan.kind == "chat":
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
        if delta_text is not None:
            delta["content"] = delta_text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    return {"id": plan.id, "object": obj, "created": plan.created, "model": plan.model, "choices": [choice]}


def usage_event(plan: Plan, result) -> dict:
    obj = "chat.completion.chunk" if plan.kind == "chat" else "text_completion"
    return {"id": plan.id, "object": obj, "created": plan.created, "model": plan.model, "choices": [],
            "usage": usage(result)}

