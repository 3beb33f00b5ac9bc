"""Held-out checks of the shipped model, teacher-forced: the training loop's evaluation and the measurement's
in-distribution numbers.

Episodes come from fixed seeds disjoint from the training stream.
"""
from __future__ import annotations

import random

from ..chunking import make_chunks
from ..config import IDK_WORD, OPRMConfig
from ..synthetic import AR_TEMPLATE, long_episodes, make_ar_episode
from .chat import IM_END, prompt_parts


def heldout_episodes(seed: int, n: int, present: bool, num_facts=(1, 16), filler_ratio=(0.0, 0.5, 1.0, 2.0),
                     slice_edges: bool = True, tok=None, max_ctx_tokens: int | None = None):
    """``n`` episodes of ``num_facts`` facts (uniform), dropping those whose context exceeds ``max_ctx_tokens``."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        ep = make_ar_episode(rng, rng.randint(*num_facts), filler_ratio=rng.choice(filler_ratio),
                             present=present, slice_edges=slice_edges)
        if tok is not None and max_ctx_tokens and len(tok.encode(ep.context)) > max_ctx_tokens:
            continue
        out.append(ep)
    return out


def answer_accuracy(model, tok, episodes, template=None, batch_size: int = 32):
    """Greedy exact-match accuracy of the first answer turn, computed teacher-forced: greedy decoding
    reproduces ``answer<|im_end|>`` iff every one of those tokens is the argmax given the previous ones.
    Returns (accuracy, first_token_is_idk_rate)."""
    import torch

    template = template or AR_TEMPLATE
    idk_id = tok.convert_tokens_to_ids(IDK_WORD)
    ok = idk = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(episodes), batch_size):
            grp = episodes[i:i + batch_size]
            seqs, spans = [], []
            for ep in grp:
                pre, suf = prompt_parts(tok, ep.question, template, ep.answer_prefix)
                p = pre + tok.encode(ep.context, add_special_tokens=False) + suf
                a = tok.encode(ep.answer + IM_END, add_special_tokens=False)
                seqs.append(p + a)
                spans.append((len(p), len(a)))
            T = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
            for j, s in enumerate(seqs):
                ids[j, :len(s)] = torch.tensor(s)
            pred = model(input_ids=ids, use_cache=False).logits.argmax(-1)
            for j, (pl, al) in enumerate(spans):
                tgt = ids[j, pl:pl + al]
                got = pred[j, pl - 1:pl - 1 + al]
                ok += bool((tgt == got).all())
                idk += int(got[0] == idk_id)
    model.train(was_training)  # as it came: the training loop's model trains on, the measurement's stays in eval
    return ok / len(episodes), idk / len(episodes)


def window_eval(model, tok, chunk_size: int, mult: int = 16, n_episodes: int = 32, keyless_per_episode: int = 8,
                seed: int = 10_016, chunking: str = OPRMConfig.chunking, snap: str = "end", batch_size: int = 32):
    """Teacher-forced accuracy on what OPRM feeds the model at ``mult`` x the chunk size: the chunk holding the
    needle whole (exact match of the value), and the first-token IDK rate on chunks without the key (a sample).
    Returns (needle_chunk_acc, keyless_idk_rate)."""
    import torch

    eps, _ = long_episodes(tok, mult * chunk_size, n_episodes, seed)
    rng = random.Random(seed)
    items = []  # (prompt ids, answer, is_needle)
    for ep in eps:
        enc = tok(ep.context, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
        chunks = make_chunks(len(ids), chunk_size, offsets=offs, chunking=chunking, text=ep.context, snap=snap)
        s0 = ep.context.index(ep.needle)
        s1 = s0 + len(ep.needle)
        pre, suf = prompt_parts(tok, ep.question, answer_prefix=ep.answer_prefix)
        needle = [c for c in chunks if c.char_start <= s0 and s1 <= c.char_end]
        keyless = [c for c in chunks if c.char_end <= s0 or c.char_start >= s1]
        if needle:
            items.append((pre + ids[needle[0].token_start:needle[0].token_end] + suf, ep.answer, True))
        for c in rng.sample(keyless, min(keyless_per_episode, len(keyless))):
            items.append((pre + ids[c.token_start:c.token_end] + suf, IDK_WORD, False))
    idk_id = tok.convert_tokens_to_ids(IDK_WORD)
    ok = n_needle = idk = n_keyless = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            grp = items[i:i + batch_size]
            seqs = [p + tok.encode(a + IM_END, add_special_tokens=False) for p, a, _ in grp]
            T = max(len(x) for x in seqs)
            batch = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
            for j, x in enumerate(seqs):
                batch[j, :len(x)] = torch.tensor(x)
            pred = model(input_ids=batch, use_cache=False).logits.argmax(-1)
            for j, (p, a, is_needle) in enumerate(grp):
                pl, al = len(p), len(seqs[j]) - len(p)
                got = pred[j, pl - 1:pl - 1 + al]
                if is_needle:
                    n_needle += 1
                    ok += bool((batch[j, pl:pl + al] == got).all())
                else:
                    n_keyless += 1
                    idk += int(got[0] == idk_id)
    model.train(was_training)
    return ok / max(1, n_needle), idk / max(1, n_keyless)

