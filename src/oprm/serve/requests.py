"""OpenAI request bodies -> a :class:`~oprm.serve.plan.Plan` (what to ask the engine, how to shape the answer)."""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
import uuid
from typing import Any

from ..config import OPRMConfig
from ..errors import OPRMUsageError

from .plan import (DOC_CLOSE, DOC_OPEN, EXTENSION_GENERATION_KEYS, EXTENSION_OTHER_KEYS, EXTENSION_PROMPT_KEYS, MAX_STOP,
                   NEUTRAL_FIELDS, APIError, Plan, bad)


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
        server_only = sorted(f.name for f in dataclasses.fields(OPRMConfig)
                             if not f.metadata["request"] and f.name in ext)
        if server_only:  # a server path or server-wide state: the command line's alone
            raise bad(f"oprm.{server_only[0]} is set by the server's command line, not by a request",
                      f"oprm.{server_only[0]}", "server_option")
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
