"""The OpenAI request bodies the server takes, as pydantic models, and the one place validation failures become errors.

Bodies are parsed and checked in one step by pydantic's JSON parser (``model_validate_json``): malformed JSON,
5000-digit numbers, NaN/Infinity, lone UTF-16 surrogates and over-deep nesting are all validation errors, so every
bad body ends as a 400 with an OpenAI error object (:func:`api_error`), never in the engine.

The ``oprm`` extension is generated from :class:`~oprm.config.OPRMConfig`: each field a request may set (its metadata
``request=True``) becomes a field of :class:`OprmExtension` with the same type, choices and lower bound, so the two
cannot drift. The fields a request may not set (server paths, server-wide state) are refused by name.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, ValidationInfo,
                      create_model, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ..config import OPRMConfig
from .plan import MAX_STOP, NEUTRAL_FIELDS, APIError, bad

# server-wide knobs of `oprm serve` that are not OPRMConfig fields: a request naming one is told it cannot
SERVER_FLAGS = {"model": "--model", "device": "--device", "dtype": "--dtype", "threads": "--threads",
                "max_tokens_limit": "--max-tokens-limit", "max_document_bytes": "--max-document-bytes",
                "max_template_chars": "--max-template-chars", "api_key": "--api-key",
                "allowed_hosts": "--allowed-hosts"}


def server_only_options() -> dict[str, str]:
    """``oprm`` keys a request may not set -> the command-line flag that sets them."""
    out = {f.name: "--" + (f.metadata["flag"] or f.name.replace("_", "-"))
           for f in dataclasses.fields(OPRMConfig) if not f.metadata["request"]}
    return {**out, **SERVER_FLAGS}


def request_config_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(OPRMConfig) if f.metadata["request"]]


INT64 = (-(2**63), 2**63 - 1)
_BASE_TYPES = {"int": StrictInt, "str": StrictStr, "bool": StrictBool}


def _extension_field(f: dataclasses.Field) -> tuple:
    """(type, Field) of one OPRMConfig field: its type, its choices, its lower bound; absent = the server's value."""
    annotation = str(f.type)
    optional = "None" in annotation
    base = annotation.replace("| None", "").replace("None |", "").strip()
    if base not in _BASE_TYPES:
        raise TypeError(f"OPRMConfig.{f.name}: type {annotation} has no request model (add it to _BASE_TYPES)")
    kind = Literal[tuple(f.metadata["choices"])] if f.metadata["choices"] else _BASE_TYPES[base]
    constraints = {"ge": f.metadata["minimum"]} if f.metadata["minimum"] is not None else {}
    if base == "int":  # within a 64-bit integer: torch's seeds and sizes overflow past it (a 500 before)
        constraints = {"ge": INT64[0], **constraints, "le": INT64[1]}
    return (Optional[kind] if optional else kind), Field(None, description=f.metadata["help"], **constraints)


class _ExtensionBase(BaseModel):
    """Request-only keys of the ``oprm`` extension (the OPRMConfig fields are added by :func:`create_model`)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    context: Optional[StrictStr] = Field(None, description="the long document")
    template: Optional[StrictStr] = Field(None, description="prompt template with {context} once and {input}")
    answer_prefix: Optional[StrictStr] = None
    gold_text: Optional[StrictStr] = None
    top_k: Optional[StrictInt] = Field(None, ge=1, le=INT64[1])
    repetition_penalty: Optional[float] = Field(None, gt=0)
    do_sample: Optional[StrictBool] = None
    ignore_eos: Optional[StrictBool] = None
    explain: Optional[StrictBool] = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_server_options(cls, data):
        if isinstance(data, dict):
            refused = server_only_options()
            for key in data:
                if key in refused:  # an APIError is not wrapped by pydantic: it reaches the handler as is
                    raise bad(f"oprm.{key} is set by the server's command line ({refused[key]}), not by a request",
                              f"oprm.{key}", "server_option")
        return data

    def config_overrides(self) -> dict:
        """The OPRMConfig fields this request sets (explicitly, null included)."""
        names = set(OPRMConfig.names())
        return {k: getattr(self, k) for k in self.model_fields_set if k in names}


OprmExtension = create_model("OprmExtension", __base__=_ExtensionBase,
                             **{f.name: _extension_field(f) for f in request_config_fields()})


def _text(content, what: str = "message content") -> str:
    """A message's text: a string, or a list of text parts (other part types are not supported)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise PydanticCustomError("unsupported_content",
                                          'only text content parts ({"type": "text", "text": ...}) are supported')
            out.append(part["text"])
        return "".join(out)
    raise PydanticCustomError("invalid_type", f"{what} must be a string or a list of text parts, got "
                                              f"{type(content).__name__}")


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Any = Field(None, validate_default=True)  # a string or text parts; checked below into a string

    @field_validator("content")
    @classmethod
    def _content_text(cls, content, info: ValidationInfo) -> str:
        return "" if content is None and info.data.get("role") == "assistant" else _text(content)

    @field_validator("role")
    @classmethod
    def _roles(cls, role: str) -> str:
        return "system" if role == "developer" else role


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: StrictBool = False


class _Request(BaseModel):
    """Fields shared by both endpoints. Unknown top-level fields are ignored, as OpenAI clients send many."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

    model: StrictStr
    n: Optional[StrictInt] = None
    stream: Optional[StrictBool] = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    stop: Any = None
    seed: Optional[StrictInt] = Field(None, ge=INT64[0], le=INT64[1])
    max_tokens: Optional[StrictInt] = Field(None, ge=1)
    response_format: Optional[dict] = None
    oprm: Optional[OprmExtension] = None  # type: ignore[valid-type]
    # OpenAI fields accepted only at their neutral value (checked by the parser)
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    best_of: Any = None
    echo: Any = None
    suffix: Any = None
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop) -> list[str]:
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise PydanticCustomError("invalid_type", "stop must be a non-empty string or a list of non-empty strings")
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop takes at most {MAX_STOP} sequences, got {len(stops)}")
        return list(dict.fromkeys(stops))

    def unsupported(self) -> str | None:
        """The first OpenAI field set to a value this server cannot honour."""
        for name, neutral in NEUTRAL_FIELDS.items():
            value = getattr(self, name)
            empty = value in ([], {}, "") or (name == "tool_choice" and value in ("none", "auto") and not self.tools)
            if value is not None and value != neutral and not empty:
                return name
        return None


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=1)
    logprobs: Optional[StrictBool] = False
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=20)


class CompletionRequest(_Request):
    prompt: Any
    logprobs: Optional[StrictInt] = Field(None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt) -> str:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise PydanticCustomError("invalid_type", "prompt must be one string (batches and token arrays are not "
                                                      "supported)")
        return prompt


# --- validation failures -> OpenAI error objects -------------------------------------------------------------------
_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter",
          "json_invalid": "invalid_json", "json_type": "invalid_json", "model_type": "invalid_type",
          "model_attributes_type": "invalid_type", "literal_error": "invalid_value"}


_OWN_CODES = ("invalid_type", "invalid_value", "unsupported_content")


def _param(loc: tuple) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or None


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def api_error(error: ValidationError) -> APIError:
    """The first failure of a request, as a 400 naming its parameter and with a non-null code."""
    first = error.errors(include_url=False)[0]
    kind, param = first["type"], _param(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if kind.startswith("json_"):
        return bad(f"the request body is not valid JSON: {message}", None, "invalid_json")
    if kind == "missing":
        return bad(f"{param} is required", param, _CODES[kind])
    if kind == "extra_forbidden":
        return bad(f"unknown option {param}", param, _CODES[kind])
    if kind in _OWN_CODES:  # raised by our validators with the code as its type; the message says it all
        return bad(f"{param}: {message}" if param else message, param, kind)
    code = _CODES.get(kind) or ("invalid_type" if kind.endswith("_type") or kind.endswith("_parsing")
                                else "invalid_value")
    got = f", got {_shown(first['input'])}" if "input" in first and kind != "value_error" else ""
    return bad(f"{param}: {message}{got}" if param else message + got, param, code)


def parse(model: type[BaseModel], body) -> BaseModel:
    """``body`` (JSON bytes/str, or an already-decoded object from a test) as ``model``, or an :class:`APIError`."""
    if not isinstance(body, (bytes, bytearray, str)):
        body = json.dumps(body)
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise api_error(e) from None
