"""RULER-style needle-in-a-haystack episodes: single, multi-key and multi-value.

Follows the task definitions of NVIDIA/RULER (``scripts/data/synthetic/niah.py`` and ``constants.py``, read as a
specification): needles read ``One of the special magic {type} for {key} is: {value}.``, keys are adjective-noun
word pairs, values are 7-digit numbers (or UUIDs), and the question asks for *all* values of one key, scored with
``string_match_all``. The haystack is either RULER's repeated "noise" paragraph, oprm's generated filler prose, or the
sentences of a user-supplied text file (RULER's "essay" haystack uses Paul Graham essays; pass such a file).

Differences from RULER, by design: the length target is counted with the supplied ``count`` function (a tokenizer's
token count, or words by default) by adding haystack sentences until the target is reached, instead of RULER's binary
search; the answer prefix ("The special magic numbers for X mentioned in the provided text are") is not appended,
because the OPRM prompt ends with the user turn.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import words as W

__all__ = [
    "SECRET_NEEDLE", "SecretNumberEpisode", "make_secret_number_episode", "prose_haystack_path", "prose_sentences",
    "NIAH_TEMPLATE", "NIAH_TEMPLATE_SINGULAR", "NOISE_TEXT", "NIAHEpisode", "make_niah_episode", "load_haystack",
    "word_count",
]

NOISE_TEXT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

NIAH_TEMPLATE = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards.\n{{context}}\n"
    "What are all the special magic {type_v} for {{input}} mentioned in the provided text?"
)
NIAH_TEMPLATE_SINGULAR = (
    "A special magic {type_v} is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards.\n{{context}}\n"
    "What is the special magic {type_v} for {{input}} mentioned in the provided text?"
)
# RULER appends this after the chat template's assistant header, so the model continues it
NIAH_ANSWER_PREFIX = "The special magic {type_v} for {{input}} mentioned in the provided text {verb}"
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."

_SENT_SPLIT = re.compile(r"(?<=[.!?。！？])\s+")


def word_count(text: str) -> int:
    return len(text.split())


@dataclass
class NIAHEpisode:
    context: str
    question: str  # the queried key (RULER's {query})
    answers: list[str]
    needles: list[str]  # the needle sentences holding the answers, in document order
    template: str  # prompt template with {context} and {input}
    answer_prefix: str  # RULER's answer prefix (a template with {input}), continued by the model
    depth: float  # depth (percent) of the first answer needle
    length: int  # size of the context in ``count`` units
    variant: str
    distractors: list[str] = field(default_factory=list)


def load_haystack(source: str | Path | None, rng: random.Random | None = None, n_sentences: int = 4000) -> list[str]:
    """Haystack sentences: ``None``/"noise" = RULER's noise paragraph, "filler" = generated prose, else a text file."""
    if source is None or source == "noise":
        return _SENT_SPLIT.split(NOISE_TEXT)
    if source == "filler":
        from .filler import filler_sentence  # noqa: PLC0415

        rng = rng or random.Random(0)
        return [filler_sentence(rng) for _ in range(n_sentences)]
    path = Path(source)
    if not path.is_file():
        from oprm.errors import OPRMUsageError  # noqa: PLC0415

        raise OPRMUsageError(f"haystack file not found: {path} (give a UTF-8 text file, 'noise' or 'filler')")
    text = path.read_text(encoding="utf-8", errors="replace")
    sents = [s.strip() for s in _SENT_SPLIT.split(" ".join(text.split())) if s.strip()]
    if not sents:
        from oprm.errors import OPRMUsageError  # noqa: PLC0415

        raise OPRMUsageError(f"haystack file {path} has no text")
    return sents


def _key(rng: random.Random, used: set[str]) -> str:
    while True:
        k = f"{rng.choice(W.ADJECTIVES + W.COLOURS)}-{rng.choice(W.ANIMALS + W.OBJECTS)}"
        if k not in used:
            used.add(k)
            return k


def _value(rng: random.Random, value_type: str, used: set[str]) -> str:
    while True:
        if value_type == "numbers":
            v = str(rng.randint(10**6, 10**7 - 1))
        elif value_type == "uuids":
            v = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            raise ValueError(f"unknown value type {value_type!r} (numbers or uuids)")
        if v not in used:
            used.add(v)
            return v


def make_niah_episode(
    seed: int | random.Random,
    length: int,
    variant: str = "single",
    *,
    haystack: Sequence[str] | None = None,
    count: Callable[[str], int] = word_count,
    depth: float | None = None,
    num_keys: int = 4,
    num_values: int = 4,
    value_type: str = "numbers",
) -> NIAHEpisode:
    """One NIAH episode of about ``length`` units (``count``), needle(s) at ``depth`` percent (random if None).

    variant: ``single`` (1 key, 1 value), ``multikey`` (``num_keys`` needles with different keys, one is asked),
    ``multivalue`` (one key with ``num_values`` values, all must be recalled).
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    hay = list(haystack) if haystack else _SENT_SPLIT.split(NOISE_TEXT)
    type_v = "numbers" if value_type == "numbers" else "uuids"
    used_k: set[str] = set()
    used_v: set[str] = set()
    key = _key(rng, used_k)
    if variant == "single":
        needles = [NEEDLE.format(type_v=type_v, key=key, value=(v := _value(rng, value_type, used_v)))]
        answers = [v]
        distractors: list[str] = []
    elif variant == "multikey":
        answers = [_value(rng, value_type, used_v)]
        needles = [NEEDLE.format(type_v=type_v, key=key, value=answers[0])]
        distractors = [NEEDLE.format(type_v=type_v, key=_key(rng, used_k), value=_value(rng, value_type, used_v))
                       for _ in range(max(0, num_keys - 1))]
    elif variant == "multivalue":
        answers = [_value(rng, value_type, used_v) for _ in range(num_values)]
        needles = [NEEDLE.format(type_v=type_v, key=key, value=v) for v in answers]
        distractors = []
    else:
        raise ValueError(f"unknown NIAH variant {variant!r} (single, multikey, multivalue)")
    singular = variant != "multivalue"
    template = (NIAH_TEMPLATE_SINGULAR if singular else NIAH_TEMPLATE).format(type_v=type_v[:-1] if singular else type_v)
    answer_prefix = NIAH_ANSWER_PREFIX.format(type_v=type_v[:-1] if singular else type_v,
                                              verb="is" if singular else "are")

    # haystack: consecutive sentences (cycling) from a random start until the target size is reached
    all_needles = needles + distractors
    budget = max(0, length - sum(count(n) for n in all_needles))
    cache: dict[str, int] = {}
    body: list[str] = []
    total = 0
    i = rng.randrange(len(hay))
    while total < budget:
        s = hay[i % len(hay)]
        c = cache.get(s)
        if c is None:
            c = cache[s] = max(1, count(s))
        body.append(s)
        total += c
        i += 1
    # depth of the answer needle; other needles at random depths (RULER samples depths for every needle)
    first_depth = float(rng.choice([100 * j / 39 for j in range(40)])) if depth is None else float(depth)
    depths = [first_depth] + [rng.uniform(0, 100) for _ in all_needles[1:]]
    placed = sorted(zip(depths, range(len(all_needles))), key=lambda t: (t[0], t[1]))
    out = list(body)
    # insert from the deepest to the shallowest so earlier insert positions stay valid
    for d, j in sorted(placed, key=lambda t: -t[0]):
        pos = int(round(len(body) * d / 100))
        out.insert(min(pos, len(out)), all_needles[j])
    context = " ".join(out)
    return NIAHEpisode(context=context, question=key, answers=answers, needles=[n for n in out if n in needles],
                       answer_prefix=answer_prefix,
                       template=template, depth=first_depth, length=count(context), variant=variant, distractors=distractors)


# --------------------------------------------------------------------------- real-prose haystack, secret-number needle
DATA_DIR = Path(__file__).resolve().parent / "data"
PROSE_HAYSTACK = "moby_dick_ch1-18.txt"
SECRET_NEEDLE = "The secret number written inside the {thing} of {person} is {value}."
SECRET_QUESTION = "What is the secret number written inside the {thing} of {person}?"


def prose_haystack_path() -> Path:
    """The public-domain prose shipped with oprm (Moby-Dick, chapters 1-18; see ``data/README.md``)."""
    return DATA_DIR / PROSE_HAYSTACK


def prose_sentences(path: str | Path | None = None) -> list[str]:
    """The sentences of a prose file (default: the shipped Moby-Dick chapters), hard-wrapped lines joined, cut by
    :func:`oprm.chunking.sentence_spans` (the same rules boundary-safe chunking uses)."""
    from oprm.chunking import sentence_spans  # noqa: PLC0415

    text = Path(path or prose_haystack_path()).read_text(encoding="utf-8")
    text = re.sub(r"(?<!\n)\n(?!\n)", " ", text)  # unwrap lines; blank lines stay paragraph breaks
    text = re.sub(r"\n\s*\n\s*", "\n\n", text)
    return [text[s:e].strip() for s, e in sentence_spans(text) if text[s:e].strip()]


@dataclass
class SecretNumberEpisode:
    context: str
    question: str
    answer: str
    needle: str
    depth: float  # percent of the haystack sentences before the needle
    length: int  # size of the context in ``count`` units


def make_secret_number_episode(seed: int | random.Random, length: int, *, haystack: Sequence[str] | None = None,
                               count: Callable[[str], int] = word_count, depth: float | None = None
                               ) -> SecretNumberEpisode:
    """A needle sentence ``The secret number written inside the <thing> of <person> is <5 digits>.`` planted at a
    random depth (between two sentences) of about ``length`` units (``count``) of consecutive prose (default: the
    shipped Moby-Dick chapters, read cyclically from a random sentence). The question is asked as plain QA (``oprm
    ask``'s default prompt, no answer prefix)."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    sents = list(haystack) if haystack else prose_sentences()
    thing = rng.choice(W.OBJECTS)
    person = f"{rng.choice(W.FIRST_NAMES)} {rng.choice(W.SURNAMES)}"
    value = str(rng.randint(10_000, 99_999))
    needle = SECRET_NEEDLE.format(thing=thing, person=person, value=value)
    budget = max(0, length - count(needle))
    body, total, i = [], 0, rng.randrange(len(sents))
    # count the running text in blocks of sentences (a tokenizer call per sentence is slow for 32K tokens)
    while total < budget:
        block = sents[i % len(sents): i % len(sents) + 16] or sents[:16]
        i += len(block)
        body.extend(block)
        total += count(" ".join(block))
    while len(body) > 1 and total - count(body[-1]) >= budget:  # trim the overshoot of the last block
        total -= count(body.pop())
    d = rng.uniform(0, 100) if depth is None else float(depth)
    pos = int(round(len(body) * d / 100))
    body.insert(pos, needle)
    context = " ".join(body)
    return SecretNumberEpisode(context=context, question=SECRET_QUESTION.format(thing=thing, person=person),
                               answer=value, needle=needle, depth=100 * pos / max(1, len(body) - 1),
                               length=count(context))
