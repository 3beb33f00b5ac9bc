"""The run grid of ``oprm eval``: which modes, chunk sizes, selections and IDK settings run, and how they are named.

A config's name is its results folder (``oprm_cs2000_entropy_idk``, ``vanilla``, ``truncate_cs2000``, ...), so runs
resume into the folder of the same configuration. Engine options that change predictions but are not part of the grid
(``--overlap``, ``--idk-fallback``, ``--decode``, ...) add a suffix to the OPRM names when they differ from the paper's
configuration, so results of different settings never share a prediction file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from oprm.config import OPRMConfig
from oprm.errors import OPRMUsageError
from oprm.selection import selector_class

__all__ = ["MODES", "CHAT_CHOICES", "DEFAULT_CHUNK_SIZE", "RunConfig", "build_configs", "options_tag"]

MODES = ("oprm", "vanilla", "truncate", "bm25", "oracle")
CHAT_CHOICES = ("auto", "on", "off", "longbench")  # auto: the engine's config; longbench: pred.py's per-dataset rule
DEFAULT_CHUNK_SIZE = OPRMConfig.paper().chunk_size


@dataclass(frozen=True)
class RunConfig:
    mode: str
    chunk_size: int | None = None
    selection: str | None = None
    idk: bool = True
    tag: str = ""  # options_tag() of the engine's config: suffix of the chunked modes' names

    @property
    def name(self) -> str:
        if self.mode == "vanilla":
            return "vanilla"
        suffix = f"_{self.tag}" if self.tag and self.mode in ("oprm", "oracle") else ""
        if self.mode == "oprm":
            return f"oprm_cs{self.chunk_size}_{self.selection or 'entropy'}_{'idk' if self.idk else 'noidk'}{suffix}"
        return f"{self.mode}_cs{self.chunk_size}{suffix}"

    def to_dict(self) -> dict:
        out = {"name": self.name, "mode": self.mode, "chunk_size": self.chunk_size, "selection": self.selection,
               "idk": self.idk}
        if self.tag:
            out["options"] = self.tag
        return out


# options that change OPRM's predictions without being grid axes; shared_prefix, max_batch_tokens and
# top_k_tokens only change speed, memory or diagnostics (the engine is exact), so they do not rename a config
_TAGGED = {"overlap": "ov", "chunking": "chunking-", "idk_fallback": "fallback-", "decode": "decode-",
           "num_decode": "k", "lookahead_tokens": "la"}


def options_tag(config: OPRMConfig) -> str:
    """A short name for the prediction-changing options of ``config`` that differ from the paper's ("" if none)."""
    paper = OPRMConfig.paper()
    parts = [f"{short}{getattr(config, name)}" for name, short in _TAGGED.items()
             if getattr(config, name) != getattr(paper, name)
             and not (name == "num_decode" and config.decode != "top_k")
             and not (name == "lookahead_tokens" and not selector_class(config.selection).lookahead)]
    if config.system_prompt:
        parts.append("sys" + hashlib.sha1(config.system_prompt.encode()).hexdigest()[:8])
    return "_".join(parts)


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, int, bool)):
        return [x]
    return list(x)


def build_configs(modes: Sequence[str] | str, chunk_sizes: Sequence[int] | int | None = None,
                  selections: Sequence[str] | str | None = None, idk: bool | Sequence[bool] = True,
                  default_chunk_size: int = DEFAULT_CHUNK_SIZE, tag: str = "",
                  default_selection: str | None = None) -> list[RunConfig]:
    """The ablation grid: OPRM over chunk sizes x selections x IDK on/off; truncate/bm25/oracle per chunk size."""
    modes = [m.strip() for m in (modes.split(",") if isinstance(modes, str) else modes) if m and m.strip()]
    if not modes:
        raise OPRMUsageError("no modes given (e.g. --modes oprm,vanilla)")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise OPRMUsageError(f"unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    sizes = [int(c) for c in _as_list(chunk_sizes)] or [default_chunk_size]
    sels = _as_list(selections) or [default_selection]
    for size in sizes:  # the config's own checks and messages ("chunk_size must be positive, got 0")
        OPRMConfig(chunk_size=size)
    for sel in sels:
        if sel is not None:
            OPRMConfig(selection=sel)
    idks = [bool(i) for i in _as_list(idk)] or [True]
    out: list[RunConfig] = []
    for m in dict.fromkeys(modes):
        if m == "vanilla":
            out.append(RunConfig("vanilla"))
        elif m == "oprm":
            out += [RunConfig("oprm", c, s, i, tag) for c in sizes for s in sels for i in idks]
        else:
            out += [RunConfig(m, c, None, True, tag) for c in sizes]
    return list(dict.fromkeys(out))
