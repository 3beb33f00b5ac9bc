"""Train the small recurrent model that ships with oprm (``src/oprm/models/oprm-ar-mamba2``).

A stock ``transformers`` ``Mamba2ForCausalLM`` plus a BPE tokenizer trained here, both learned from the
synthetic natural-language associative-recall task of :mod:`oprm.synthetic.ar` (with "Error" = IDK answers).
The model is trained on documents of at most ``--max-ctx-tokens`` context tokens, so that much longer
documents *overflow* its recurrent state: the setting OPRM is designed for.

    python -m oprm.train_ar --out src/oprm/models/oprm-ar-mamba2          # (or: oprm train-ar ...)

Fixed seeds; CPU, one torch thread. Loss is on the answer tokens (+ <|im_end|>) only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

IM_START, IM_END, PAD, BOS = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# default generator mix for training documents (also written into the model card)
TRAIN_MIX = dict(
    num_facts=(1, 16),          # uniform; documents longer than max_ctx_tokens are re-drawn with fewer facts
    filler_ratio=(0.0, 0.25, 0.5, 1.0, 1.5, 2.0),
    present_prob=0.6,           # 40 % IDK episodes
    slice_edges_prob=0.7,
    hard_negative_prob=0.5,
    extra_questions=(2, 6),     # extra question turns on the same document (denser supervision)
    curriculum=(3, 0.4),        # max num_facts starts at 3 and reaches the full range at 40 % of the budget
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
)

# what was tried on the way to the shipped model (copied into the model card)
CARD_NOTES: list[str] = [
    "First task design (the previous checkpoint): 7 numeric and 4 place fact sentence forms, questions worded "
    "differently from the facts, and the reply starting with the value right after the chat markup.",
    "Run 1 (conv 4; whole documents only, 0-3 extra questions, no curriculum, prompt tokenized as one string): "
    "answer loss stuck at ~1.7 (no retrieval) for 500 steps; stopped. The prompt was then tokenized as P, C, S "
    "separately (exactly as the OPRM engine does) and the template changed to `Text:\\n{context}` so no space "
    "token sits between P and C.",
    "Run 2 (+ token-window slices of longer documents, like OPRM chunks): still on the ~1.7 plateau at 450 steps; "
    "stopped.",
    "Run 3 (+ curriculum: at most 3 facts at first, the full 1-16 range at 40 % of the budget; 2-6 extra question "
    "turns per document): left the plateau at ~350 steps; exact match 0.12 after 24 min.",
    "Runs 4-8 (fewer hard negatives, more extra questions, a 4-layer model grown from the 2-layer one, conv width "
    "10 from scratch, 17 more minutes): exact match 0.10-0.28. The value was found reliably only in single-fact "
    "documents: the queried key sat 7 chat-markup tokens before the answer position and was worded differently "
    "from its fact, so matching it to the right fact had to be learned across varying distances and phrasings.",
    "Second design (this model since stage 1): one fact form `The <attribute> of <key> is <value>.`, the question "
    "`What is the <attribute> of <key>?`, no place values, and the reply opens with the answer prefix "
    "`The <attribute> of <key> is ` (RULER's convention), so the value is predicted right after the same words "
    "that precede it in its fact: a copy task a 2-layer recurrent model learns (induction). 12-minute probes: "
    "conv width 4 left the plateau at ~450 steps and reached 0.25 exact match; conv width 10 stayed on the "
    "plateau; 8-16 extra questions per document (batch 16 or 8) left it later (0.01-0.06 at 12 min).",
    "Full runs of the second design (held-out teacher-forced exact match / IDK on absent keys, 256-token training "
    "length unless noted): defaults, 55 min planned: 0.63 / 0.54 at 25 min, OPRM 0/10 at 16x (stopped); "
    "8 heads of dim 32: 0.69 / 0.56 at 22 min (stopped); 4 B/C groups with 50 % absent keys: 0.14 / 0.89 at "
    "18 min (stopped); 4 groups, state 128, 50 % absent, 50 min: 0.73 / 0.71, OPRM 1/12 at 16x; "
    "128-token training length, 45 min: stage 1 of this model (the previous shipped model: in-distribution "
    "accuracy 0.852, OPRM 0.86 / 0.54 / 0.32 at 1x / 16x / 64x with the paper's selection). "
    "In every run retrieval kept improving while the IDK decision stalled at 0.55-0.75: the first-token "
    "P(Error) separates absent from present keys with an AUC of only 0.83-0.88, and at 16x one key-less chunk in "
    "six to ten answers a value (rarely a chunk holding a key that shares a word with the query), so "
    "entropy selection often picks a wrong chunk. A plausible cause: Mamba2's gated RMSNorm normalises the "
    "retrieved vector, so 'nothing matched' cannot show as a small read-out; the model must learn it against "
    "the skip term. Next: longer training (GPU), a larger state, or a Mamba1 model (no norm on the read-out).",
    "Issue 9 (a flat OPRM curve), stage 1 = the model above. Diagnosis on 640 key-less chunks of 16x documents: "
    "a chunk holding a fact whose key shares the query's noun ('green falcon' for 'amber falcon') answered its "
    "value 24 of 24 times, a shared modifier 0 of 27, no shared word 5.4 %; P(Error) on a correct needle chunk never "
    "fell below ~0.08, the same range as the false answers'. So the later stages train on exactly the engine's "
    "chunks (`--data oprm`: boundary-safe and plain 128-token windows of 4-40-fact documents, a quarter whole "
    "documents of <= 128 tokens; questions about keys whole in the window or absent from it, 60 % of the absent "
    "ones sharing a word and the attribute with a fact of the window; extra question turns on the same window) "
    "with a loss weight on each answer's first token.",
    "OPRM-window runs from stage 1 (16x chunk metrics = teacher-forced needle-chunk exact match / key-less chunks "
    "answering Error, 24 documents): run 1, lr 1.5e-3, first-token weight 3, 50 % needle questions, hard negatives "
    "half noun / half modifier: 0.875 / 0.911 at 500 steps (stopped: a starved CPU); run 2, 70 % of the hard "
    "negatives sharing the noun, 40 % needle questions: retrieval collapsed (needle chunk 0.29, present keys 0.46) "
    "while key-less Error rose to 0.98 at 500 steps (stopped); run 3 (stage 2), lr 1e-3, 60 % noun, 50 % needle, "
    "1000 steps: 0.79 / 0.92; stage 3 continues it with 70 % needle questions, weight 2, lr 5e-4, 1500 steps: "
    "0.92 / 0.92 (held-out whole documents 0.80 / 0.72). Stage 3 was picked over stage 2 on the card's episodes "
    "(OPRM with support selection 0.78 / 0.86 vs 0.78 / 0.84 at 16x / 64x, vanilla 1x 0.80 vs 0.78). The same "
    "measurement of stage 1 (the previous model): card seeds support 0.78 / 0.82, paper 0.54 / 0.32, vanilla 1x "
    "0.84; fresh seeds (41_000) support 0.70 / 0.82, paper 0.48 / 0.24, vanilla 0.78, against stage 3's 0.84 / 0.72, "
    "0.58 / 0.36, 0.78. "
    "The IDK decision barely moved in any run (key-less chunks answering 8.5 % -> ~5 %): a 2-layer, 128-wide "
    "Mamba2 does not learn to tell 'amber falcon' from 'green falcon' in this budget. What made the curve flat "
    "is selection: an extractive support re-rank (see the variants table) reaches the needle chunk's own accuracy.",
]


def render_chat(user: str, answer: str | None = None) -> str:
    """Exactly what ``apply_chat_template([{'role':'user','content':user}], add_generation_prompt=True)``
    renders with :data:`CHAT_TEMPLATE`, optionally followed by the answer and <|im_end|>."""
    s = f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
    if answer is not None:
        s += f"{answer}{IM_END}\n"
    return s


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer(seed: int = 0, vocab_size: int = 4096, n_docs: int = 6000):
    """Byte-level BPE with single digits, trained on generated AR text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .synthetic import AR_TEMPLATE, make_ar_episode
    from .synthetic import words as W

    rng = random.Random(seed + 17)
    texts = []
    for i in range(n_docs):
        ep = make_ar_episode(rng, rng.randint(1, 12), filler_ratio=rng.choice([0.5, 1.0, 2.0]),
                             present=rng.random() < 0.6, slice_edges=rng.random() < 0.5)
        texts.append(render_chat(ep.user_message(AR_TEMPLATE), ep.answer_prefix + ep.answer))
    vocab_words = (W.COLOURS + W.ADJECTIVES + W.ANIMALS + W.OBJECTS + W.FIRST_NAMES + W.SURNAMES
                   + W.ATTRIBUTES + W.PEOPLE + W.SETTINGS + W.INTRANSITIVE + W.TRANSITIVE + W.ADVERBS
                   + W.FEELINGS)
    for _ in range(50):  # every word with and without a leading space, capitalised too
        texts.append(" ".join(vocab_words) + " " + " ".join(w.capitalize() for w in vocab_words))
        texts.append("Error\n Error answer Error. Return \"Error\". The answer is Error")

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, IM_START, IM_END]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                   unk_token=None, additional_special_tokens=[IM_START],
                                   model_max_length=1 << 20, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    for w in ("Error", " Error"):
        assert len(fast.encode(w, add_special_tokens=False)) == 1, f"{w!r} is not a single token"
    return fast


# --------------------------------------------------------------------------- model
def build_model(tok, hidden: int = 128, layers: int = 2, state: int = 64, head_dim: int = 64,
                chunk_size: int = 64, seed: int = 0, conv_kernel: int = 4, groups: int = 1):
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    cfg = Mamba2Config(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, state_size=state,
        expand=2, head_dim=head_dim, num_heads=2 * hidden // head_dim, n_groups=groups, conv_kernel=conv_kernel,
        chunk_size=chunk_size, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False, use_cache=True,
        rescale_prenorm_residual=False,
    )
    return Mamba2ForCausalLM(cfg)


def grow_layers(model, layers: int, seed: int = 0):
    """A deeper copy of ``model``: its layers keep their weights and are spread out evenly, the new layers in
    between start as identities (output projection zeroed), so the grown model computes the same function."""
    import torch
    from transformers import Mamba2ForCausalLM

    old_n = model.config.num_hidden_layers
    cfg = model.config.__class__.from_dict({**model.config.to_dict(), "num_hidden_layers": layers})
    torch.manual_seed(seed)
    new = Mamba2ForCausalLM(cfg)
    place = {i: round(i * layers / old_n) for i in range(old_n)}   # old layer i -> new position
    sd = new.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("backbone.layers."):
            parts = k.split(".")
            parts[2] = str(place[int(parts[2])])
            k = ".".join(parts)
        sd[k] = v
    for j in set(range(layers)) - set(place.values()):
        sd[f"backbone.layers.{j}.mixer.out_proj.weight"].zero_()
    new.load_state_dict(sd)
    return new


# --------------------------------------------------------------------------- data
_MARK = "\u0000CONTEXT\u0000"


def prompt_parts(tok, question: str, template: str | None = None, answer_prefix: str = ""
                 ) -> tuple[list[int], list[int]]:
    """Token ids of the OPRM prefix P and suffix S around the context, tokenized separately exactly as
    ``oprm.prompts.build_prompt`` does (chat template rendered, split at the context, answer prefix appended)."""
    from .synthetic import AR_TEMPLATE

    before, after = (template or AR_TEMPLATE).split("{context}")
    rendered = render_chat(before + _MARK + after.replace("{input}", question))
    p, s_ = rendered.split(_MARK)
    s_ += answer_prefix
    return tok.encode(p, add_special_tokens=False), tok.encode(s_, add_special_tokens=False)


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
    from .synthetic import make_ar_episode
    from .synthetic.ar import extra_question

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
                             hard_negative_prob=mix["hard_negative_prob"])
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
        from .synthetic.ar import AREpisode
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
    from .synthetic import words as W
    from .synthetic.ar import _MODIFIERS, _NOUNS, _Key

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
    from .synthetic.ar import IDK, _key_from_text, _question, _random_key

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
                out.append((*_question(key, attr), IDK))
                break
    return out


def sample_oprm_example(rng: random.Random, tok, chunk_size: int, mix: dict = OPRM_MIX):
    """One training sequence built from exactly what OPRM feeds the model: ``[P, C_j, S]`` with C_j an exact
    ``chunk_size``-token window cut by the engine's chunking (boundary-safe or plain) from a longer document, or a
    whole document of at most ``chunk_size`` tokens; then the answer and extra question turns on the same window.
    Returns (input_ids, labels, first_answer_positions)."""
    from .chunking import make_chunks
    from .synthetic import make_ar_episode

    whole_doc = rng.random() < mix["whole_doc_prob"]
    n = rng.randint(*mix["doc_facts"]) if not whole_doc else rng.randint(1, 12)
    fr = rng.choice(mix["filler_ratio"])
    while True:
        ep = make_ar_episode(rng.getrandbits(48), n, filler_ratio=fr, present=True,
                             slice_edges=rng.random() < mix["slice_edges_prob"])
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


# --------------------------------------------------------------------------- evaluation helpers
def answer_accuracy(model, tok, episodes, template=None, batch_size: int = 32):
    """Greedy exact-match accuracy of the first answer turn, computed teacher-forced: greedy decoding
    reproduces ``answer<|im_end|>`` iff every one of those tokens is the argmax given the previous ones.
    Returns (accuracy, first_token_is_idk_rate)."""
    import torch

    from .synthetic import AR_TEMPLATE

    template = template or AR_TEMPLATE
    idk_id = tok.convert_tokens_to_ids("Error")
    ok = idk = 0
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
    model.train()
    return ok / len(episodes), idk / len(episodes)


def window_eval(model, tok, chunk_size: int, mult: int = 16, n_episodes: int = 32, keyless_per_episode: int = 8,
                seed: int = 10_016, chunking: str = "sentences", snap: str = "end", batch_size: int = 32):
    """Teacher-forced accuracy on what OPRM feeds the model at ``mult`` x the chunk size: the chunk holding the
    needle whole (exact match of the value), and the first-token IDK rate on chunks without the key (a sample).
    Returns (needle_chunk_acc, keyless_idk_rate)."""
    import torch

    from .chunking import make_chunks
    from .synthetic.ar import IDK
    from .synthetic.measure import long_episodes

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
            items.append((pre + ids[c.token_start:c.token_end] + suf, IDK, False))
    idk_id = tok.convert_tokens_to_ids(IDK)
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


def heldout_episodes(seed: int, n: int, present: bool, num_facts=(1, 16), filler_ratio=(0.0, 0.5, 1.0, 2.0),
                     slice_edges: bool = True, tok=None, max_ctx_tokens: int | None = None):
    from .synthetic import make_ar_episode

    rng = random.Random(seed)
    out = []
    while len(out) < n:
        ep = make_ar_episode(rng, rng.randint(*num_facts), filler_ratio=rng.choice(filler_ratio),
                             present=present, slice_edges=slice_edges)
        if tok is not None and max_ctx_tokens and len(tok.encode(ep.context)) > max_ctx_tokens:
            continue
        out.append(ep)
    return out


# --------------------------------------------------------------------------- main
# Multi-stage recipes `oprm train-ar [--recipe NAME]` runs when given no training options; each stage continues
# the previous one. "shipped" rebuilds the shipped model: stage 1 on whole documents and token windows (the previous
# shipped model; its schedule follows the wall clock), then issue 9's two stages on exactly the engine's chunks
# (step-exact schedules; runs 3-4 of the model card). "stage1" is the previous shipped model alone.
OPRM_WINDOW_STAGES: list[list[str]] = [
    ["--data", "oprm", "--first-token-weight", "3", "--needle-prob", "0.5", "--noun-prob", "0.6", "--lr", "1e-3",
     "--warmup", "100", "--schedule-steps", "1000", "--minutes", "65"],
    ["--data", "oprm", "--first-token-weight", "2", "--needle-prob", "0.7", "--noun-prob", "0.6", "--lr", "5e-4",
     "--warmup", "50", "--schedule-steps", "1500", "--minutes", "35"],
]
RECIPES: dict[str, list[list[str]]] = {
    "stage1": [["--minutes", "45", "--max-ctx-tokens", "128"]],
}
RECIPES["shipped"] = RECIPES["stage1"] + OPRM_WINDOW_STAGES
SHIPPED_RECIPE = RECIPES["shipped"]
_RECIPE_PASSTHROUGH = {"--out": True, "--threads": True, "--no-measure": False, "--recipe": True}


def _recipe_argv(argv: list[str]) -> list[str] | None:
    """The pass-through options when ``argv`` asks for the shipped recipe (no training options), else None."""
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name not in _RECIPE_PASSTHROUGH:
            return None
        takes_value = _RECIPE_PASSTHROUGH[name] and "=" not in argv[i]
        out += argv[i:i + 1 + takes_value]
        i += 1 + takes_value
    return out


def train_recipe(passthrough: list[str], recipe: list[list[str]] | None = None) -> int:
    """Run the stages of a recipe in sequence; intermediate stages go to ``<out>/.stage<i>``."""
    import shutil

    ap = argparse.ArgumentParser(prog="oprm train-ar", add_help=False)
    ap.add_argument("--out", default=str(Path(__file__).parent / "models" / "oprm-ar-mamba2"))
    ap.add_argument("--threads", default="1")
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="shipped")
    opts = ap.parse_args(passthrough)
    recipe = recipe or RECIPES[opts.recipe]
    out = Path(opts.out)
    prev = None
    commands = []
    for i, stage in enumerate(recipe):
        last = i == len(recipe) - 1
        stage_out = out if last else out / f".stage{i + 1}"
        stage_argv = [*stage, "--out", str(stage_out), "--threads", opts.threads]
        if prev is not None:
            stage_argv += ["--init-from", str(prev)]
        if not last or opts.no_measure:
            stage_argv.append("--no-measure")
        commands.append("python -m oprm.train_ar " + " ".join(stage_argv))
        if len(recipe) > 1:
            print(f"[train-ar] recipe stage {i + 1}/{len(recipe)}: {commands[-1]}", flush=True)
        main(stage_argv)
        prev = stage_out
    if len(recipe) > 1:
        meta_path = out / "training_meta.json"
        meta = json.loads(meta_path.read_text())
        meta["stages"] = commands
        meta_path.write_text(json.dumps(meta, indent=1))
    if not opts.no_measure:  # the chunking x selection x IDK ablation, then the card with it
        from .synthetic.measure import main as measure_main

        measure_main(["--model", str(out), "--variants", "--n-curve", "50"])
        measure_main(["--model", str(out), "--card-only"])
    for i in range(len(recipe) - 1):
        shutil.rmtree(out / f".stage{i + 1}", ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = _recipe_argv(argv)
    if passthrough is not None:
        return train_recipe(passthrough)
    ap = argparse.ArgumentParser(prog="oprm train-ar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "models" / "oprm-ar-mamba2"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=45.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--max-ctx-tokens", type=int, default=128, help="training length (context tokens)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--state", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--groups", type=int, default=1,
                    help="Mamba2 n_groups: heads per group share the B/C projections (the state's keys and queries)")
    ap.add_argument("--conv-kernel", type=int, default=4,
                    help="causal conv width; > 4 lets one layer see a whole key next to its value (CPU/torch path)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-measure", action="store_true", help="skip the measurement / model card numbers")
    ap.add_argument("--init-from", default=None, help="continue training a saved model folder (stage 2)")
    ap.add_argument("--schedule-steps", type=int, default=None,
                    help="cosine schedule over this many steps (default: over the wall-clock budget)")
    ap.add_argument("--present-prob", type=float, default=TRAIN_MIX["present_prob"],
                    help="share of episodes whose key is in the document (the rest answer Error)")
    ap.add_argument("--hard-negative-prob", type=float, default=TRAIN_MIX["hard_negative_prob"])
    ap.add_argument("--extra-questions", default="%d,%d" % TRAIN_MIX["extra_questions"])
    ap.add_argument("--curriculum", default="%d,%g" % TRAIN_MIX["curriculum"],
                    help="START,FRAC: max facts starts at START and reaches the full range at FRAC of training")
    ap.add_argument("--data", choices=("docs", "oprm"), default="docs",
                    help="docs: whole documents and random token windows (the shipped recipe); oprm: exactly the "
                         "engine's chunks (boundary-safe and plain, chunk size = --max-ctx-tokens) of longer "
                         "documents, questions about keys whole in the chunk or absent from it")
    ap.add_argument("--first-token-weight", type=float, default=1.0,
                    help="loss weight of each answer's first token (the value's first digit or Error)")
    ap.add_argument("--needle-prob", type=float, default=OPRM_MIX["needle_prob"],
                    help="--data oprm: share of questions about a key whole in the window")
    ap.add_argument("--noun-prob", type=float, default=OPRM_MIX["hard_negative_noun_prob"],
                    help="--data oprm: share of hard negatives that share the noun / surname (else the modifier)")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    mix = dict(TRAIN_MIX, present_prob=args.present_prob, hard_negative_prob=args.hard_negative_prob,
               extra_questions=tuple(int(x) for x in args.extra_questions.split(",")),
               curriculum=(int(args.curriculum.split(",")[0]), float(args.curriculum.split(",")[1])))
    if args.data == "oprm":
        mix = dict(OPRM_MIX, needle_prob=args.needle_prob, hard_negative_noun_prob=args.noun_prob)
    if args.init_from:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.init_from)
        model = AutoModelForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
        if args.layers > model.config.num_hidden_layers:
            model = grow_layers(model, args.layers, seed=args.seed)
        prior = Path(args.init_from) / "training_meta.json"
        prior_meta = json.loads(prior.read_text()) if prior.exists() else None
    else:
        tok = build_tokenizer(args.seed)
        model = build_model(tok, args.hidden, args.layers, args.state, args.head_dim, seed=args.seed,
                            conv_kernel=args.conv_kernel, groups=args.groups)
        prior_meta = None
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train-ar] vocab={len(tok)} params={n_params:,} out={out}", flush=True)

    ev_present = heldout_episodes(10_001, 256, True, tok=tok, max_ctx_tokens=args.max_ctx_tokens)
    ev_absent = heldout_episodes(10_002, 256, False, tok=tok, max_ctx_tokens=args.max_ctx_tokens)

    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim < 2 or n_.endswith(("A_log", "D", "dt_bias")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    rng = random.Random(args.seed + 1)
    t0 = time.time()
    budget = args.minutes * 60
    step, n_tok, queue = 0, 0, []
    ema = None
    history = []
    model.train()
    while step < min(args.max_steps, args.schedule_steps or args.max_steps):
        elapsed = time.time() - t0
        if elapsed > budget:
            break
        frac = min(1.0, step / args.schedule_steps if args.schedule_steps else elapsed / budget)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        if not queue:
            queue = make_batches(rng, tok, args.batch_size * 8, args.batch_size, args.max_ctx_tokens, mix,
                                 progress=frac, data=args.data)
        ids, lab, first = queue.pop()
        if args.first_token_weight == 1.0:
            loss = model(input_ids=ids, labels=lab, use_cache=False).loss
        else:
            loss = weighted_loss(model(input_ids=ids, use_cache=False).logits, lab, first, args.first_token_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        n_tok += ids.numel()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"[train-ar] step {step} loss {ema:.4f} lr {lr:.2e} {n_tok / (time.time() - t0):.0f} tok/s "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
        if step % args.eval_every == 0:
            acc, _ = answer_accuracy(model, tok, ev_present[:128])
            _, idk = answer_accuracy(model, tok, ev_absent[:128])
            history.append((step, round(acc, 4), round(idk, 4)))
            extra = ""
            if args.data == "oprm":
                w_acc, w_idk = window_eval(model, tok, args.max_ctx_tokens, n_episodes=24)
                history[-1] += (round(w_acc, 4), round(w_idk, 4))
                extra = f"  16x chunks: needle acc {w_acc:.3f}, key-less -> Error {w_idk:.3f}"
            print(f"[train-ar] eval step {step}: present acc {acc:.3f}  absent->Error {idk:.3f}{extra}", flush=True)
            save(model, tok, out)  # checkpoint (overwritten)

    train_min = (time.time() - t0) / 60
    acc, _ = answer_accuracy(model, tok, ev_present)
    _, idk = answer_accuracy(model, tok, ev_absent)
    print(f"[train-ar] done: {step} steps, {n_tok:,} tokens, {train_min:.1f} min; "
          f"present acc {acc:.3f}, absent->Error {idk:.3f}", flush=True)
    save(model, tok, out)
    meta = dict(seed=args.seed, steps=step, tokens=n_tok, train_minutes=round(train_min, 1), params=n_params,
                vocab=len(tok), notes=CARD_NOTES,
                max_ctx_tokens=args.max_ctx_tokens, batch_size=args.batch_size, lr=args.lr,
                hidden=model.config.hidden_size, layers=model.config.num_hidden_layers,
                state=model.config.state_size, head_dim=model.config.head_dim, groups=model.config.n_groups,
                conv_kernel=model.config.conv_kernel,
                mix={k: list(v) if isinstance(v, tuple) else v for k, v in mix.items()},
                data=args.data, first_token_weight=args.first_token_weight,
                init_from=args.init_from, prior_stage=prior_meta,
                final_heldout=dict(present_acc=acc, absent_idk=idk), history=history,
                command="python -m oprm.train_ar " + " ".join(argv if argv is not None else sys.argv[1:]))
    (out / "training_meta.json").write_text(json.dumps(meta, indent=1))
    if not args.no_measure:
        from .synthetic.measure import main as measure_main
        measure_main(["--model", str(out), "--write-card"])
    return 0


def weighted_loss(logits, labels, first, weight: float):
    """Next-token cross-entropy over the labelled tokens, each answer's first token weighted ``weight``."""
    import torch.nn.functional as F

    logits, labels, first = logits[:, :-1].float(), labels[:, 1:], first[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                         reduction="none").view(labels.shape)
    w = (labels != -100).float() * (1.0 + (weight - 1.0) * first.float())
    return (ce * w).sum() / w.sum()


def save(model, tok, out: Path):
    from transformers import GenerationConfig

    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     do_sample=False, max_new_tokens=8).save_pretrained(out)


if __name__ == "__main__":
    sys.exit(main())
