"""``OPRMConfig``: every engine option in one place — its default, its check and its help text.

The engine, ``oprm ask``, ``oprm eval``, ``oprm bench``, ``oprm demo`` and the server all build their options from
this dataclass, the way transformers builds generation options from ``GenerationConfig``:

    config = OPRMConfig(chunk_size=1000)                 # checked on construction
    config = config.replace(selection="query_likelihood")  # per-call overrides give a new, checked config
    add_config_arguments(parser)                          # the CLI flags, generated from the fields
    config = config_from_args(args)

``OPRMConfig.paper()`` is the paper's own configuration (token chunks, first-token entropy, the IDK filter), kept by
name so results can be reproduced and compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .chunking import CHUNKINGS
from .errors import OPRMUsageError

IDK_WORD = "Error"  # the paper's "I don't know" answer, as in the official OPRM prompts
MODES = ("oprm", "vanilla", "truncate")
# entropy / query_likelihood: the paper's; p_idk, lookahead, support: oprm's (benchmarks/selection_study.md)
SELECTIONS = ("support", "lookahead", "p_idk", "entropy", "query_likelihood", "max_prob", "random", "oracle")
IDK_FALLBACKS = ("answer", "min_entropy")
DECODES = ("one", "all", "top_k")


def option(default, help: str, *, choices: tuple | None = None, minimum: int | None = None, flag: str | None = None,
           negate: str | None = None, request: bool = True):
    """A config field with its CLI help, allowed values and lower bound.

    ``negate`` names a ``--no-...`` flag that sets the field to ``None`` (IDK) or ``False`` (booleans).
    ``request=False``: a server path or server-wide state, set by ``oprm serve``'s command line only (never a request).
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "flag": flag, "negate": negate, "request": request}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class OPRMConfig:
    mode: str = option("oprm", "oprm (chunks), vanilla (the whole prompt in one pass) or truncate (LongBench's "
                               "middle truncation to --max-input-tokens)", choices=MODES)
    chunk_size: int = option(2000, "tokens per chunk (L)", minimum=1)
    overlap: int = option(0, "tokens shared by neighbouring chunks", minimum=0)
    chunking: str = option("sentences", "where chunks start and end: tokens (the paper's plain windows), sentences or "
                                        "lines (boundary-safe: every sentence/line shorter than a chunk lies whole in "
                                        "one; pre-tokenized input falls back to tokens)", choices=CHUNKINGS)
    selection: str = option("support", "how the chunk to decode from is chosen: support (a look-ahead answer "
                                       "found in its chunk next to the question's words, then the look-ahead's "
                                       "confidence), lookahead (that confidence alone), p_idk (lowest first-token "
                                       "P(IDK)), entropy (the paper's lowest first-token entropy), query_likelihood "
                                       "(the paper's alternative), max_prob, random, oracle", choices=SELECTIONS)
    lookahead_tokens: int = option(24, "support/lookahead selection: tokens decoded from every chunk that passes the "
                                       "IDK filter (an IDK word anywhere in them drops the chunk)", minimum=1)
    idk: str | None = option(IDK_WORD, 'the IDK word of the prompt and of the filter (default "Error")',
                             negate="no-idk")
    idk_fallback: str = option("answer", "when every chunk says IDK: answer the IDK word, or decode the "
                                         "lowest-entropy chunk", choices=IDK_FALLBACKS)
    decode: str = option("one", "decode the chosen chunk, every chunk (summaries; joined in order) or the "
                                "--num-decode best", choices=DECODES)
    num_decode: int = option(1, "decode=top_k: how many chunks", minimum=1)
    max_input_tokens: int | None = option(None, "truncate mode: the token budget of the prompt", minimum=1)
    max_batch_tokens: int | None = option(None, "tokens per prefill micro-batch (default 8192 on CPU, 32768 on GPU)",
                                          minimum=1, request=False)
    shared_prefix: bool = option(True, "prefill the prefix P once and continue every chunk from its state (where "
                                       "the architecture continues a state exactly)", negate="no-shared-prefix")
    chat: bool = option(True, "wrap the prompt in the tokenizer's chat template", negate="no-chat")
    system_prompt: str | None = option(None, "a system message for the chat template")
    document_cache_bytes: int = option(2**30, "bytes of encoded documents kept in memory, so a second question on "
                                              "the same context skips its prefill (0: off)", minimum=0,
                                       request=False)
    cache_dir: str | None = option(None, "folder where encoded documents are also written and found by later "
                                         "processes (default: $OPRM_CACHE_DIR, else none)", request=False)
    top_k_tokens: int = option(5, "first-token alternatives reported per chunk", minimum=1)
    seed: int = option(0, "seed of random selection and of sampling")

    def __post_init__(self):
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise OPRMUsageError(f"unknown {f.name} {value!r}; choose one of: {', '.join(meta['choices'])}")
            if meta["minimum"] is not None and value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise OPRMUsageError(f"{f.name} must be an integer, got {value!r}")
                if value < meta["minimum"]:
                    what = "positive" if meta["minimum"] == 1 else f"at least {meta['minimum']}"
                    raise OPRMUsageError(f"{f.name} must be {what}, got {value}")
        if self.overlap and self.chunking != "tokens":
            raise OPRMUsageError(f"overlap applies to token chunking; {self.chunking} chunking places its own "
                                 "overlap (use chunking='tokens' or overlap=0)")
        if self.overlap >= self.chunk_size:
            raise OPRMUsageError(f"overlap must be smaller than the chunk size, got {self.overlap} with chunk size "
                                 f"{self.chunk_size}")
        if self.idk is not None and not (isinstance(self.idk, str) and self.idk.strip()):
            raise OPRMUsageError("the IDK word must be a non-empty text (or None for no IDK filter)")

    @classmethod
    def paper(cls, **overrides) -> "OPRMConfig":
        """The paper's configuration: token chunks of 2000, first-token entropy, the IDK filter with "Error"."""
        return cls(chunking="tokens", chunk_size=2000, overlap=0, selection="entropy", idk=IDK_WORD).replace(**overrides)

    def replace(self, **overrides) -> "OPRMConfig":
        """A new config with ``overrides`` applied and checked; unknown names are an error."""
        unknown = set(overrides) - set(self.names())
        if unknown:
            raise OPRMUsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_options(options: dict) -> tuple[dict, dict]:
    """(OPRMConfig fields, the rest) of keyword options: the rest are generation options."""
    names = set(OPRMConfig.names())
    return ({k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names})


# --- the command line ---------------------------------------------------------------------------------------------
def _flag(f) -> str:
    return "--" + (f.metadata["flag"] or f.name.replace("_", "-"))


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = (),
                         grid: tuple[str, ...] = (), defaults: dict | None = None,
                         later: dict[str, str] | None = None) -> None:
    """Add one flag per OPRMConfig field (minus ``exclude``). ``grid`` fields take comma-separated lists (an
    ablation grid in ``oprm eval``); ``defaults`` replaces the dataclass defaults shown and used; ``later`` maps
    fields whose default the command decides after parsing (the flag defaults to None) to a description of it."""
    base = OPRMConfig(**(defaults or {}))
    later = later or {}
    group = parser.add_argument_group("OPRM options")
    for f in fields(OPRMConfig):
        if f.name in exclude:
            continue
        meta, default = f.metadata, getattr(base, f.name)
        # 0 == False: test the type, or "(default 0)" of --overlap would be hidden
        help_text = meta["help"] + ("" if default is None or isinstance(default, bool) else f" (default {default})")
        if f.name in later:
            default, help_text = None, f"{meta['help']} (default: {later[f.name]})"
        if f.name in grid:
            choices = f" from {', '.join(meta['choices'])}" if meta["choices"] else ""
            group.add_argument(_flag(f), dest=f.name, default=None,
                               help=f"{meta['help']}; comma-separated for an ablation grid{choices} (default {default})")
        elif isinstance(default, bool):
            group.add_argument("--" + meta["negate"], dest=f.name, action="store_false", default=default,
                               help=f"do not {help_text}")
        else:
            kind = int if meta["minimum"] is not None or isinstance(default, int) else str
            if meta["negate"]:
                exclusive = group.add_mutually_exclusive_group()
                exclusive.add_argument(_flag(f), dest=f.name, type=kind, default=default, help=help_text)
                exclusive.add_argument("--" + meta["negate"], dest=f.name, action="store_const", const=None,
                                       help=f"no {f.name.replace('_', ' ')}")
            else:
                group.add_argument(_flag(f), dest=f.name, type=kind, default=default, choices=meta["choices"],
                                   help=help_text)


def config_from_args(args: argparse.Namespace, base: OPRMConfig | None = None, grid: tuple[str, ...] = ()) -> OPRMConfig:
    """The OPRMConfig the flags describe; ``grid`` fields (lists, see ``grid_values``) keep ``base``'s values."""
    values = {name: getattr(args, name) for name in OPRMConfig.names() if hasattr(args, name) and name not in grid}
    return (base or OPRMConfig()).replace(**values)


def grid_values(args: argparse.Namespace, name: str) -> list:
    """The values of a grid flag (``--chunk-size 1000,2000``), each checked as the field's type; [] if not given."""
    raw = getattr(args, name, None)
    if raw in (None, ""):
        return []
    f = next(f for f in fields(OPRMConfig) if f.name == name)
    kind = int if f.metadata["minimum"] is not None else str
    values = []
    for item in str(raw).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(kind(item))
        except ValueError:
            raise OPRMUsageError(f"{_flag(f)} takes comma-separated integers, got {item!r}") from None
        OPRMConfig().replace(**{name: values[-1]})  # checked like a single value
    return values


# --- generation options (transformers' GenerationConfig names) ----------------------------------------------------
GENERATION_FLAGS = (
    ("max_new_tokens", int, 64, "tokens to generate at most"),
    ("do_sample", bool, None, "sample instead of greedy decoding"),
    ("temperature", float, None, "sampling temperature"),
    ("top_p", float, None, "nucleus sampling"),
    ("top_k", int, None, "top-k sampling"),
    ("repetition_penalty", float, None, "transformers' repetition penalty"),
)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# what each generation option accepts (transformers would fail later, deep in decoding, and blame the model)
GENERATION_LIMITS = {
    "max_new_tokens": (lambda v: _integer(v) and v > 0, "a positive integer"),
    "temperature": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: greedy)"),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: off)"),
    "repetition_penalty": (lambda v: _number(v) and v > 0, "a positive number"),
}


def check_generation(options: dict) -> None:
    """One usage error for the first generation option out of range (``None`` values are left to the defaults)."""
    for name, (accepts, what) in GENERATION_LIMITS.items():
        value = options.get(name)
        if value is not None and not accepts(value):
            raise OPRMUsageError(f"{name} must be {what}, got {value!r}")
    if options.get("do_sample") and options.get("temperature") == 0:
        raise OPRMUsageError("temperature 0 is greedy decoding: give a positive temperature to sample")


GENERATION_DEFAULTS = {name: default for name, _, default, _ in GENERATION_FLAGS if default is not None}
_OWN = object()  # add_generation_arguments: the command keeps GENERATION_DEFAULTS' max_new_tokens


def add_generation_arguments(parser: argparse.ArgumentParser, *, max_new_tokens=_OWN) -> None:
    """The generation flags; a command with another ``max_new_tokens`` default (None: the task's budget) says so."""
    if max_new_tokens is _OWN:
        max_new_tokens = GENERATION_DEFAULTS["max_new_tokens"]
    group = parser.add_argument_group("generation options (GenerationConfig)")
    for name, kind, default, help_text in GENERATION_FLAGS:
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            default = max_new_tokens if name == "max_new_tokens" else default
            group.add_argument(flag, type=kind, default=default, help=help_text)
    group.add_argument("--stop", dest="stop_strings", action="append", default=None, help="stop string (repeatable)")


def generation_from_args(args: argparse.Namespace) -> dict:
    """The generation options the flags set (unset ones are left to the model's defaults)."""
    names = [name for name, *_ in GENERATION_FLAGS] + ["stop_strings"]
    out = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    check_generation(out)
    return out
