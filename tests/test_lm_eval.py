"""OPRM as an lm-evaluation-harness model: lm-eval's own CLI on a task over local JSONL files must predict exactly
what `oprm eval` predicts on the same samples; unlocated documents run vanilla; likelihoods are exact."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
yaml = pytest.importorskip("yaml")

import oprm  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from oprm.lm_eval_model import OPRMLM  # noqa: E402
from oprm.synthetic.ar import AR_TEMPLATE  # noqa: E402
from oprm.tasks import get_task  # noqa: E402
from oprm.tasks.synthetic import synthetic_samples  # noqa: E402

MODEL = "oprm-ar-mamba2"
FACTS, PER_SETTING, SEED, CHUNK, MAX_NEW = [5, 21], 3, 42, 128, 16


def env(tmp_path) -> dict:
    src = str(Path(oprm.__file__).resolve().parents[1])
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"), PYTHONPATH=src + os.pathsep +
                os.environ.get("PYTHONPATH", ""))


def write_task(tmp_path) -> Path:
    """The AR samples `oprm eval --tasks ar` makes, as a local JSONL file, and an lm-eval task over it."""
    samples = synthetic_samples(get_task("ar"), seed=SEED,
                                options={"samples_per_setting": PER_SETTING, "ar_num_facts": FACTS})
    data = tmp_path / "ar.jsonl"
    data.write_text("".join(json.dumps({k: s[k] for k in ("_id", "context", "input", "answers", "answer_prefix")})
                            + "\n" for s in samples))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    config = {"task": "oprm_ar_local", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "output_type": "generate_until",
              "doc_to_text": AR_TEMPLATE.replace("{context}", "{{context}}").replace("{input}", "{{input}}"),
              "doc_to_target": "{{answers[0]}}", "gen_prefix": "{{answer_prefix}}",
              "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": MAX_NEW, "do_sample": False},
              "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}
    (tasks / "oprm_ar_local.yaml").write_text(yaml.safe_dump(config))
    return tasks


def test_lm_eval_predictions_equal_oprm_eval(tmp_path):
    tasks = write_task(tmp_path)
    lm_eval_cmd = [sys.executable, "-m", "oprm", "lm-eval", "--model_args",
                   f"pretrained={MODEL},chunk_size={CHUNK},query_field=input",
                   "--tasks", "oprm_ar_local", "--include_path", str(tasks), "--apply_chat_template",
                   "--output_path", str(tmp_path / "lm-eval"), "--log_samples"]
    eval_cmd = [sys.executable, "-m", "oprm", "eval", "--model", MODEL, "--tasks", "ar", "--modes", "oprm",
                "--chunk-size", str(CHUNK), "--samples", str(PER_SETTING), "--ar-num-facts", ",".join(map(str, FACTS)),
                "--seed", str(SEED), "--max-new-tokens", str(MAX_NEW), "--output-path", str(tmp_path / "oprm-eval"),
                "--no-plots", "--quiet"]
    # both at once: each spends most of its time importing
    procs = [subprocess.Popen(c, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in (lm_eval_cmd, eval_cmd)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    logged = [json.loads(line) for f in (tmp_path / "lm-eval").rglob("samples_oprm_ar_local_*.jsonl")
              for line in f.read_text().splitlines()]
    ours = {r["_id"]: r for f in (tmp_path / "oprm-eval").rglob("pred/ar.jsonl")
            for r in map(json.loads, f.read_text().splitlines())}
    assert len(logged) == len(ours) == PER_SETTING * len(FACTS)
    lm_eval_preds = {s["doc"]["_id"]: s["filtered_resps"][0] for s in logged}
    oprm_preds = {i: r.get("raw_pred", r["pred"]) for i, r in ours.items()}
    assert lm_eval_preds == oprm_preds
    correct = sum(oprm_preds[i] == r["answers"][0] for i, r in ours.items())
    assert correct >= 2  # the comparison is not between empty answers
    assert "oprm_ar_local" in outs[0] and "exact_match" in outs[0]


@pytest.fixture(scope="module")
def lm():
    return OPRMLM(pretrained=MODEL, chunk_size=CHUNK, context_field="context", query_field="input")


def generate_request(prompt: str, doc: dict) -> Instance:
    return Instance("generate_until", doc, (prompt, {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}), 0)


def test_split_and_vanilla_fallback(lm, caplog):
    ep = synthetic_samples(get_task("ar"), seed=1, options={"samples_per_setting": 1, "ar_num_facts": [21]})[0]
    prompt = AR_TEMPLATE.format(context=ep["context"], input=ep["input"])
    parts = lm.split(prompt, ep)
    tok = lm.engine.tokenizer
    assert tok.decode(parts.context_ids) == ep["context"] and parts.query_span is not None
    q0, q1 = parts.query_span
    assert tok.decode(parts.suffix_ids[q0:q1]).strip() == ep["input"]
    lm.counts.update(oprm=0, vanilla=0)
    with caplog.at_level(logging.WARNING, logger="oprm.lm_eval"):
        out = lm.generate_until([generate_request(prompt, ep), generate_request(prompt, {"other": "field"})])
    assert lm.counts == {"oprm": 1, "vanilla": 1}
    assert "not found in 1 of 2 prompts" in caplog.text
    ids = lm._encode(prompt)
    vanilla = lm.engine.generate(prefix_ids=[], context_ids=ids, suffix_ids=[], mode="vanilla", max_new_tokens=8)
    assert out[1] == vanilla.text.split("\n\n")[0]
    assert out[0] == lm.engine.generate(prompt=parts, max_new_tokens=8, stop_strings=["\n\n"]).text.split("\n\n")[0]


def test_loglikelihood_is_the_full_prompt_exactly(lm):
    context, continuation = "The code of the amber falcon is", " 4821."
    (value, greedy), = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    ids = lm._encode(context + continuation)
    n = len(ids) - len(lm._encode(context))
    with torch.no_grad():
        logits = lm.engine.model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    target = torch.tensor(ids[1:])
    expected = float(logp[-n:].gather(-1, target[-n:, None]).sum())
    assert value == pytest.approx(expected, abs=1e-4)
    assert greedy == bool((logp[-n:].argmax(-1) == target[-n:]).all())
    original = lm.engine.config
    lm.engine.config = original.replace(max_batch_tokens=4)  # 4-token segments, each continuing the state
    try:
        assert lm.score(ids, n)[0] == pytest.approx(value, abs=1e-4)
        rolling, = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (context,), 0)])
    finally:
        lm.engine.config = original
    plain = [lm._prefix_token()] + lm.engine.tokenizer(context, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(lm.engine.model(torch.tensor([plain])).logits[0, :-1].float(), -1)
    assert rolling == pytest.approx(float(lp.gather(-1, torch.tensor(plain[1:])[:, None]).sum()), abs=1e-4)
