"""Training examples for the shipped model: the ``--data docs`` mix (whole documents and random token windows) and the
``--data oprm`` mix (exactly the engine's chunks of longer documents), batched.

Each example is ``[P, C, S] answer <|im_end|>`` plus extra question turns, as (input ids, labels) with labels -100
except on the answers; the OPRM mix also returns each answer's first position (for a loss weight on it).
"""
from __future__ import annotations

import random

from ..chunking import make_chunks
from ..config import IDK_WORD
from ..synthetic import make_ar_episode
from ..synthetic import words as W
from ..synthetic.ar import _MODIFIERS, _NOUNS, AREpisode, _Key, _key_from_text, _question, _random_key, extra_question
from .chat import IM_END, IM_START, prompt_parts

# default generator mix for training documents (also written into the model card)
TRAIN_MIX = dict(
    num_facts=(1, 16),          # uniform; documents longer than max_ctx_tokens are re-drawn with fewer facts
    filler_ratio=(0.0, 0.25, 0.5, 1.0, 1.5, 2.0),
    present_prob=0.6,           # 40 % IDK episodes
    slice_edges_prob=0.7,
    hard_negative_prob=0.5,
    extra_questions=(2, 6),     # extra question turns on the same document (denser supervision)
    curriculum=(3, 0.4),        # max num_facts starts at 3 and reaches the full range at 40 % of the budget
    value_prefix_prob=0.0,      # values sharing leading digits with an earlier value of the document
)

# ``--data oprm``: train on exactly the inputs OPRM gives the model (also written into the model card)
OPRM_MIX = dict(
    doc_facts=(4, 40),          # facts per source document; documents longer than L are cut into OPRM windows
    filler_ratio=(0.0, 0.5, 1.0, 1.0, 1.5, 2.0),
    whole_doc_prob=0.25,        # a whole document of <= L tokens instead (vanilla in distribution, OPRM at 1x)
    slice_edges_prob=0.3,       # the source document itself starts/ends mid-sentence
    chunkings=("sentences", "sentences", "tokens"),   # how the document is cut (engine chunking, exact L tokens)
    snaps=("end", "start"),
    needle_prob=0.5,            # first question: a key whose fact is whole in the window (else a key it lacks)
    hard_negative_prob=0.6,     # absent keys sharing the attribute and one word with a fact of the window
    hard_negative_noun_prob=0.7,  # ... of which share the noun / surname (the shipped model answers those 100 %)
    extra_questions=(3, 6),
    value_prefix_prob=0.0,      # values sharing leading digits with an earlier value of the document
)


def _window(rng: random.Random, ids, offs, width: int, span: tuple[int, int] | None):
    """A random token window of ``width`` tokens, containing the character span ``span`` if given."""
    if len(ids) <= width:
        return 0, len(ids)
    lo, hi = 0, len(ids) - width
    if span is not None:
        s, e = span
        ti = next(i for i, (a, b) in enumerate(offs) if b > s)
        tj = max(i for i, (a, b) in enumerate(offs) if a < e)
        lo, hi = max(lo, tj + 1 - width), min(hi, ti)
    a = rng.randint(lo, hi)
    return a, a + width


def sample_example(rng: random.Random, tok, max_ctx_tokens: int, mix: dict = TRAIN_MIX, progress: float = 1.0):
    """One training sequence ``[P, C, S] answer <|im_end|>`` (+ extra question turns) as (input_ids, labels);
    labels = -100 except on the answers. With probability ``slice_edges_prob`` the context C is a random
    token window of a longer document (like an OPRM chunk); otherwise a whole document of <= max_ctx_tokens."""
    lo, hi = mix["num_facts"]
    start, until = mix.get("curriculum", (hi, 0.0))
    cur = min(1.0, progress / until) if until > 0 else 1.0
    hi = max(lo, round(start + (hi - start) * cur))
    n = rng.randint(lo, hi)
    fr = rng.choice(mix["filler_ratio"])
    present = rng.random() < mix["present_prob"]
    sliced = rng.random() < mix["slice_edges_prob"]
    width = rng.randint(max_ctx_tokens // 4, max(max_ctx_tokens // 4, round(max_ctx_tokens * max(cur, 0.25))))
    while True:
        ep = make_ar_episode(rng.getrandbits(48), max(n, 1 if present else 0), filler_ratio=fr, present=present,
                             hard_negative_prob=mix["hard_negative_prob"],
                             value_prefix_prob=mix.get("value_prefix_prob", 0.0))
        enc = tok(ep.context, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        if sliced:
            span = None
            if ep.needle is not None:
                s0 = ep.context.index(ep.needle)
                span = (s0, s0 + len(ep.needle))
            a, b = _window(rng, ids, offs, width, span)
            ctx = ids[a:b]
            break
        if len(ids) <= max_ctx_tokens:
            ctx = ids
            break
        n = max(1, int(n * 0.8))
        fr = fr * 0.8
    visible = tok.decode(ctx)
    pre, suf = prompt_parts(tok, ep.question, answer_prefix=ep.answer_prefix)
    ids = pre + ctx + suf
    labels = [-100] * len(ids)
    ans = tok.encode(ep.answer + IM_END + "\n", add_special_tokens=False)
    ids += ans
    labels += ans[:-1] + [-100]                       # no loss on the trailing newline
    # extra question turns about the same (visible) document: denser supervision for the same skill
    k = rng.randint(*mix["extra_questions"])
    if k:
        vis = AREpisode(visible, ep.question, ep.answer, ep.key, ep.needle, ep.answer_prefix, ep.facts,
                        [r for r, f in zip(ep.records, ep.facts) if f in visible])
        for _ in range(k):
            q, a_pre, a_ = extra_question(rng, vis, mix["present_prob"])
            turn = tok.encode(f"{IM_START}user\n{q}{IM_END}\n{IM_START}assistant\n{a_pre}", add_special_tokens=False)
            ans = tok.encode(a_ + IM_END + "\n", add_special_tokens=False)
            ids += turn + ans
            labels += [-100] * len(turn) + ans[:-1] + [-100]
    return ids, labels


def _shared_word_key(rng: random.Random, k, noun_prob: float):
    """A key sharing the noun (or surname) of ``k`` with probability ``noun_prob``, else its modifier / first name."""
    if k.kind == "person":
        return _Key("person", rng.choice(W.FIRST_NAMES), k.b) if rng.random() < noun_prob else \
            _Key("person", k.a, rng.choice(W.SURNAMES))
    return _Key("thing", rng.choice(_MODIFIERS), k.b) if rng.random() < noun_prob else \
        _Key("thing", k.a, rng.choice(_NOUNS))


def _window_questions(rng: random.Random, ep, window_text: str, whole: list[int], cut: list[int], n: int,
                      needle_prob: float, hard_negative_prob: float, first_present: bool | None = None,
                      noun_prob: float = 0.5):
    """``n`` (question, answer prefix, answer) about one window: facts whole in it (the value), or keys it lacks
    ("Error"): keys of the document's other windows, near keys sharing the attribute and one word with a fact of
    the window (the hard negatives of long documents), or random keys. Keys of facts the window cuts are never
    asked (their answer is ambiguous)."""
    cut_keys = {ep.records[i][0] for i in cut}
    others = [r for i, r in enumerate(ep.records) if i not in whole and i not in cut]
    out = []
    for q in range(n):
        present = (first_present if q == 0 and first_present is not None else rng.random() < needle_prob)
        if present and whole:
            k, attr, v = ep.records[rng.choice(whole)]
            out.append((*_question(_key_from_text(k), attr), v))
            continue
        for _ in range(100):
            r = rng.random()
            if r < hard_negative_prob and whole:
                k0, attr, _ = ep.records[rng.choice(whole)]
                key = _shared_word_key(rng, _key_from_text(k0), noun_prob)
            elif r < hard_negative_prob + (1 - hard_negative_prob) / 2 and others:
                k, attr, _ = rng.choice(others)
                key = _key_from_text(k)
            else:
                key, attr = _random_key(rng, 0.2), rng.choice([a for _, a, _ in ep.records] or ["code"])
            if key.text not in window_text and key.text not in cut_keys:
                out.append((*_question(key, attr), IDK_WORD))
                break
    return out


def sample_oprm_example(rng: random.Random, tok, chunk_size: int, mix: dict = OPRM_MIX):
    """One training sequence built from exactly what OPRM feeds the model: ``[P, C_j, S]`` with C_j an exact
    ``chunk_size``-token window cut by the engine's chunking (boundary-safe or plain) from a longer document, or a
    whole document of at most ``chunk_size`` tokens; then the answer and extra question turns on the same window.
    Returns (input_ids, labels, first_answer_positions)."""
    whole_doc = rng.random() < mix["whole_doc_prob"]
    n = rng.randint(*mix["doc_facts"]) if not whole_doc else rng.randint(1, 12)
    fr = rng.choice(mix["filler_ratio"])
    while True:
        ep = make_ar_episode(rng.getrandbits(48), n, filler_ratio=fr, present=True,
                             slice_edges=rng.random() < mix["slice_edges_prob"],
                             value_prefix_prob=mix.get("value_prefix_prob", 0.0))
        enc = tok(ep.context, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
        if not whole_doc or len(ids) <= chunk_size:
            break
        n, fr = max(1, int(n * 0.8)), fr * 0.8
    chunks = make_chunks(len(ids), chunk_size, offsets=offs, chunking=rng.choice(mix["chunkings"]),
                         text=ep.context, snap=rng.choice(mix["snaps"]))
    c = rng.choice(chunks)
    c0, c1 = c.char_start, c.char_end
    window_text = ep.context[c0:c1]
    whole, cut = [], []
    for i, f in enumerate(ep.facts):
        s0 = ep.context.index(f)
        s1 = s0 + len(f)
        if c0 <= s0 and s1 <= c1:
            whole.append(i)
        elif s0 < c1 and s1 > c0:
            cut.append(i)
    qs = _window_questions(rng, ep, window_text, whole, cut, 1 + rng.randint(*mix["extra_questions"]),
                           mix["needle_prob"], mix["hard_negative_prob"], rng.random() < mix["needle_prob"],
                           mix.get("hard_negative_noun_prob", 0.5))
    ctx = ids[c.token_start:c.token_end]
    seq, labels, firsts = [], [], []
    for q, (question, a_pre, a_) in enumerate(qs):
        if q == 0:
            pre, suf = prompt_parts(tok, question, answer_prefix=a_pre)
            turn = pre + ctx + suf
        else:
            turn = tok.encode(f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n{a_pre}",
                              add_special_tokens=False)
        ans = tok.encode(a_ + IM_END + "\n", add_special_tokens=False)
        seq += turn
        labels += [-100] * len(turn)
        firsts.append(len(seq))
        seq += ans
        labels += ans[:-1] + [-100]                   # no loss on the trailing newline
    return seq, labels, firsts


def make_batches(rng, tok, n_examples: int, batch_size: int, max_ctx_tokens: int, mix=None,
                 progress: float = 1.0, data: str = "docs"):
    """Length-bucketed, right-padded batches (right padding never affects earlier positions). Each batch is
    (input_ids, labels, first-answer-token mask)."""
    import torch

    mix = mix or (OPRM_MIX if data == "oprm" else TRAIN_MIX)
    if data == "oprm":
        exs = [sample_oprm_example(rng, tok, max_ctx_tokens, mix) for _ in range(n_examples)]
    else:
        exs = [(*sample_example(rng, tok, max_ctx_tokens, mix, progress), []) for _ in range(n_examples)]
    exs.sort(key=lambda e: len(e[0]))
    batches = []
    for i in range(0, len(exs), batch_size):
        grp = exs[i:i + batch_size]
        T = max(len(e[0]) for e in grp)
        ids = torch.full((len(grp), T), tok.pad_token_id, dtype=torch.long)
        lab = torch.full((len(grp), T), -100, dtype=torch.long)
        first = torch.zeros((len(grp), T), dtype=torch.bool)
        for j, (a, b, f) in enumerate(grp):
            ids[j, :len(a)] = torch.tensor(a)
            lab[j, :len(b)] = torch.tensor(b)
            first[j, f] = True
        batches.append((ids, lab, first))
    rng.shuffle(batches)
    return batches

