"""The contract between the HTTP side and the engine worker: a checked request (:class:`Plan`) and the errors.

Nothing here touches the network or the model: a request is checked (``protocol.py``, ``parser.py``) and turned into a
:class:`Plan` (what to ask the engine and how to shape the answer); the worker runs the plan; ``responses.py`` shapes
the result. Every rejection is an :class:`APIError` carrying an OpenAI-style error object.

How the long context travels (see the README's "Serving" section):

* the request extension ``"oprm": {"context": "...", <engine options>}`` (``extra_body`` in the openai client): the
  question is the last user message;
* for clients that cannot send extra fields, a ``<document>...</document>`` block inside the last user message or a
  system message: the block's text is the context and the rest of the user message is the question;
* neither: plain chat on the model (the whole conversation through its chat template, one pass: vanilla).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DOC_OPEN, DOC_CLOSE = "<document>", "</document>"
MAX_STOP = 4  # OpenAI's limit on stop sequences
# request-extension keys besides the OPRMConfig fields
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


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (``oprm serve --max-tokens-limit`` ...)."""

    max_tokens: int = 4096  # tokens decoded per answer (ignore_eos decodes exactly this many at most)
    max_document_bytes: int = 8 << 20  # UTF-8 bytes of the document (~2M tokens of English)
    max_template_chars: int = 16384  # characters of oprm.template and oprm.answer_prefix each


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
