"""RULER's generators, part 2: common words (CWE), frequent words (FWE) and QA over SQuAD / HotpotQA documents
(see :mod:`oprm.tasks.ruler_gen` for the shared parts and the differences from the official scripts)."""

from __future__ import annotations

import json
import math
import random
import string
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from oprm.errors import OPRMUsageError

from .ruler_gen import RulerInput, ruler_table, split_template, wonder_words

__all__ = ["cwe_maker", "fwe_sample", "qa_maker", "read_squad", "read_hotpotqa", "zeta"]


# --------------------------------------------------------------------------- common words extraction
@lru_cache(maxsize=4)
def _cwe_words(seed: int) -> tuple[str, ...]:
    w = wonder_words()
    words = sorted(set(w["noun"] + w["adjective"] + w["verb"]))
    random.Random(seed).shuffle(words)
    return tuple(words)


def cwe_maker(spec: dict, rng: random.Random, seed: int, length: int) -> Callable[[int], RulerInput]:
    """``make(num_words)``: a numbered list where ``num_cw`` words repeat ``freq_cw`` times and the rest ``freq_ucw``
    times, after RULER's answered example (below 4K tokens: 6 and 1 repeats, a 20-word example with 3/1)."""
    tmpl = ruler_table()["templates"]["common_words_extraction"]
    words = _cwe_words(seed)
    num_cw = spec["num_cw"]

    def example(num_words: int, common_repeats: int, uncommon_repeats: int) -> tuple[str, list[str]]:
        if num_words > len(words):
            raise OPRMUsageError(f"RULER CWE: {num_words} distinct words needed, wonderwords has {len(words)} "
                                 "(RULER then falls back to its english_words.json, which oprm does not ship)")
        picked = rng.sample(words, num_words)
        common, uncommon = picked[:num_cw], picked[num_cw:]
        listed = common * common_repeats + uncommon * uncommon_repeats
        random.Random(seed).shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

    def make(num_words: int) -> RulerInput:
        shots = []
        if length < 4096:
            for _ in range(spec["num_fewshot"]):
                shots.append(example(20, 3, 1))
            context, answers = example(num_words, 6, 1)
        else:
            for _ in range(spec["num_fewshot"]):
                shots.append(example(40, 10, 3))
            context, answers = example(num_words, spec["freq_cw"], spec["freq_ucw"])
        shown = []
        for ctx, ans in shots:  # the example is the whole task text, answer prefix and answer included
            b, a, p = split_template(tmpl["template"], tmpl["answer_prefix"], num_cw=num_cw, query="")
            shown.append(b + ctx + a + p + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ans)))
        before, after, prefix = split_template(tmpl["template"], tmpl["answer_prefix"], num_cw=num_cw, query="")
        return RulerInput("\n".join(shown) + "\n" + before, context, after, prefix, list(answers))

    return make


# --------------------------------------------------------------------------- frequent words extraction
def zeta(alpha: float) -> float:
    """Riemann zeta for alpha > 1 (scipy.special.zeta's value; Euler-Maclaurin tail after 1000 terms)."""
    if alpha == 2.0:
        return math.pi ** 2 / 6
    n = 1000
    head = sum(k ** -alpha for k in range(1, n))
    return head + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha + alpha * n ** (-alpha - 1) / 12


def fwe_sample(spec: dict, rng: random.Random, seed: int, count: Callable[[RulerInput], int], max_len: int,
               num_words: int = -1) -> tuple[RulerInput, int]:
    """One FWE input of at most ``max_len`` tokens and the word count used: a fresh vocabulary of random 6-letter
    words, word k of it repeated int(num_words * k**-alpha / zeta(alpha)) times, shuffled; word 1 is '...' (noise) and
    words 2-4 are the answer. With ``num_words=-1`` the count grows from ``max_len // 6`` in steps of
    ``max_len // 32`` until the text reaches ``max_len``, then steps back once (RULER's calibration)."""
    tmpl = ruler_table()["templates"]["freq_words_extraction"]
    alpha, wordlen = float(spec["alpha"]), int(spec["coded_wordlen"])
    vocab_size, incremental = max_len // 50, max(max_len // 32, 1)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=wordlen)) for _ in range(vocab_size)]
    while len(set(vocab)) < vocab_size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=wordlen)))
    vocab = sorted(set(vocab))
    random.Random(seed).shuffle(vocab)
    vocab[0] = "..."  # the top-ranked word is noise
    ranks = np.arange(1, len(vocab) + 1)
    z = zeta(alpha)

    def text(n: int) -> RulerInput:
        counts = (n * (ranks ** -alpha) / z).astype(int)
        sampled = [w for w, c in zip(vocab, counts) for _ in range(c)]
        random.Random(seed).shuffle(sampled)
        before, after, prefix = split_template(tmpl["template"], tmpl["answer_prefix"], query="")
        return RulerInput(before, " ".join(sampled), after, prefix, vocab[1:4])

    if num_words > 0:
        inp = text(num_words)
        while count(inp) > max_len and num_words > incremental:
            num_words -= incremental
            inp = text(num_words)
    else:
        num_words = max_len // wordlen
        while count(text(num_words)) < max_len:
            num_words += incremental
        num_words -= incremental
    return text(num_words), num_words


# --------------------------------------------------------------------------- QA
def _load_json(path: str | Path, what: str):
    p = Path(path)
    if not p.is_file():
        raise OPRMUsageError(f"{what}: no such file {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OPRMUsageError(f"{what}: {p} is not valid JSON ({exc.msg})") from None


@lru_cache(maxsize=2)
def read_squad(path: str) -> tuple[list[dict], list[str]]:
    """SQuAD v2 dev (``dev-v2.0.json``): answerable questions, each with its paragraph and the other paragraphs of
    its article (RULER's preferred distractors); documents are the distinct paragraphs, sorted."""
    data = _load_json(path, "--ruler-squad")
    try:
        docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
        index = {c: i for i, c in enumerate(docs)}
        qas = []
        for d in data["data"]:
            more = [index[p["context"]] for p in d["paragraphs"]]
            for p in d["paragraphs"]:
                for qa in p["qas"]:
                    if not qa.get("is_impossible", False):
                        own = index[p["context"]]
                        qas.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                    "context": [own], "more_context": [i for i in more if i != own]})
    except (KeyError, TypeError):
        raise OPRMUsageError(f"--ruler-squad: {path} is not a SQuAD v2 file (data/paragraphs/qas)") from None
    return qas, docs


@lru_cache(maxsize=2)
def read_hotpotqa(path: str) -> tuple[list[dict], list[str]]:
    """HotpotQA dev (distractor setting): documents are ``title\\nparagraph``, sorted; a question's own documents
    are its ten context paragraphs."""
    data = _load_json(path, "--ruler-hotpotqa")
    try:
        docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
        index = {c: i for i, c in enumerate(docs)}
        qas = [{"query": d["question"], "outputs": [d["answer"]],
                "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
    except (KeyError, TypeError, ValueError):
        raise OPRMUsageError(f"--ruler-hotpotqa: {path} is not a HotpotQA file (question/answer/context)") from None
    return qas, docs


def qa_maker(qas: list[dict], docs: list[str], index: int, rng: random.Random, seed: int
             ) -> Callable[[int], RulerInput]:
    """``make(num_docs)`` for question ``index``: its documents, then its article's other paragraphs, then random
    documents, shuffled and numbered ``Document i:``."""
    table = ruler_table()
    tmpl = table["templates"]["qa"]
    if index >= len(qas):
        raise OPRMUsageError(f"RULER QA: sample {index} asked for, the file has {len(qas)} answerable questions")
    qa = qas[index]

    def make(num_docs: int) -> RulerInput:
        own, more = qa["context"], qa.get("more_context", [])
        if num_docs < len(docs):
            if num_docs - len(own) > len(more):
                taken = set(own + more)
                rest = [i for i in range(len(docs)) if i not in taken]
                ids = own + more + rng.sample(rest, max(0, num_docs - len(own) - len(more)))
            else:
                ids = own + rng.sample(more, max(0, num_docs - len(own)))
            chosen = [docs[i] for i in ids]
        else:
            chosen = list(docs)
        random.Random(seed).shuffle(chosen)
        context = "\n\n".join(table["document_prompt"].format(i=i + 1, document=d) for i, d in enumerate(chosen))
        before, after, prefix = split_template(tmpl["template"], tmpl["answer_prefix"], query=qa["query"])
        return RulerInput(before, context, after, prefix, list(qa["outputs"]), query=qa["query"])

    return make
