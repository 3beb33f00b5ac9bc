"""Every entry point answers a question like the Python API, for every selection, on a many-chunk input where the
selections disagree: ``oprm ask``, ``oprm serve``, the lm-eval model and ``oprm eval``'s sample runner.

The document: an AR episode of the shipped model with near-key distractors (facts of keys sharing a word with the
asked key, the same attribute), 16-token chunks: ~250 chunks, where ``support`` finds the needle and ``lookahead``
a distractor's value. An entry point that lost the question's text (as the lm-eval model once did) ranks like
``lookahead`` and fails here.
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from oprm import OPRM
from oprm.cli import main
from oprm.config import SELECTIONS
from oprm.errors import OPRMUsageError
from oprm.eval.configs import RunConfig
from oprm.eval.runner import run_sample
from oprm.synthetic import ar as A
from oprm.tasks import get_task

from servers import running_server
from test_serve import request

MODEL, CHUNK, NEW = "oprm-ar-mamba2", 16, 8


def disagreeing_episode(seed: int = 2) -> dict:
    """An AR document with 60 near-key distractors of the asked key inserted among its sentences."""
    rng = random.Random(seed)
    ep = A.make_ar_episode(rng, 120, filler_ratio=0.5)
    key, attribute, value = next(r for r in ep.records if r[2] in ep.needle)
    sentences = ep.context.split(". ")
    for _ in range(60):
        near = A._near_key(rng, A._key_from_text(key))
        fact = A._fact_sentence(near, attribute, A._random_number(rng, (3, 4)))
        sentences.insert(rng.randrange(len(sentences)), fact[:-1])
    return {"_id": f"near-keys-{seed}", "context": ". ".join(sentences), "input": ep.question, "answers": [value],
            "answer_prefix": ep.answer_prefix, "gold": ep.needle}


def cut(text: str) -> str:
    return text.split("\n\n")[0]  # lm-eval's stop string; the tokens before it are the same


@pytest.fixture(scope="module")
def sample():
    return disagreeing_episode()


@pytest.fixture(scope="module")
def engine():
    return OPRM.from_pretrained(MODEL, chunk_size=CHUNK)


@pytest.fixture(scope="module")
def api(engine, sample) -> dict:
    out = {}
    for selection in SELECTIONS:
        gold = {"gold_text": sample["gold"]} if selection == "oracle" else {}
        result = engine.generate(context=sample["context"], query=sample["input"], selection=selection,
                                 max_new_tokens=NEW, **gold)
        out[selection] = (result.chosen, cut(result.text))
    return out


def test_the_input_has_hundreds_of_chunks_and_the_selections_disagree(engine, sample, api):
    result = engine.generate(context=sample["context"], query=sample["input"], max_new_tokens=NEW)
    assert len(result.chunks) >= 200
    assert api["support"][1] == sample["answers"][0]
    assert api["support"][0] != api["lookahead"][0]  # the policies disagree: an entry point losing the question shows
    assert len({tuple(chosen) for chosen, _ in api.values()}) >= 3


def test_cli_answers_like_the_api(sample, api, tmp_path, capsys):
    context = tmp_path / "context.txt"
    context.write_text(sample["context"])
    for selection in SELECTIONS:
        gold = ["--gold-text", sample["gold"]] if selection == "oracle" else []
        argv = ["ask", "--model", MODEL, "--context", str(context), "--question", sample["input"], "--chunk-size",
                str(CHUNK), "--selection", selection, "--max-new-tokens", str(NEW), "--json", *gold]
        assert main(argv) == 0
        result = json.loads(capsys.readouterr().out)
        assert (result["chosen"], cut(result["text"])) == api[selection], selection


def test_server_answers_like_the_api(sample, api):
    with running_server(["--model", MODEL, "--chunk-size", str(CHUNK), "--max-new-tokens", str(NEW)]) as (port, _):
        for selection in SELECTIONS:
            gold = {"gold_text": sample["gold"]} if selection == "oracle" else {}
            body = {"model": MODEL, "messages": [{"role": "user", "content": sample["input"]}],
                    "oprm": {"context": sample["context"], "selection": selection, "explain": True, **gold}}
            status, reply = request(port, "POST", "/v1/chat/completions", body, timeout=120)
            assert status == 200, reply
            text = reply["choices"][0]["message"]["content"]
            assert (reply["oprm"]["chosen"], cut(text)) == api[selection], selection


def test_lm_eval_model_answers_like_the_api(engine, sample, api):
    pytest.importorskip("lm_eval", reason="the lm-eval extra (pip install 'oprm[lm-eval]') is not installed")
    from lm_eval.api.instance import Instance

    from oprm.lm_eval_model import OPRMLM

    doc = {"context": sample["context"], "input": sample["input"]}
    for selection in SELECTIONS:
        options = dict(engine=copy.copy(engine), context_field="context", query_field="input", selection=selection)
        if selection == "oracle":  # lm-eval gives no gold text: refused in one line, not run without it
            with pytest.raises(OPRMUsageError, match="gold"):
                OPRMLM(**options)
            continue
        lm = OPRMLM(**options)
        messages = [{"role": "user", "content": A.AR_TEMPLATE.format(context=doc["context"], input=doc["input"])},
                    {"role": "assistant", "content": sample["answer_prefix"]}]  # lm-eval's gen_prefix
        prompt = lm.apply_chat_template(messages, add_generation_prompt=False)
        gen_kwargs = {"until": ["\n\n"], "max_gen_toks": NEW, "do_sample": False}
        [text] = lm.generate_until([Instance("generate_until", doc, (prompt, gen_kwargs), 0)])
        assert lm.counts["oprm"] == 1 and text == api[selection][1], selection
    with pytest.raises(OPRMUsageError, match="query_field"):  # support without the question's field
        OPRMLM(engine=copy.copy(engine), context_field="context", selection="support")


def test_eval_runner_answers_like_the_api(engine, sample, api):
    task = get_task("ar")
    for selection in SELECTIONS:
        # oprm eval runs the oracle as its own mode (the gold text is the sample's)
        cfg = RunConfig("oracle", CHUNK) if selection == "oracle" else RunConfig("oprm", CHUNK, selection)
        record = run_sample(engine, task, sample, cfg, NEW)
        assert cut(record.get("raw_pred", record["pred"])) == api[selection][1], selection
