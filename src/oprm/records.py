"""What the speculative prefill learns about each chunk: its record (first-answer-token statistics, and what the
look-ahead selection adds), computed from the chunks' first-answer-token logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ChunkRecord:
    """What the speculative prefill learned about one chunk."""

    index: int
    token_start: int
    token_end: int
    char_start: int | None
    char_end: int | None
    # the first answer token's statistics; None where S never ran on the chunk (on an encoded document the support
    # search skips chunks whose support bound is below the support found: ``not_run``)
    entropy: float | None  # nats, of the first-answer-token distribution
    argmax: int | None
    max_prob: float | None
    is_idk: bool | None
    top_tokens: list[tuple[int, str | None, float]] = field(default_factory=list)  # (id, text, probability), best first
    query_logprob: float | None = None  # sum of log p(query tokens | P, C_i)
    score: float | None = None  # the selection criterion's value (higher is better)
    p_idk: float | None = None  # first-token probability of the IDK word's tokens
    lookahead: str | None = None  # look-ahead selection: the chunk's greedy answer (up to lookahead_tokens)
    lookahead_ids: list[int] | None = None  # its token ids (before any eos)
    lookahead_logprobs: list[float] | None = None  # the log-probability of each of its tokens (and of the eos)
    support: float | None = None  # support selection: the answer's extractive support in its chunk
    support_bound: float | None = None  # the most support any answer can get in the chunk (no look-ahead needed)


def first_token_stats(logits: torch.Tensor, top_k: int = 5):
    """Entropy (nats), argmax, max probability and top-k of each row of ``logits`` [B, V]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    top_p, top_i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return entropy, top_i[:, 0], top_p[:, 0], top_i, top_p


def query_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(target_t) given logits [B, T, V] that predict targets [T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1).sum(-1)


def not_run(chunk, support_bound: float | None) -> ChunkRecord:
    """The record of a chunk whose prompt never ran: no chunk the choice could take had so low a support bound."""
    return ChunkRecord(chunk.index, chunk.token_start, chunk.token_end, chunk.char_start, chunk.char_end, None, None,
                       None, None, support_bound=support_bound)


def chunk_records(chunks, first_logits: torch.Tensor, idk_ids: set[int], tokenizer=None, top_k: int = 5,
                  query_logprob: torch.Tensor | None = None) -> list[ChunkRecord]:
    """One record per chunk from its first-answer-token logits [B, V] (and query log-probabilities [B])."""
    entropy, argmax, max_prob, top_i, top_p = first_token_stats(first_logits, top_k)
    ids = sorted(idk_ids)
    p_idk = torch.softmax(first_logits.float(), -1)[:, ids].sum(-1) if ids else None
    records = []
    top_ids, top_probs = top_i.tolist(), top_p.tolist()  # one conversion, not one per element
    texts = {i: tokenizer.decode([i]) for i in set(sum(top_ids, []))} if tokenizer else {}  # each id decoded once
    for r, chunk in enumerate(chunks):
        tops = [(i, texts.get(i), p) for i, p in zip(top_ids[r], top_probs[r])]
        records.append(ChunkRecord(chunk.index, chunk.token_start, chunk.token_end, chunk.char_start, chunk.char_end,
                                   float(entropy[r]), int(argmax[r]), float(max_prob[r]), int(argmax[r]) in idk_ids,
                                   tops, None if query_logprob is None else float(query_logprob[r]),
                                   p_idk=None if p_idk is None else float(p_idk[r])))
    return records
