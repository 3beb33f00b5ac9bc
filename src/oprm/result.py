"""What ``OPRM.generate`` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .decoding import Answer
from .prefill import RunStats
from .prompts import PromptParts
from .selection import ChunkRecord


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
    chunking: str | None = None  # the chunking used (tokens when the text's token offsets were unknown)
    extra_tokens: int | None = None  # context tokens prefilled beyond the context itself (chunks x L - N)
    prompt_tokens: dict = field(default_factory=dict)  # |P|, |C|, |S|
    tokens_processed: int = 0
    lookahead_tokens: int = 0  # of which: the selection's look-ahead decoding
    timings: dict = field(default_factory=dict)  # seconds: prefill, selection, decode, total
    logits: list[torch.Tensor] | None = None  # raw logits of each generated token (output_logits=True, one answer)
    document: dict | None = None  # encoded-document reuse: {"source": "document"|"cache", "cache": "hit"|...}
    dtype: str | None = None  # the weights' dtype the answer was computed in (what --dtype auto chose)

    @property
    def chosen_spans(self) -> list[dict]:
        return [{"chunk": c.index, "token_start": c.token_start, "token_end": c.token_end,
                 "char_start": c.char_start, "char_end": c.char_end} for c in self.chunks if c.index in self.chosen]

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "logits"}
        d["chosen_spans"] = self.chosen_spans
        return d


def make_result(mode: str, prompt: PromptParts, stats: RunStats, logits: list | None, answers: list[Answer],
                chosen: list[int], records: list[ChunkRecord], **extra) -> OPRMResult:
    return OPRMResult("\n".join(a.text for a in answers), [t for a in answers for t in a.token_ids], mode, chosen,
                      records, answers, prompt_tokens={"prefix": len(prompt.prefix_ids),
                                                       "context": len(prompt.context_ids),
                                                       "suffix": len(prompt.suffix_ids)},
                      tokens_processed=stats.tokens_processed, lookahead_tokens=stats.lookahead_tokens,
                      timings=stats.timings, logits=logits, **extra)
