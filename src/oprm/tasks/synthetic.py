"""Synthetic tasks for ``oprm eval``: associative recall (``ar``), RULER-style NIAH and pass-key retrieval.

Samples use the LongBench schema (``_id, context, input, answers, all_classes, length``) plus ``gold`` (the needle
sentence, for the oracle mode) and ``setting`` (``num_facts`` or ``target_length``/``depth``) for the plots.
Every sample is generated from its own seed string, so runs are reproducible and resumable.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Callable

from oprm.tasks.task import Task

__all__ = ["synthetic_task", "synthetic_samples", "DEFAULT_OPTIONS", "OVERFLOW_MULTIPLES"]

# the overflow curve (the paper's Fig. 1): context lengths as multiples of a model's training length, as swept by
# `oprm demo` and by the shipped model's measurement (oprm.training.measure)
OVERFLOW_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)

DEFAULT_OPTIONS: dict[str, Any] = {
    "samples_per_setting": 20,
    "ar_num_facts": [15, 30, 60, 120, 160],
    "ar_filler_ratio": 1.0,
    "ar_absent_fraction": 0.0,  # share of AR episodes whose key is absent (gold answer = "Error")
    "lengths": [1000, 2000, 4000, 8000],  # NIAH / pass-key context sizes (tokens with a tokenizer, else words)
    "depths": None,  # None = random depth per sample (RULER), else a list of percents cycled over the samples
    "haystack": "noise",  # "noise" | "filler" | path to a text file
    "value_type": "numbers",  # NIAH values: numbers | uuids
    "tokenizer": None,  # count lengths in this tokenizer's tokens
}


def synthetic_task(name: str) -> Task:
    if name == "ar":
        from oprm.synthetic.ar import AR_TEMPLATE  # noqa: PLC0415

        return Task(name="ar", dataset="ar", suite="synthetic", category="Synthetic (AR)", language="en",
                    metric="word_match", template=AR_TEMPLATE, idk_template=None, max_new_tokens=16,
                    oprm_max_new_tokens=16)
    if name.startswith("niah_"):
        from oprm.synthetic.niah import NIAH_TEMPLATE  # noqa: PLC0415

        # the real template is per sample (singular/plural wording); this one documents the shape
        return Task(name=name, dataset=name, suite="synthetic", category="Synthetic (NIAH)", language="en",
                    metric="string_match_all", template=NIAH_TEMPLATE.format(type_v="numbers"), max_new_tokens=128,
                    oprm_max_new_tokens=64, params={"variant": name[len("niah_"):].removesuffix("_lite")})
    if name == "secret_number":
        from oprm.prompts import default_qa_template  # noqa: PLC0415

        # a needle sentence in public-domain prose, asked with `oprm ask`'s own default prompt (no answer prefix)
        return Task(name="secret_number", dataset="secret_number", suite="synthetic", category="Synthetic (prose NIAH)",
                    language="en", metric="word_match", template=default_qa_template(), max_new_tokens=24,
                    oprm_max_new_tokens=24)
    if name == "passkey":
        from oprm.synthetic.passkey import PASSKEY_TEMPLATE  # noqa: PLC0415

        return Task(name="passkey", dataset="passkey", suite="synthetic", category="Synthetic (passkey)",
                    language="en", metric="word_match", template=PASSKEY_TEMPLATE, max_new_tokens=16,
                    oprm_max_new_tokens=16)
    raise KeyError(name)


def _counter(tokenizer) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda s: len(s.split())

    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    return count


def synthetic_samples(task: Task, limit: int | None = None, seed: int = 42, options: dict | None = None) -> list[dict]:
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    per = int(opts["samples_per_setting"])
    if limit is not None:
        per = min(per, int(limit))
    out: list[dict] = []
    if task.name == "ar":
        from oprm.synthetic.ar import make_ar_episode  # noqa: PLC0415

        for nf in opts["ar_num_facts"]:
            for i in range(per):
                rng = random.Random(f"{seed}-ar-{nf}-{i}")
                present = rng.random() >= float(opts["ar_absent_fraction"])
                ep = make_ar_episode(rng, int(nf), filler_ratio=float(opts["ar_filler_ratio"]), present=present)
                out.append({
                    "_id": f"ar-f{nf}-{i}-s{seed}", "context": ep.context, "input": ep.question,
                    "answers": [ep.answer], "all_classes": None, "length": len(ep.context.split()),
                    "dataset": "ar", "language": "en", "gold": ep.needle, "answer_prefix": ep.answer_prefix,
                    "setting": {"num_facts": int(nf)},
                    "present": ep.needle is not None,
                })
        return out

    count = _counter(opts["tokenizer"])
    depths = opts["depths"]
    if task.name.startswith("niah_"):
        from oprm.synthetic.niah import load_haystack, make_niah_episode  # noqa: PLC0415

        hay = load_haystack(opts["haystack"], random.Random(f"{seed}-haystack"))
        for length in opts["lengths"]:
            for i in range(per):
                rng = random.Random(f"{seed}-{task.name}-{length}-{i}")
                depth = None if not depths else depths[i % len(depths)]
                ep = make_niah_episode(rng, int(length), task.params["variant"], haystack=hay, count=count,
                                       depth=depth, value_type=opts["value_type"])
                out.append({
                    "_id": f"{task.name}-L{length}-{i}-s{seed}", "context": ep.context, "input": ep.question,
                    "answers": ep.answers, "all_classes": None, "length": len(ep.context.split()),
                    "dataset": task.name, "language": "en", "gold": ep.needles[0], "template": ep.template,
                    "answer_prefix": ep.answer_prefix,
                    "setting": {"target_length": int(length), "depth": round(ep.depth, 2)},
                })
        return out
    if task.name in ("secret_number", "passkey"):  # one needle, one answer; they differ in haystack and needle
        if task.name == "secret_number":
            from oprm.synthetic.niah import make_secret_number_episode, prose_sentences  # noqa: PLC0415

            hay = prose_sentences(None if opts["haystack"] in ("noise", "filler") else opts["haystack"])
            make, rng_name = functools.partial(make_secret_number_episode, haystack=hay), "secret"
        else:
            from oprm.synthetic.passkey import make_passkey_episode as make  # noqa: PLC0415

            rng_name = "passkey"
        for length in opts["lengths"]:
            for i in range(per):
                rng = random.Random(f"{seed}-{rng_name}-{length}-{i}")
                depth = None if not depths else depths[i % len(depths)]
                ep = make(rng, int(length), count=count, depth=depth)
                out.append({
                    "_id": f"{task.name}-L{length}-{i}-s{seed}", "context": ep.context, "input": ep.question,
                    "answers": [ep.answer], "all_classes": None, "length": len(ep.context.split()),
                    "dataset": task.name, "language": "en", "gold": ep.needle,
                    "setting": {"target_length": int(length), "depth": round(ep.depth, 2)},
                })
        return out
    raise KeyError(task.name)
