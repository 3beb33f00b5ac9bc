"""Per-chunk statistics of OPRM prompts and a reference implementation of selection rules, outside the engine.

Every chunk's prompt [P, C_j, S] is run on its own (rows batched, no padding: all rows have the same length), exactly
as the engine prefills it, so a rule's chosen chunk answers what the engine would answer for it. For each chunk:
the first answer token's entropy, P(IDK) and argmax, and a greedy look-ahead of ``k`` tokens with each token's
log-probability and the entropy of its distribution. :func:`make_rules` replays selection rules on those numbers
(used by ``benchmarks/selection_study.py`` and ``python -m oprm.training.measure``).
"""
from __future__ import annotations

import math

from ..config import IDK_WORD
from ..support import answer_value, support

CHUNKINGS = {"tokens": dict(chunking="tokens"), "sent_end": dict(chunking="sentences", snap="end"),
             "sent_start": dict(chunking="sentences", snap="start")}


def lookahead(adapter, rows, k: int, eos: int):
    """Greedy k-token continuation of each row [P, C_j, S] (batched); per row the first-token distribution's
    entropy / argmax / P(each id) and, per generated token, its id, log-prob and the entropy of its distribution."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(rows, dtype=torch.long, device=adapter.device)
    logits, state = adapter.prefill(ids, None, start=0, num_logits=1)
    logp = F.log_softmax(logits[:, -1].float(), -1)
    first = logp.clone()
    toks, lps, ents = [], [], []
    for t in range(k):
        tok = logp.argmax(-1)
        toks.append(tok)
        lps.append(logp.gather(-1, tok[:, None])[:, 0])
        ents.append(-(logp.exp() * logp).sum(-1))
        if t == k - 1 or bool((torch.stack(toks).eq(eos).any(0)).all()):
            break
        logits, state = adapter.prefill(tok[:, None], state, start=ids.shape[1] + t, num_logits=1)
        logp = F.log_softmax(logits[:, -1].float(), -1)
    return first, torch.stack(toks, 1), torch.stack(lps, 1), torch.stack(ents, 1)


def chunk_records(engine, prompt, chunks, k: int, rows_per_batch: int, gold: str, needle: str | None,
                  context: str, idk: str = IDK_WORD, query: str = ""):
    import torch

    tok = engine.tokenizer
    idk_ids = sorted(engine.idk_ids(idk))
    eos = tok.eos_token_id
    p = prompt
    out = []
    for b0 in range(0, len(chunks), rows_per_batch):
        batch = chunks[b0:b0 + rows_per_batch]
        rows = [p.prefix_ids + p.context_ids[c.token_start:c.token_end] + p.suffix_ids for c in batch]
        with torch.no_grad():
            first, toks, lps, ents = lookahead(engine.adapter, rows, k, eos)
        probs = first.exp()
        ent0 = -(probs * first).sum(-1)
        p_idk = probs[:, idk_ids].sum(-1)
        for r, c in enumerate(batch):
            ids = toks[r].tolist()
            n = ids.index(eos) if eos in ids else len(ids)
            text = tok.decode(ids[:n], skip_special_tokens=True).strip()
            pieces = [tok.decode([i]) for i in ids[:n]]
            ctext = context[c.char_start:c.char_end]
            s0 = context.index(needle) if needle else -1
            out.append(dict(
                index=c.index, token_start=c.token_start, token_end=c.token_end,
                entropy0=float(ent0[r]), p_idk0=float(p_idk[r]), argmax0=pieces[0] if pieces else "",
                is_idk0=int(ids[0]) in set(idk_ids), text=text, pieces=pieces, finished=n < len(ids),
                logprobs=[round(float(x), 5) for x in lps[r][:max(1, n + (n < len(ids)))]],
                entropies=[round(float(x), 5) for x in ents[r][:max(1, n + (n < len(ids)))]],
                needle_whole=bool(needle) and c.char_start <= s0 and s0 + len(needle) <= c.char_end,
                needle_touch=bool(needle) and c.char_start < s0 + len(needle) and c.char_end > s0,
                answer_in_chunk=bool(answer_value(text)) and answer_value(text) in ctext,
                support=round(support(ctext, text, query), 4), char_start=c.char_start, char_end=c.char_end,
                correct=_is_correct(text, gold)))
    return out


def _is_correct(text: str, gold: str) -> bool:
    return text.strip() == gold or (len(gold) >= 5 and gold in text)


def _span(c, digits_only: bool):
    """Indices of the answer span in the look-ahead: the digit tokens when asked and present, else all tokens."""
    n = len(c["pieces"])
    if digits_only:
        d = [i for i, p in enumerate(c["pieces"]) if any(ch.isdigit() for ch in p)]
        if d:
            return d
    return list(range(max(1, n)))


def _mean(xs):
    return sum(xs) / len(xs) if xs else -1e9


def _divergence(cands):
    """First look-ahead position where the candidates' greedy tokens differ (0 if they differ at once)."""
    if len(cands) < 2:
        return 0
    t = 0
    while True:
        toks = [c["pieces"][t] if t < len(c["pieces"]) else None for c in cands]
        if len(set(toks)) > 1 or all(x is None for x in toks):
            return t
        t += 1


RULE_NAMES = {
    "entropy": "first-token entropy (the paper's)",
    "max_prob": "first-token max probability",
    "p_idk": "lowest first-token P(IDK)",
    "p_idk_entropy": "log(1 - P(IDK)) - entropy",
    "la_mean": "look-ahead: mean log-prob of the answer",
    "la_sum": "look-ahead: log-prob of the whole answer",
    "la_digits_mean": "look-ahead: mean log-prob of the digit tokens (all tokens if none)",
    "la_digits_min": "look-ahead: min log-prob of the digit tokens",
    "la_div_logp": "look-ahead: log-prob where the candidates' answers diverge",
    "la_div_entropy": "look-ahead: -entropy where the candidates' answers diverge",
    "la_div_mean": "look-ahead: mean log-prob of the answer from where the candidates' answers diverge",
    "la_digits_mean_pidk": "look-ahead digits mean log-prob + log(1 - P(IDK))",
    "support_la": "extractive support of the answer (query words in its sentence), then la_digits_mean",
    "support_entropy": "extractive support of the answer, then first-token entropy",
    "support_div": "extractive support of the answer, then la_div_mean",
}


def make_rules(idk: bool = True):
    """rule id -> (filter, score): the filter drops chunks taken as IDK (first token IDK for first-token rules; IDK
    anywhere in the look-ahead or an empty answer for look-ahead rules; nothing with ``idk=False``), and the best
    score among the rest wins; no candidate left means the answer is the IDK word. ``<id>_grounded`` first prefers
    chunks whose answer (its first number, else its text) occurs in the chunk's own text."""
    first_ok = (lambda c: not c["is_idk0"]) if idk else (lambda c: True)
    span_ok = (lambda c: not c["is_idk0"] and IDK_WORD not in c["text"] and c["text"] != "") if idk else \
        (lambda c: True)
    log1m = lambda p: math.log(max(1e-12, 1 - p))  # noqa: E731
    digits_mean = lambda c: _mean([c["logprobs"][i] for i in _span(c, True) if i < len(c["logprobs"])])  # noqa: E731
    rules = {
        "entropy": (first_ok, lambda c, d: -c["entropy0"]),
        "max_prob": (first_ok, lambda c, d: math.exp(c["logprobs"][0])),
        "p_idk": (first_ok, lambda c, d: -c["p_idk0"]),
        "p_idk_entropy": (first_ok, lambda c, d: log1m(c["p_idk0"]) - c["entropy0"]),
        "la_mean": (span_ok, lambda c, d: _mean([c["logprobs"][i] for i in _span(c, False)
                                                 if i < len(c["logprobs"])])),
        "la_sum": (span_ok, lambda c, d: sum(c["logprobs"])),
        "la_digits_mean": (span_ok, lambda c, d: digits_mean(c)),
        "la_digits_min": (span_ok, lambda c, d: min([c["logprobs"][i] for i in _span(c, True)
                                                     if i < len(c["logprobs"])] or [-1e9])),
        "la_div_logp": (span_ok, lambda c, d: c["logprobs"][d] if d < len(c["logprobs"]) else -1e9),
        "la_div_entropy": (span_ok, lambda c, d: -c["entropies"][d] if d < len(c["entropies"]) else -1e9),
        "la_div_mean": (span_ok, lambda c, d: _mean(c["logprobs"][d:len(c["pieces"])] or c["logprobs"][-1:])),
        "la_digits_mean_pidk": (span_ok, lambda c, d: digits_mean(c) + log1m(c["p_idk0"])),
    }
    rules["support_la"] = (span_ok, lambda c, d: (c.get("support", 0.0), digits_mean(c)))
    rules["support_div"] = (span_ok, lambda c, d: (c.get("support", 0.0), rules["la_div_mean"][1](c, d)))
    rules["support_entropy"] = (first_ok, lambda c, d: (c.get("support", 0.0), -c["entropy0"]))
    for base in ("entropy", "p_idk", "la_digits_mean", "la_div_mean", "la_digits_mean_pidk"):
        f, s = rules[base]
        rules[f"{base}_grounded"] = (f, (lambda s: lambda c, d: (c["answer_in_chunk"], s(c, d)))(s))
    return rules


def choose(chunks, filt, score):
    cands = [c for c in chunks if filt(c)]
    if not cands:
        return None
    d = _divergence(cands)
    return max(cands, key=lambda c: (score(c, d), -c["index"]))


