"""Natural-language associative recall (AR) with an "I don't know" answer.

A document is a shuffled mix of *fact sentences* ("The code of the amber falcon is 4821.") and *filler
sentences* from :mod:`oprm.synthetic.filler`. The question asks for the value of one key. The answer is the
value, or the IDK word ``oprm.config.IDK_WORD`` ("Error") when the key does not occur in the document
(``present=False``).

Everything is deterministic given the seed: pass an ``int`` seed or a ``random.Random``.

    >>> from oprm.synthetic.ar import make_ar_episode, AR_TEMPLATE
    >>> ep = make_ar_episode(0, num_facts=6)
    >>> prompt = AR_TEMPLATE.format(context=ep.context, input=ep.question)

``AR_TEMPLATE`` is the user-message text shared by training, the engine, the demo and ``oprm eval``.
Everything before ``{context}`` is the OPRM prefix P, everything after it (IDK instruction + question) the
suffix S. The assistant's reply opens with ``episode.answer_prefix`` ("The code of the amber falcon is "), as
RULER's prompts do, so the first generated token is the value's first digit or "Error", and it is predicted right
after the same words that precede the value in its fact sentence.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..config import IDK_WORD
from ..prompts import PromptFormat
from . import words as W
from .filler import filler_sentence

AR_TEMPLATE = (
    'Answer the question using the text below. If the answer does not exist in the text, return "Error".\n\n'
    "Text:\n{context}\n\n"
    'Answer with the value only, or "Error" if the text does not say. Question: {input}'
)

QUESTION = "What is the {attribute} of {key}?"
ANSWER_PREFIX = "The {attribute} of {key} is "
# the shipped model's prompt_format.json: a question asked without a template gets AR_TEMPLATE and, when it has the
# AR question's form, the answer prefix the model was trained to continue
AR_PROMPT_FORMAT = PromptFormat(AR_TEMPLATE, ((r"What is the (?P<attribute>.+?) of (?P<key>.+)\?", ANSWER_PREFIX),))


@dataclass
class AREpisode:
    context: str
    question: str
    answer: str
    key: str                      # e.g. "amber falcon" or "Maria Lopez"
    needle: str | None            # the fact sentence holding the answer; None when the key is absent
    answer_prefix: str = ""       # opens the assistant's reply: "The code of the amber falcon is "
    facts: list[str] = field(default_factory=list)  # all (complete) fact sentences, in document order
    # structured view of ``facts``: (key, attribute, value)
    records: list[tuple[str, str, str]] = field(default_factory=list, repr=False)

    @property
    def present(self) -> bool:
        return self.needle is not None

    def user_message(self, template: str = AR_TEMPLATE) -> str:
        return template.format(context=self.context, input=self.question)

    def prompt_kwargs(self, template: str = AR_TEMPLATE) -> dict:
        """The prompt arguments of ``OPRM.generate`` for this episode."""
        return dict(context=self.context, query=self.question, template=template, answer_prefix=self.answer_prefix)


# --------------------------------------------------------------------------- keys and values
@dataclass(frozen=True)
class _Key:
    kind: str    # "thing" or "person"
    a: str       # modifier / first name
    b: str       # noun / surname

    @property
    def text(self) -> str:
        return f"{self.a} {self.b}"

    @property
    def ref(self) -> str:           # how it is referred to inside a sentence
        return f"the {self.a} {self.b}" if self.kind == "thing" else self.text


_MODIFIERS = W.COLOURS + W.ADJECTIVES
_NOUNS = W.ANIMALS + W.OBJECTS


def _random_key(rng: random.Random, person_prob: float) -> _Key:
    if rng.random() < person_prob:
        return _Key("person", rng.choice(W.FIRST_NAMES), rng.choice(W.SURNAMES))
    return _Key("thing", rng.choice(_MODIFIERS), rng.choice(_NOUNS))


def _near_key(rng: random.Random, k: _Key) -> _Key:
    """A key sharing one word with ``k`` (hard negative for the IDK case)."""
    if k.kind == "person":
        return _Key("person", k.a, rng.choice(W.SURNAMES)) if rng.random() < 0.5 else \
            _Key("person", rng.choice(W.FIRST_NAMES), k.b)
    return _Key("thing", k.a, rng.choice(_NOUNS)) if rng.random() < 0.5 else \
        _Key("thing", rng.choice(_MODIFIERS), k.b)


def _random_number(rng: random.Random, digits: tuple[int, int]) -> str:
    n = rng.randint(digits[0], digits[1])
    return str(rng.randint(10 ** (n - 1), 10 ** n - 1))


def _values(rng: random.Random, n: int, digits: tuple[int, int], value_prefix_prob: float) -> list[str]:
    """``n`` distinct values; each after the first shares leading digits with an earlier one with probability
    ``value_prefix_prob`` (no extra random draws when it is 0, so episodes of existing seeds are unchanged)."""
    vals: list[str] = []
    while len(vals) < n:
        v = _random_number(rng, digits)
        if value_prefix_prob and vals and rng.random() < value_prefix_prob:
            src = rng.choice(vals)
            k = rng.randint(1, min(len(src), len(v)) - 1)
            v = src[:k] + v[k:]
            if v in vals:
                continue
        vals.append(v)
    return vals


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _fact_sentence(k: _Key, attr: str, v: str) -> str:
    return f"{_cap(f'the {attr} of {k.ref}')} is {v}."


def _question(k: _Key, attr: str) -> tuple[str, str]:
    """The question and the answer prefix that opens the assistant's reply (as in RULER): the prefix repeats
    the key, so the value is predicted right after the same words that precede it in the fact."""
    return QUESTION.format(attribute=attr, key=k.ref), ANSWER_PREFIX.format(attribute=attr, key=k.ref)


def _cut_tail(rng: random.Random, s: str) -> str:
    """The end of a sentence (as if a slice started mid-sentence)."""
    ws = s.split(" ")
    return " ".join(ws[rng.randint(1, max(1, len(ws) - 1)):])


def _cut_head(rng: random.Random, s: str) -> str:
    """The start of a sentence (as if a slice ended mid-sentence)."""
    ws = s.split(" ")
    return " ".join(ws[:rng.randint(1, max(1, len(ws) - 1))])


# --------------------------------------------------------------------------- episodes
def make_ar_episode(
    rng_or_seed: int | random.Random,
    num_facts: int,
    filler_ratio: float = 1.0,
    present: bool = True,
    *,
    needle_pos: float | None = None,
    hard_negative_prob: float = 0.5,
    person_prob: float = 0.2,
    value_digits: tuple[int, int] = (3, 4),
    slice_edges: bool = False,
    value_prefix_prob: float = 0.0,
) -> AREpisode:
    """Build one AR episode.

    num_facts:     fact sentences in the document (>= 1 when ``present``; may be 0 when absent).
    filler_ratio:  mean number of filler sentences per fact sentence (0 = facts only).
    present:       whether the queried key is in the document (answer = value) or not (answer = "Error").
    needle_pos:    relative position (0..1) of the needle among the facts; None = uniform at random.
    hard_negative_prob: for absent keys, the probability that the queried key shares a word with a
                   key of the document (e.g. "amber lamp" when "amber falcon" is present).
    person_prob:   share of person-name keys ("Maria Lopez") among the keys.
    value_digits:  (min, max) digits of numeric values.
    slice_edges:   start and end the document mid-sentence, like an arbitrary slice of a longer text.
    value_prefix_prob: probability that a value repeats the leading digits of an earlier value of the document
                   (a training mix: the answer's later digits must then come from the key, not the digits before).
    """
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    if present and num_facts < 1:
        raise ValueError("a present-key episode needs num_facts >= 1")

    keys: list[_Key] = []
    used: set[str] = set()
    while len(keys) < num_facts:
        k = _random_key(rng, person_prob)
        if k.text not in used:
            used.add(k.text)
            keys.append(k)
    rels = [rng.choice(W.ATTRIBUTES) for _ in keys]
    vals = _values(rng, len(keys), value_digits, value_prefix_prob)
    facts = [_fact_sentence(k, rel, v) for k, rel, v in zip(keys, rels, vals)]

    if present:
        if needle_pos is None:
            qi = rng.randrange(num_facts)
        else:
            qi = min(num_facts - 1, max(0, int(round(needle_pos * (num_facts - 1)))))
        qkey, qrel, answer, needle = keys[qi], rels[qi], vals[qi], facts[qi]
    else:
        qkey = None
        for _ in range(1000):
            if keys and rng.random() < hard_negative_prob:
                cand = _near_key(rng, rng.choice(keys))
            else:
                cand = _random_key(rng, person_prob)
            if cand.text not in used:
                qkey = cand
                break
        assert qkey is not None
        qrel = rng.choice(W.ATTRIBUTES)
        answer, needle = IDK_WORD, None

    def clean_filler() -> str:
        while True:
            s = filler_sentence(rng)
            if qkey.text not in s:
                return s

    # interleave: filler sentences are spread over the num_facts + 1 gaps around the facts
    n_filler = _poisson_like(rng, filler_ratio * max(1, num_facts))
    gaps = [0] * (num_facts + 1)
    for _ in range(n_filler):
        gaps[rng.randrange(num_facts + 1)] += 1
    sents: list[str] = []
    for i in range(num_facts + 1):
        sents.extend(clean_filler() for _ in range(gaps[i]))
        if i < num_facts:
            sents.append(facts[i])

    if slice_edges:
        # a partial sentence at the start and/or the end; a partial fact never mentions the queried key
        def edge_source() -> str:
            return clean_filler() if rng.random() < 0.7 else _distractor_fact(rng, qkey, used, person_prob,
                                                                             value_digits)

        if rng.random() < 0.8:
            sents.insert(0, _cut_tail(rng, edge_source()))
        if rng.random() < 0.8:
            sents.append(_cut_head(rng, edge_source()))

    context = " ".join(sents)
    question, answer_prefix = _question(qkey, qrel)
    return AREpisode(context=context, question=question, answer=answer, key=qkey.text, needle=needle,
                     answer_prefix=answer_prefix, facts=facts,
                     records=[(k.text, rel, v) for k, rel, v in zip(keys, rels, vals)])


def _distractor_fact(rng, qkey, used, person_prob, digits) -> str:
    while True:
        k = _random_key(rng, person_prob)
        if k.text != qkey.text and k.text not in used:
            break
    return _fact_sentence(k, rng.choice(W.ATTRIBUTES), _random_number(rng, digits))


def _poisson_like(rng: random.Random, mean: float) -> int:
    """A cheap, deterministic count with the given mean (binomial over 2*mean trials of p=0.5)."""
    if mean <= 0:
        return 0
    n = int(round(2 * mean))
    return sum(rng.random() < 0.5 for _ in range(n))


def _key_from_text(text: str) -> _Key:
    a, b = text.split(" ", 1)
    return _Key("person" if a[0].isupper() else "thing", a, b)


def extra_question(rng: random.Random, ep: AREpisode, present_prob: float = 0.6,
                   person_prob: float = 0.2) -> tuple[str, str, str]:
    """Another (question, answer prefix, answer) about the same document: a random fact of it, or an absent key."""
    if ep.records and rng.random() < present_prob:
        k, rel, v = rng.choice(ep.records)
        return (*_question(_key_from_text(k), rel), v)
    keys = [_key_from_text(k) for k, _, _ in ep.records]
    while True:
        cand = _near_key(rng, rng.choice(keys)) if keys and rng.random() < 0.5 else _random_key(rng, person_prob)
        if cand.text not in ep.context:
            break
    return (*_question(cand, rng.choice(W.ATTRIBUTES)), IDK_WORD)


def ar_messages(ep: AREpisode, template: str = AR_TEMPLATE) -> list[dict]:
    """Chat messages (user turn only) for ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``."""
    return [{"role": "user", "content": ep.user_message(template)}]


# --------------------------------------------------------------------------- documents of a given token length
def tokens_per_fact(tok, filler_ratio: float, seed: int = 20_000, n: int = 20) -> float:
    """Mean context tokens per fact in ``tok``'s tokens (40-fact documents), to size documents to a token length."""
    rng = random.Random(seed)
    tot = facts = 0
    for _ in range(n):
        ep = make_ar_episode(rng, 40, filler_ratio=filler_ratio)
        tot += len(tok.encode(ep.context, add_special_tokens=False))
        facts += 40
    return tot / facts


def long_episodes(tok, target_tokens: int, n: int, seed: int, filler_ratio: float = 1.0, present: bool = True):
    """``n`` episodes whose contexts are about ``target_tokens`` tokens long (needle uniformly placed)."""
    per_fact = tokens_per_fact(tok, filler_ratio)
    num_facts = max(1, round(target_tokens / per_fact))
    rng = random.Random(seed)
    return [make_ar_episode(rng, num_facts, filler_ratio=filler_ratio, present=present) for _ in range(n)], num_facts
