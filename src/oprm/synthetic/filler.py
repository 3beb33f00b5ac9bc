"""A small hand-written grammar producing varied English filler sentences (no digits, no facts)."""
from __future__ import annotations

import random

from . import words as W


def _np(rng: random.Random) -> str:
    """A noun phrase such as 'the old farmer', 'a quiet otter', 'the bell'."""
    det = rng.choice(["the", "the", "a", "one", "that"])
    r = rng.random()
    if r < 0.4:
        noun = rng.choice(W.PEOPLE)
    elif r < 0.7:
        noun = rng.choice(W.ANIMALS)
    else:
        noun = rng.choice(W.OBJECTS)
    if rng.random() < 0.45:
        noun = rng.choice(W.ADJECTIVES + W.COLOURS) + " " + noun
    if det == "a" and noun[0] in "aeiou":
        det = "an"
    return f"{det} {noun}"


def _place(rng: random.Random) -> str:
    prep = rng.choice(["in the", "near the", "to the", "across the", "behind the", "at the", "around the"])
    return f"{prep} {rng.choice(W.SETTINGS)}"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _clause(rng: random.Random) -> str:
    k = rng.randrange(9)
    if k == 0:
        return f"{_np(rng)} {rng.choice(W.INTRANSITIVE)} {_place(rng)}"
    if k == 1:
        return f"{_np(rng)} {rng.choice(W.TRANSITIVE)} {_np(rng)} {rng.choice(W.TIMES)}"
    if k == 2:
        return f"{_np(rng)} {rng.choice(W.INTRANSITIVE)} {rng.choice(W.ADVERBS)} {rng.choice(W.TIMES)}"
    if k == 3:
        return f"{_np(rng)} felt {rng.choice(W.FEELINGS)} {_place(rng)}"
    if k == 4:
        return rng.choice(W.WEATHER).lower() + " " + rng.choice(W.TIMES)
    if k == 5:
        return f"{_np(rng)} {rng.choice(W.TRANSITIVE)} {_np(rng)} {_place(rng)}"
    if k == 6:
        return f"there was {_np(rng)} {_place(rng)}"
    if k == 7:
        return f"{_np(rng)} told {_np(rng)} a story about {_np(rng)}"
    return f"{_np(rng)} {rng.choice(W.INTRANSITIVE)} with {_np(rng)}"


def filler_sentence(rng: random.Random) -> str:
    """One filler sentence, e.g. 'The old farmer walked to the market, and then a fox slept.'"""
    c = _clause(rng)
    r = rng.random()
    if r < 0.25:
        c = f"{c}, {rng.choice(W.CONNECTIVES)} {_clause(rng)}"
    elif r < 0.35:
        c = f"{rng.choice(W.WEATHER).lower()}, and {_clause(rng)}"
    end = "." if rng.random() < 0.92 else "!"
    return _cap(c) + end
