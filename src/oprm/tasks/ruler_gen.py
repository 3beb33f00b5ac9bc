"""RULER's generators, part 1: what every task shares (sizes found by binary search, haystacks, words), NIAH and
variable tracking. Part 2 (:mod:`oprm.tasks.ruler_words`) has CWE, FWE and QA.

Written from the official generators' logic (NVIDIA/RULER ``scripts/data/synthetic/*.py``, read as a specification;
strings in ``ruler_tasks.json``). A generator is a function ``make(size) -> RulerInput`` that draws from the run's
random streams (``rng``: Python's ``random``, ``nprng``: NumPy's, both seeded with the run's seed as RULER seeds its
globals); :func:`fit_samples` finds the largest size whose input plus the task's ``tokens_to_generate`` fits the target
length in the model's own tokens (RULER's binary search), then draws the samples, shrinking one by the task's
increment when a draw comes out too long (as RULER does).

Where oprm differs from the official scripts, by design (see docs/ruler.md): the chat template is applied by the
engine after generation, so the singular/plural rewording and the few-shot examples touch the task text only, never
the model's template; sentences of the essay haystack are cut by a regular expression instead of NLTK's punkt (no
download); adjective-noun keys are drawn uniformly from the same pairs without building RULER's 6-million-entry list.
"""

from __future__ import annotations

import random
import re
import string
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from oprm.errors import OPRMUsageError

__all__ = ["RulerInput", "RULER_DEPTHS", "fit_samples", "load_essay", "niah_maker", "vt_maker", "ruler_table",
           "wonder_words", "pair_word"]

_CONTEXT_MARK, _QUERY_MARK = "\x00CTX\x00", "\x00QRY\x00"
# np.round(np.linspace(0, 100, num=40)).astype(int), as RULER (NumPy's round-half-to-even included)
RULER_DEPTHS: list[int] = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]


@lru_cache(maxsize=1)
def ruler_table() -> dict:
    import json
    from importlib import resources

    return json.loads(resources.files("oprm.tasks").joinpath("ruler_tasks.json").read_text(encoding="utf-8"))


@dataclass
class RulerInput:
    """One generated input: ``prefix + context + suffix`` is RULER's task text, ``answer_prefix`` follows it (after
    the chat template's assistant header when there is one)."""

    prefix: str
    context: str
    suffix: str
    answer_prefix: str
    answers: list[str]
    query: str = ""
    gold: str | None = None  # the needle holding the first answer (oracle mode)
    info: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.prefix + self.context + self.suffix

    def template(self) -> str:
        """The prompt template for the engine: ``{context}`` where the haystack is, ``{input}`` for the query."""
        def esc(s: str) -> str:
            return s.replace("{", "{{").replace("}", "}}")

        suffix = esc(self.suffix)
        q = esc(self.query)
        if q and q in suffix:
            suffix = suffix.replace(q, "{input}", 1)
        return esc(self.prefix) + "{context}" + suffix

    def escaped_answer_prefix(self) -> str:
        return self.answer_prefix.replace("{", "{{").replace("}", "}}")


def split_template(template: str, answer_prefix: str, **fields) -> tuple[str, str, str]:
    """(text before the context, text after it, answer prefix) of an official template with ``fields`` filled."""
    before, after = template.split("{context}")
    return before.format(**fields), after.format(**fields), answer_prefix.format(**fields)


def fit_samples(make: Callable[[int], RulerInput], count: Callable[[RulerInput], int], length: int,
                tokens_to_generate: int, incremental: int, n: int, estimate_size: int | None = None,
                estimate_factor: float = 3.0, minimum: int = 1) -> list[tuple[RulerInput, int]]:
    """RULER's sizing: estimate tokens per haystack unit from one draw, binary-search the largest size with
    ``count(input) + tokens_to_generate <= length``, then draw ``n`` samples (each shrunk by ``incremental`` until it
    fits). ``minimum``: the smallest size the generator can build. Returns (input, length counted as RULER does: input
    tokens + tokens_to_generate) pairs."""
    budget = length - tokens_to_generate
    probe = estimate_size or incremental
    per_unit = max(count(make(probe)), 1) / probe
    # RULER's lower bound is ``incremental``; ``minimum`` here, so short targets that RULER cannot build (it loops)
    # still work
    lower, upper = minimum, max(int((budget / per_unit) * estimate_factor), incremental * 2)
    best = None
    while lower <= upper:
        mid = (lower + upper) // 2
        if count(make(mid)) <= budget:
            best, lower = mid, mid + 1
        else:
            upper = mid - 1
    size = best if best is not None else minimum
    out = []
    for _ in range(n):
        used = size
        while True:
            inp = make(used)
            total = count(inp) + tokens_to_generate
            if total <= length:
                break
            if used <= minimum:
                raise OPRMUsageError(f"RULER: length {length} is too short for this task (the smallest input takes "
                                     f"{total} tokens with the generation budget)")
            used = used - incremental if used - incremental >= minimum else used - 1
        out.append((inp, total))
    return out


# --------------------------------------------------------------------------- words and haystacks
@lru_cache(maxsize=1)
def wonder_words() -> dict[str, list[str]]:
    """wonderwords' noun / adjective / verb lists (the files RULER reads)."""
    try:
        from wonderwords.random_word import _get_words_from_text_file
    except ImportError:  # pragma: no cover - the eval extra installs it
        raise OPRMUsageError("RULER tasks need the wonderwords package (pip install 'oprm[eval]')") from None
    return {k: list(_get_words_from_text_file(f"{k}list.txt")) for k in ("noun", "adjective", "verb")}


@lru_cache(maxsize=1)
def _pair_lists() -> tuple[list[str], list[str]]:
    w = wonder_words()
    return sorted(set(w["adjective"])), sorted(set(w["noun"]))


def pair_word(rng: random.Random) -> str:
    """An adjective-noun key, uniform over RULER's pairs (RULER draws from the sorted list of all of them)."""
    adjs, nouns = _pair_lists()
    i = rng.randrange(len(adjs) * len(nouns))
    return f"{adjs[i // len(nouns)]}-{nouns[i % len(nouns)]}"


def random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))  # 7 digits
    if kind == "words":
        return pair_word(rng)
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise OPRMUsageError(f"unknown RULER needle type {kind!r} (numbers, words, uuids)")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def load_essay(folder: str | Path | None = None) -> tuple[list[str], str]:
    """(the essay haystack as RULER's word list, its name): every ``*.txt`` of ``folder`` in name order (e.g. Paul
    Graham's essays, RULER's haystack), else the public-domain Moby-Dick chapters oprm ships."""
    if folder:
        root = Path(folder)
        files = sorted(root.glob("*.txt")) if root.is_dir() else []
        if not files:
            raise OPRMUsageError(f"--ruler-essays: no .txt files in {root}")
        text, name = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files), f"essay:{root.name}"
    else:
        from oprm.synthetic.niah import prose_haystack_path

        path = prose_haystack_path()
        text, name = path.read_text(encoding="utf-8"), f"essay:{path.stem}"
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    return words, name


def _essay_text(words: list[str], n: int) -> str:
    if n <= len(words):
        return " ".join(words[:n])
    repeats = (n + len(words) - 1) // len(words)  # RULER repeats the essays when the target needs more words
    return " ".join((words * repeats)[:n])


def insert_by_depth(sentences: list[str], inserts: list[str], rng: random.Random) -> str:
    """Place ``inserts`` (in order) at depths drawn without replacement from RULER's 40 depths."""
    cuts = [0] + sorted(int(len(sentences) * (d / 100)) for d in rng.sample(RULER_DEPTHS, len(inserts)))
    cuts.append(len(sentences))
    parts = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(inserts):
            parts.append(inserts[i - 1])
    return " ".join(parts)


# --------------------------------------------------------------------------- NIAH
def niah_maker(spec: dict, rng: random.Random, seed: int, essay: list[str] | None) -> Callable[[int], RulerInput]:
    """``make(num_haystack)`` of a NIAH task (``spec``: one entry of ``ruler_tasks.json``'s tasks)."""
    table = ruler_table()
    tmpl = table["templates"]["niah"]
    needle, noise = table["needle"], table["noise"]
    kind_k, kind_v, kind_h = spec["type_needle_k"], spec["type_needle_v"], spec["type_haystack"]
    num_q = spec["num_needle_q"]
    num_k, num_v = max(spec["num_needle_k"], num_q), spec["num_needle_v"]
    singular = num_q * num_v == 1
    template, answer_prefix = tmpl["template"], tmpl["answer_prefix"]
    if singular:  # RULER's wording rule for one answer (applied to the task text only, see the module note)
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, answer_prefix = template.replace(old, new), answer_prefix.replace(old, new)
    type_v = kind_v[:-1] if singular else kind_v

    def make(num_haystack: int) -> RulerInput:
        keys, values, needles = [], [], []
        for _ in range(num_k):
            keys.append(random_value(kind_k, rng))
            vals = []
            for _ in range(num_v):
                vals.append(random_value(kind_v, rng))
                needles.append(needle.format(type_needle_v=kind_v, key=keys[-1], value=vals[-1]))
            values.append(vals)
        random.Random(seed).shuffle(needles)  # RULER shuffles with a fresh generator of the run's seed
        if kind_h == "essay":
            context = insert_by_depth(_sentences(_essay_text(essay, num_haystack)), needles, rng)
        else:
            if kind_h == "noise":
                sentences = [noise] * num_haystack
            else:  # "needle": distractor needles with other keys and values
                sentences = [needle.format(type_needle_v=kind_v, key=random_value(kind_k, rng),
                                           value=random_value(kind_v, rng)) for _ in range(num_haystack)]
            for index, element in zip(sorted(rng.sample(range(num_haystack), len(needles)), reverse=True), needles):
                sentences.insert(index, element)
            context = "\n".join(sentences)
        picked = rng.sample(range(num_k), num_q)
        queries = [keys[i] for i in picked]
        answers = [a for i in picked for a in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        before, after, prefix = split_template(template, answer_prefix, type_needle_v=type_v, query=query)
        gold = next(n for n in needles if n.endswith(f"{answers[0]}."))
        return RulerInput(before, context, after, prefix, answers, query=query, gold=gold)

    return make


# --------------------------------------------------------------------------- variable tracking
def _chains(num_chains: int, num_hops: int, rng: random.Random, nprng: np.random.RandomState, icl: bool):
    k = 3 if icl else 5
    hops = min(10, num_hops) if icl else num_hops
    names = ["".join(rng.choices(string.ascii_uppercase, k=k)) for _ in range((hops + 1) * num_chains)]
    while len(set(names)) < num_chains * (hops + 1):
        names.append("".join(rng.choices(string.ascii_uppercase, k=k)))
    variables, chains = [], []
    for i in range(0, len(names), hops + 1):
        these = names[i:i + hops + 1]
        variables.append(these)
        first = "12345" if icl else str(nprng.randint(10000, 99999))
        chains.append([f"VAR {these[0]} = {first}"] + [f"VAR {these[j + 1]} = VAR {these[j]} " for j in range(hops)])
    return variables, chains, hops


def vt_maker(spec: dict, rng: random.Random, nprng: np.random.RandomState, essay: list[str] | None,
             icl: bool = False) -> Callable[[int], RulerInput]:
    """``make(num_noises)`` of variable tracking; ``icl=True`` builds RULER's one-shot example (3-letter names, value
    12345), which the caller answers, renames per draw and puts before the task text."""
    table = ruler_table()
    tmpl = table["templates"]["variable_tracking"]
    noise = table["noise"]

    def make(num_noises: int) -> RulerInput:
        variables, chains, hops = _chains(spec["num_chains"], spec["num_hops"], rng, nprng, icl)
        value = chains[0][0].split("=")[-1].strip()
        if spec["type_haystack"] == "essay":
            flat = _interleave(chains, rng)
            context = insert_by_depth(_sentences(_essay_text(essay, num_noises)), [c.strip() + "." for c in flat],
                                      rng)
        else:
            sentences = [noise] * num_noises
            for chain in chains:
                positions = sorted(rng.sample(range(len(sentences)), len(chain)))
                for j, pos in enumerate(positions):
                    sentences.insert(pos + j, chain[j])
            context = "\n".join(sentences)
        context = context.replace(". \n", ".\n")
        before, after, prefix = split_template(tmpl["template"], tmpl["answer_prefix"], query=value, num_v=hops + 1)
        return RulerInput(before, context, after, prefix, list(variables[0]), query=value)

    return make


def _interleave(chains: list[list[str]], rng: random.Random) -> list[str]:
    """RULER's heap shuffle: chains interleaved at random, each keeping its own order."""
    import heapq

    heap = [(rng.random(), i, 0) for i in range(len(chains))]
    heapq.heapify(heap)
    out = []
    while heap:
        _, i, j = heapq.heappop(heap)
        out.append(chains[i][j])
        if j + 1 < len(chains[i]):
            heapq.heappush(heap, (rng.random(), i, j + 1))
    return out


def randomize_example(example: str, num_hops: int, rng: random.Random, nprng: np.random.RandomState) -> str:
    """RULER's per-sample renaming of the one-shot example's variables and value."""
    for item in example.strip().split()[-num_hops - 1:]:
        example = example.replace(item, "".join(rng.choices(string.ascii_uppercase, k=len(item))))
    return example.replace("12345", str(nprng.randint(10000, 99999)))
