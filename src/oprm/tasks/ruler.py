"""RULER (NVIDIA/RULER's 13 synthetic tasks) in ``oprm eval``: the tasks as data and their samples.

Task names: ``niah_single_1..3``, ``niah_multikey_1..3``, ``niah_multivalue``, ``niah_multiquery``, ``ruler_vt``,
``ruler_cwe``, ``ruler_fwe``, ``ruler_qa_1`` (SQuAD v2) and ``ruler_qa_2`` (HotpotQA); the group ``ruler`` is all 13.
Settings and strings live in ``ruler_tasks.json``; generators in :mod:`oprm.tasks.ruler_gen` /
:mod:`oprm.tasks.ruler_words`. Each (task, length) draws from one random stream seeded with ``--seed`` (as RULER
seeds its globals), so sample i is the same whatever the number of samples asked, and a run resumes by sample id.

Samples carry RULER's split: ``context`` is the haystack (OPRM's C), ``template`` the task text around it (P and S),
``answer_prefix`` RULER's answer prefix (appended after the chat template's assistant header, as RULER's pipeline
does); ``length`` is RULER's: input tokens (chat template included) + the task's tokens to generate.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from oprm.errors import OPRMUsageError
from oprm.tasks.task import Task

__all__ = ["RULER_TASKS", "RULER_QA_TASKS", "ruler_task", "ruler_samples", "ruler_counter", "RULER_DEFAULT_LENGTHS"]

RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
               "niah_multikey_3", "niah_multivalue", "niah_multiquery", "ruler_vt", "ruler_cwe", "ruler_fwe",
               "ruler_qa_1", "ruler_qa_2")
RULER_QA_TASKS = {"ruler_qa_1": "ruler_squad", "ruler_qa_2": "ruler_hotpotqa"}  # task -> option naming its file
RULER_DEFAULT_LENGTHS = (4096,)


def _spec(name: str) -> dict:
    from .ruler_gen import ruler_table

    return ruler_table()["tasks"][name]


def ruler_task(name: str) -> Task:
    from .ruler_gen import ruler_table

    spec = _spec(name)
    tmpl = ruler_table()["templates"][spec["generator"]]
    ttg = int(tmpl["tokens_to_generate"])
    # the template shown here documents the shape; every sample carries its own filled one
    return Task(name=name, dataset=name, suite="ruler", category=spec["category"], language="en",
                metric=spec["metric"], template=tmpl["template"].replace("{query}", "{input}"), max_new_tokens=ttg,
                oprm_max_new_tokens=ttg, params=dict(spec))


def ruler_counter(tokenizer, chat: bool = True, system_prompt: str | None = None) -> Callable:
    """Tokens of a generated input as the model reads it: P, C and S as the engine builds them (the task text in the
    chat template's user turn when ``chat`` and the tokenizer has one, then the answer prefix), so vanilla and OPRM
    both read at most the target length. Without a tokenizer: words."""
    if tokenizer is None:
        return lambda inp: len((inp.text + inp.answer_prefix).split())
    from oprm.prompts import build_prompt

    def count(inp) -> int:
        parts = build_prompt(tokenizer, inp.context, inp.template(), {"input": inp.query}, chat=chat,
                             system_prompt=system_prompt, answer_prefix=inp.escaped_answer_prefix())
        return len(parts.prefix_ids) + len(parts.context_ids) + len(parts.suffix_ids)

    return count


def _inputs(task: Task, length: int, n: int, seed: int, count: Callable, opts: dict) -> tuple[list, str]:
    from .ruler_gen import fit_samples, load_essay, niah_maker, randomize_example, vt_maker
    from .ruler_words import cwe_maker, fwe_sample, qa_maker, read_hotpotqa, read_squad

    spec, gen = task.params, task.params["generator"]
    rng, nprng = random.Random(seed), np.random.RandomState(seed)
    ttg = task.max_new_tokens
    kind = spec.get("type_haystack")
    essay, hay_name = load_essay(opts.get("ruler_essays")) if kind == "essay" else (None, kind or "-")
    if gen == "niah":
        inc = 500 if kind == "essay" else (25 if length >= 4096 else 5)
        least = 1 if kind == "essay" else max(spec["num_needle_k"], spec["num_needle_q"]) * spec["num_needle_v"]
        return fit_samples(niah_maker(spec, rng, seed, essay), count, length, ttg, inc, n, minimum=least), hay_name
    if gen == "variable_tracking":
        # the one-shot example: RULER builds it at 500 tokens with no generation budget, answered, then renames it
        least = 1 if kind == "essay" else spec["num_hops"] + 1
        shot = fit_samples(vt_maker(spec, rng, nprng, essay, icl=True), count, 500, 0, 50 if kind == "essay" else 5,
                           1, minimum=least)[0][0]
        example = shot.text + shot.answer_prefix + " " + " ".join(shot.answers) + "\n"
        inc = 500 if kind == "essay" else (10 if length >= 4096 else 5)
        base = vt_maker(spec, rng, nprng, essay)

        def make(num_noises: int):  # every draw gets a freshly renamed copy of the example (as RULER's draws)
            inp = base(num_noises)
            inp.prefix = randomize_example(example, spec["num_hops"], rng, nprng) + "\n" + inp.prefix
            return inp

        return fit_samples(make, count, length, ttg, inc, n, minimum=least), hay_name
    if gen == "common_words_extraction":
        return fit_samples(cwe_maker(spec, rng, seed, length), count, length, ttg, 10, n, estimate_size=4096,
                           estimate_factor=2.0), "words"
    if gen == "freq_words_extraction":
        max_len = length - ttg
        _, num_words = fwe_sample(spec, rng, seed, count, max_len)
        out = []
        for _ in range(n):
            inp, _ = fwe_sample(spec, rng, seed, count, max_len, num_words)
            out.append((inp, count(inp) + ttg))
        return out, "coded words"
    if gen == "qa":
        key = RULER_QA_TASKS[task.name]
        path = opts.get(key)
        if not path:
            raise OPRMUsageError(f"{task.name} needs --{key.replace('_', '-')} (the {spec['dataset']} dev JSON)")
        qas, docs = (read_squad if spec["dataset"] == "squad" else read_hotpotqa)(str(Path(path)))
        return [fit_samples(qa_maker(qas, docs, i, rng, seed), count, length, ttg, 10, 1)[0]
                for i in range(n)], spec["dataset"]
    raise KeyError(gen)  # pragma: no cover - the table names only these generators


def ruler_samples(task: Task, limit: int | None = None, seed: int = 42, options: dict | None = None) -> list[dict]:
    """The samples of ``task`` at every length of ``options["lengths"]`` (default 4096), ``samples_per_setting``
    each (``limit`` caps it), in the eval's sample schema."""
    opts: dict[str, Any] = dict(options or {})
    per = int(opts.get("samples_per_setting") or 20)
    if limit is not None:
        per = min(per, int(limit))
    count = opts.get("ruler_count") or ruler_counter(opts.get("tokenizer"), bool(opts.get("chat", True)),
                                                     opts.get("system_prompt"))
    lengths = opts.get("ruler_lengths") or opts.get("lengths") or RULER_DEFAULT_LENGTHS
    out = []
    for length in lengths:
        pairs, hay_name = _inputs(task, int(length), per, seed, count, opts)
        for i, (inp, total) in enumerate(pairs):
            if not inp.query and inp.suffix.strip():
                # CWE / FWE name no key: their question is the whole text after the haystack. As the sample's
                # input (the template marks it {input}, so the prompt is the same text and tokens) it gives the
                # support selection its question words and query-likelihood its span, as the other tasks' keys do
                inp = replace(inp, query=inp.suffix.strip())
            rec = {"_id": f"{task.name}-L{length}-{i}-s{seed}", "context": inp.context, "input": inp.query,
                   "template": inp.template(), "answer_prefix": inp.escaped_answer_prefix(),
                   "answers": list(inp.answers), "all_classes": None, "length": int(total), "dataset": task.name,
                   "language": "en", "setting": {"target_length": int(length), "haystack": hay_name}}
            if inp.gold:
                rec["gold"] = inp.gold
            out.append(rec)
    return out
