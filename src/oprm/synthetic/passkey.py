"""Pass-key retrieval episodes (the classic Landmark-Attention / LongLoRA format, written from its description).

An instruction, a long run of repeated "garbage" sentences, one line ``The pass key is N. Remember it. N is the pass
key.`` at a chosen depth, then the question. Scored by exact number match (``number_match``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

__all__ = ["PASSKEY_TEMPLATE", "GARBAGE", "PasskeyEpisode", "make_passkey_episode"]

PASSKEY_TEMPLATE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n\n{context}\n\n{input}"
)
QUESTION = "What is the pass key? The pass key is"
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."


@dataclass
class PasskeyEpisode:
    context: str
    question: str
    answer: str
    needle: str
    depth: float
    length: int


def make_passkey_episode(seed: int | random.Random, length: int, *, depth: float | None = None,
                         count: Callable[[str], int] = lambda s: len(s.split()), digits: int = 5) -> PasskeyEpisode:
    """About ``length`` units (``count``; words by default) of garbage with the pass key at ``depth`` percent."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    key = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    needle = NEEDLE.format(key=key)
    per = max(1, count(GARBAGE))
    n = max(1, (length - count(needle)) // per)
    d = rng.uniform(0, 100) if depth is None else float(depth)
    pos = int(round(n * d / 100))
    parts = [GARBAGE] * pos + [needle] + [GARBAGE] * (n - pos)
    context = " ".join(parts)
    return PasskeyEpisode(context=context, question=QUESTION, answer=key, needle=needle, depth=d,
                          length=count(context))
