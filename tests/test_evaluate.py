"""The eval runner with a fake engine (fast), rescoring, CLI glue, and one end-to-end run on a tiny real model."""

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oprm.config import OPRMConfig
from oprm.errors import OPRMUsageError
from oprm.eval import (add_eval_arguments, add_score_arguments, bm25_context, build_configs, evaluate,
                       run_eval, run_score, score_dir)

FIX = Path(__file__).parent / "fixtures" / "longbench"


@dataclass
class FakeChunk:
    index: int
    entropy: float
    is_idk: bool
    token_start: int = 0
    token_end: int = 0


@dataclass
class FakeResult:
    text: str
    chosen: list = field(default_factory=list)
    chunks: list = field(default_factory=list)
    timings: dict = field(default_factory=lambda: {"total": 0.01})
    idk_fallback_used: bool = False
    selection: str | None = None

    def to_dict(self):
        return {"text": self.text, "chosen": self.chosen}


class FakeEngine:
    """Answers from a lookup on the question (OPRM modes) or a fixed wrong answer (vanilla); records every call."""

    config = OPRMConfig.paper(chunk_size=2000)
    tokenizer = None
    name = "fake"

    def __init__(self, answers=None, vanilla_answer="I do not know"):
        self.answers = answers or {}
        self.vanilla_answer = vanilla_answer
        self.calls = []

    def generate(self, context=None, query=None, *, template=None, fields=None, mode="oprm", max_new_tokens=None,
                 decode=None, chunk_size=None, selection=None, idk="Error", gold_text=None, max_input_tokens=None,
                 context_tail_tokens=None, chat=None, **kw):
        call = dict(context=context, template=template, fields=fields, mode=mode, max_new_tokens=max_new_tokens,
                    decode=decode, chunk_size=chunk_size, selection=selection, idk=idk, gold_text=gold_text,
                    max_input_tokens=max_input_tokens, context_tail_tokens=context_tail_tokens, chat=chat)
        self.calls.append(call)
        assert template.count("{context}") == 1
        template.format_map({"context": context, **fields})  # every field the template needs is given
        q = (fields or {}).get("input", "")
        if mode == "oprm" and selection != "oracle":
            text = self.answers.get(q, "Error")
        elif selection == "oracle":
            text = gold_text
        else:
            text = self.vanilla_answer
        chunks = [FakeChunk(0, 1.5, False), FakeChunk(1, 0.25, True)] if mode == "oprm" else [FakeChunk(0, 2.0, False)]
        return FakeResult(text, [0] if mode == "oprm" else [], chunks)


ANSWERS = {"Which city hosts the Eiffel Tower?": "Paris", "Where is Berlin?": "Germany",
           "Do they use BERT?": "Error", "What dataset?": "SQuAD", "Question: Where is Paris?\nType:": "Location\nEntity",
           "": "The agency reviewed the budget."}


def _lines(p: Path):
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_build_configs_grid_and_errors():
    cfgs = build_configs("oprm,vanilla,truncate", [1000, 2000], ["entropy", "max_prob"], [True, False])
    names = [c.name for c in cfgs]
    assert len([c for c in cfgs if c.mode == "oprm"]) == 8 and "vanilla" in names
    assert "oprm_cs1000_max_prob_noidk" in names and "truncate_cs2000" in names
    assert [c.name for c in build_configs(["oprm"], None)] == ["oprm_cs2000_entropy_idk"]
    with pytest.raises(OPRMUsageError, match="unknown mode"):
        build_configs("oprm,magic")
    with pytest.raises(OPRMUsageError, match="positive"):
        build_configs("oprm", [0])
    with pytest.raises(OPRMUsageError):
        build_configs("")


def test_evaluate_longbench_end_to_end_with_fake_engine(tmp_path):
    eng = FakeEngine(ANSWERS)
    res = evaluate(eng, "hotpotqa,qasper,trec,gov_report,lcc", ["oprm", "vanilla"], [1000], None, True, None, FIX,
                   tmp_path, 0, model_name="org/fake-model", progress=False)
    root = tmp_path / "fake-model"
    pred = root / "oprm_cs1000_entropy_idk" / "pred" / "hotpotqa.jsonl"
    rows = _lines(pred)
    assert [r["_id"] for r in rows] == ["hp0", "hp1", "hp2"]
    assert set(rows[0]) >= {"_id", "pred", "answers", "all_classes", "length", "chosen", "entropies", "score"}
    assert rows[0]["entropies"] == [1.5, 0.25] and rows[0]["idk_chunks"] == [1] and rows[0]["chosen"] == [0]
    oprm = res["configs"]["oprm_cs1000_entropy_idk"]["tasks"]
    # hotpotqa: Paris, Germany right, third question answered "Error" -> 2/3
    assert oprm["hotpotqa"]["score"] == 66.67
    # qasper: "Error" mapped back to "unanswerable" (right), SQuAD right
    assert oprm["qasper"]["score"] == 100.0
    q = _lines(root / "oprm_cs1000_entropy_idk" / "pred" / "qasper.jsonl")
    assert q[0]["pred"] == "unanswerable" and q[0]["raw_pred"] == "Error"
    assert oprm["trec"]["score"] == 100.0  # first line only
    assert res["configs"]["vanilla"]["tasks"]["hotpotqa"]["score"] == 0.0
    # prompts and OPRM treatment
    by = {(c["mode"], c["fields"].get("_id")): c for c in eng.calls}
    assert 'return "Error".' in by[("oprm", "hp0")]["template"]
    assert 'return "Error".' not in by[("vanilla", "hp0")]["template"]
    assert 'write "Error"' in by[("oprm", "qa0")]["template"]
    assert by[("oprm", "gr0")]["decode"] == "all" and by[("oprm", "hp0")]["decode"] == "one"
    assert by[("oprm", "lc0")]["context_tail_tokens"] == 1000 and by[("vanilla", "lc0")]["context_tail_tokens"] is None
    assert by[("oprm", "hp0")]["max_new_tokens"] == 32  # official budget by default
    # results files
    data = json.loads((root / "results.json").read_text())
    assert data["configs"]["vanilla"]["config"]["mode"] == "vanilla"
    md = (root / "results.md").read_text()
    assert "| hotpotqa | Multi-Document QA | 66.67 | 0.00 |" in md
    assert "**category mean**" in md and "**dataset mean**" in md
    assert (root / "plots" / "score_by_length.png").stat().st_size > 0
    # LongBench's eval.py reads exactly these files: rescoring gives the same numbers
    again = score_dir(root / "oprm_cs1000_entropy_idk")
    assert again["pred/hotpotqa.jsonl"]["score"] == 66.67 and again["pred/qasper.jsonl"]["score"] == 100.0


def test_oprm_budget_and_no_idk(tmp_path):
    eng = FakeEngine(ANSWERS)
    evaluate(eng, ["hotpotqa"], ["oprm"], [500], None, False, 1, FIX, tmp_path, 0, model_name="m",
             max_new_tokens_budget="oprm", progress=False, plots=False)
    call = eng.calls[0]
    assert call["max_new_tokens"] == 20 and call["idk"] is None and "Error" not in call["template"]
    assert (tmp_path / "m" / "oprm_cs500_entropy_noidk" / "pred" / "hotpotqa.jsonl").exists()


def test_resume_skips_finished_ids_and_repairs_torn_line(tmp_path):
    eng = FakeEngine(ANSWERS)
    evaluate(eng, "hotpotqa", "oprm", None, None, True, 2, FIX, tmp_path, 0, model_name="m", progress=False, plots=False)
    assert len(eng.calls) == 2
    pred = tmp_path / "m" / "oprm_cs2000_entropy_idk" / "pred" / "hotpotqa.jsonl"
    with open(pred, "a") as f:
        f.write('{"_id": "hp2", "pred": "tor')  # a crash in the middle of a write
    eng2 = FakeEngine(ANSWERS)
    res = evaluate(eng2, "hotpotqa", "oprm", None, None, True, None, FIX, tmp_path, 0, model_name="m", progress=False,
                   plots=False)
    assert [c["fields"]["_id"] for c in eng2.calls] == ["hp2"]
    assert [r["_id"] for r in _lines(pred)] == ["hp0", "hp1", "hp2"]
    assert res["configs"]["oprm_cs2000_entropy_idk"]["tasks"]["hotpotqa"]["n"] == 3
    eng3 = FakeEngine(ANSWERS)
    evaluate(eng3, "hotpotqa", "oprm", None, None, True, None, FIX, tmp_path, 0, model_name="m", progress=False,
             plots=False)
    assert eng3.calls == []


def test_longbench_e_buckets_and_pred_e(tmp_path):
    eng = FakeEngine({"Q0?": "alpha", "Q1?": "wrong", "Q2?": "zeta"})
    res = evaluate(eng, "hotpotqa_e", "oprm", None, None, True, None, FIX, tmp_path, 0, model_name="m",
                   progress=False)
    t = res["configs"]["oprm_cs2000_entropy_idk"]["tasks"]["hotpotqa_e"]
    assert t["buckets"] == {"0-4k": 100.0, "4-8k": 0.0, "8k+": 100.0}
    assert (tmp_path / "m" / "oprm_cs2000_entropy_idk" / "pred_e" / "hotpotqa.jsonl").exists()
    md = (tmp_path / "m" / "results.md").read_text()
    assert "LongBench-E by length" in md and "| 4-8k | 0.00 |" in md


def test_truncate_and_bm25_modes(tmp_path):
    eng = FakeEngine(ANSWERS, vanilla_answer="Paris")
    evaluate(eng, "hotpotqa", ["truncate", "bm25"], [40], None, True, 1, FIX, tmp_path, 0, model_name="m",
             progress=False, plots=False)
    tr = [c for c in eng.calls if c["mode"] == "truncate"][0]
    assert tr["max_input_tokens"] == 40
    bm = [c for c in eng.calls if c["mode"] == "vanilla"][0]
    assert "Eiffel Tower is in Paris" in bm["context"] and len(bm["context"].split()) <= 40
    rows = _lines(tmp_path / "m" / "bm25_cs40" / "pred" / "hotpotqa.jsonl")
    assert rows[0]["bm25_passages"] and rows[0]["score"] == 1.0


def test_bm25_context_ranking_and_budget():
    ctx = ("Cats purr when happy. " * 3 + "\n" + "The capital of France is Paris. " + "\n" + "Dogs bark loudly. " * 3)
    text, kept = bm25_context(ctx, "What is the capital of France?", budget_tokens=8, chunk_words=6)
    assert "capital of France is Paris" in text and len(kept) == 1
    full, kept_all = bm25_context(ctx, "capital", budget_tokens=10_000, chunk_words=6)
    assert kept_all == sorted(kept_all) and full.split() == ctx.split()  # everything fits: document order kept
    zh, _ = bm25_context("北京是中国的首都。上海是一个城市。", "中国的首都", budget_tokens=10, chunk_words=3, language="zh")
    assert "北京" in zh


def test_oracle_on_synthetic_and_skipped_on_longbench(tmp_path):
    eng = FakeEngine()
    opts = {"ar_num_facts": [3, 6], "samples_per_setting": 2}
    res = evaluate(eng, "ar,hotpotqa", ["oracle"], [256], None, True, None, FIX, tmp_path, 1, model_name="m",
                   synthetic_options=opts, progress=False)
    calls = [c for c in eng.calls]
    assert len(calls) == 4 and all(c["selection"] == "oracle" and c["gold_text"] for c in calls)
    t = res["configs"]["oracle_cs256"]["tasks"]
    assert "hotpotqa" not in t
    assert t["ar"]["score"] == 100.0 and t["ar"]["by_setting"] == {"3": 100.0, "6": 100.0}
    assert (tmp_path / "m" / "plots" / "ar_accuracy_vs_facts.png").exists()
    md = (tmp_path / "m" / "results.md").read_text()
    assert "| ar | facts=6 | 100.00 |" in md


def test_niah_and_passkey_runs(tmp_path):
    eng = FakeEngine()
    opts = {"lengths": [200, 400], "samples_per_setting": 1}
    res = evaluate(eng, "niah,passkey", ["oracle", "vanilla"], [128], None, True, None, FIX, tmp_path, 0,
                   model_name="m", synthetic_options=opts, progress=False)
    o = res["configs"]["oracle_cs128"]["tasks"]
    # the oracle echoes the needle: single/multikey hold the answer; multivalue needs all four values
    assert o["niah_single"]["score"] == 100.0 and o["passkey"]["score"] == 100.0
    assert o["niah_multivalue_lite"]["score"] == 25.0
    assert res["configs"]["vanilla"]["tasks"]["niah_single"]["score"] == 0.0
    assert (tmp_path / "m" / "plots" / "synthetic_by_length.png").exists()


def test_longbench_v2_run(tmp_path):
    class V2Engine(FakeEngine):
        def generate(self, **kw):
            r = super().generate(**kw)
            r.text = "**The correct answer is (B)**"
            return r

    eng = V2Engine()
    res = evaluate(eng, "longbench_v2", "vanilla", None, None, True, None, FIX, tmp_path, 0, model_name="m",
                   progress=False, plots=False)
    v2 = res["configs"]["vanilla"]["tasks"]["longbench_v2"]["v2"]
    assert v2["Overall"] == 50.0 and v2["Easy"] == 100.0 and v2["Hard"] == 0.0 and v2["Medium"] == 0.0
    assert eng.calls[0]["fields"]["choice_B"] == "blue" and eng.calls[0]["fields"]["input"] == "Which colour?"
    assert eng.calls[0]["max_new_tokens"] == 128
    rows = _lines(tmp_path / "m" / "vanilla" / "pred" / "longbench_v2.jsonl")
    assert rows[0]["pred"] == "B" and rows[0]["judge"] is True and rows[0]["response"].startswith("**")
    assert score_dir(tmp_path / "m" / "vanilla")["pred/longbench_v2.jsonl"]["score"] == 50.0


def test_score_dir_official_oprm_files():
    s = score_dir(FIX / "oprm_preds")
    hp = s["hotpotqa.2025_05_01__12_00_00_oprm_20_toks_cs_2000.jsonl"]
    assert hp["dataset"] == "hotpotqa" and hp["score"] == 50.0 and "buckets" not in hp
    qs = s["qasper.2025_05_01__12_00_00_oprm_20_toks_cs_2000_type_e.jsonl"]
    assert qs["score"] == 100.0 and qs["buckets"]["0-4k"] == 100.0 and qs["buckets"]["8k+"] == 100.0
    assert s["trec.2025_05_01__12_00_00_vanilla_20_toks.jsonl"]["score"] == 100.0
    raw = score_dir(FIX / "oprm_preds", map_idk=False)
    assert raw["qasper.2025_05_01__12_00_00_oprm_20_toks_cs_2000_type_e.jsonl"]["score"] == 50.0
    with pytest.raises(OPRMUsageError):
        score_dir(FIX / "does-not-exist")


def _eval_args(argv):
    p = argparse.ArgumentParser()
    add_eval_arguments(p)
    return p.parse_args(argv)


def test_run_eval_cli_glue(tmp_path, capsys):
    args = _eval_args(["--model", "fake", "--tasks", "hotpotqa", "--modes", "oprm,vanilla", "--chunk-size", "1000,2000",
                       "--idk-ablation", "--limit", "1", "--data-dir", str(FIX), "--output-path", str(tmp_path),
                       "--quiet", "--no-plots"])
    eng = FakeEngine(ANSWERS)
    assert run_eval(args, engine=eng) == 0
    out = capsys.readouterr().out
    assert "oprm_cs1000_entropy_idk" in out and "oprm_cs2000_entropy_noidk" in out and "| hotpotqa |" in out
    assert len(eng.calls) == 5  # 4 OPRM configs + vanilla, one sample each


@pytest.mark.parametrize("argv,msg", [
    (["--modes", "oprm,warp"], "unknown mode"),
    (["--chunk-size", "1k"], "comma-separated integers"),
    (["--tasks", "longbench_x"], "unknown task"),
    (["--limit", "0"], "--limit"),
    (["--selection", "psychic"], "unknown selection"),
    (["--samples", "0"], "positive"),
    (["--lengths", "100,-5"], "positive"),
    (["--depths", "50,120"], "0..100"),
    (["--depths", "mid"], "numbers"),
    (["--ar-absent-fraction", "1.5"], "0..1"),
])
def test_run_eval_bad_input_is_one_line(argv, msg, tmp_path):
    args = _eval_args(["--model", "fake", "--tasks", "hotpotqa", "--data-dir", str(FIX), "--output-path",
                       str(tmp_path), "--quiet"] + argv)
    with pytest.raises(OPRMUsageError, match=msg) as ei:
        run_eval(args, engine=FakeEngine())
    assert "\n" not in str(ei.value)


def test_run_eval_missing_data_message(tmp_path):
    args = _eval_args(["--model", "fake", "--tasks", "musique", "--data-dir", str(tmp_path), "--quiet"])
    with pytest.raises(OPRMUsageError, match="data.zip"):
        run_eval(args, engine=FakeEngine())


def test_run_score_cli(capsys, tmp_path):
    p = argparse.ArgumentParser()
    add_score_arguments(p)
    out_json = tmp_path / "s.json"
    assert run_score(p.parse_args([str(FIX / "oprm_preds"), "--output", str(out_json)])) == 0
    assert "| hotpotqa.2025_05_01__12_00_00_oprm_20_toks_cs_2000.jsonl | hotpotqa | 2 | 50.00 |" in capsys.readouterr().out
    assert json.loads(out_json.read_text())
    with pytest.raises(OPRMUsageError, match="no scorable"):
        run_score(p.parse_args([str(tmp_path / "s.json")]))


def test_cli_main_registers_eval_and_score(capsys):
    from oprm import cli
    rc = cli.main(["eval", "--model", "nowhere", "--modes", "bogus", "--tasks", "hotpotqa"])
    assert rc == 2 and "unknown mode" in capsys.readouterr().err
    rc = cli.main(["score", str(FIX / "oprm_preds")])
    assert rc == 0 and "hotpotqa" in capsys.readouterr().out


# ------------------------------------------------------------------ real engine, tiny random-weight model
def test_end_to_end_tiny_mamba2(tmp_path):
    import oprm
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model("mamba2")
    model.resize_token_embeddings(len(tok))
    engine = oprm.OPRM(model, tok, oprm.OPRMConfig.paper(chunk_size=64))
    opts = {"ar_num_facts": [2], "samples_per_setting": 1, "lengths": [120]}
    res = evaluate(engine, "hotpotqa,qasper,gov_report,lcc,ar,niah_single", ["oprm", "vanilla", "truncate", "bm25",
                                                                          "oracle"],
                   [64], None, True, 1, FIX, tmp_path, 0, model_name="tiny-mamba2", synthetic_options=opts,
                   progress=False, max_new_tokens=3)
    cfgs = res["configs"]
    assert set(cfgs) == {"oprm_cs64_entropy_idk", "vanilla", "truncate_cs64", "bm25_cs64", "oracle_cs64"}
    root = tmp_path / "tiny-mamba2"
    rows = _lines(root / "oprm_cs64_entropy_idk" / "pred" / "hotpotqa.jsonl")
    assert rows[0]["num_chunks"] >= 2 and len(rows[0]["entropies"]) == rows[0]["num_chunks"]
    assert isinstance(rows[0]["pred"], str) and 0.0 <= rows[0]["score"] <= 1.0
    gov = _lines(root / "oprm_cs64_entropy_idk" / "pred" / "gov_report.jsonl")[0]
    assert len(gov["chosen"]) == gov["num_chunks"]  # decode="all": every chunk decoded
    lcc = _lines(root / "oprm_cs64_entropy_idk" / "pred" / "lcc.jsonl")[0]
    assert lcc["num_chunks"] == 1  # only the last chunk_size tokens of the code are kept
    orc = _lines(root / "oracle_cs64" / "pred" / "ar.jsonl")[0]
    assert orc["chosen"] and orc["selection"] == "oracle"
    assert (root / "results.md").exists() and (root / "results.json").exists()


def test_results_accumulate_across_runs_and_rescore_synthetic(tmp_path):
    opts = {"ar_num_facts": [3], "samples_per_setting": 2}
    evaluate(FakeEngine(), "ar", ["oracle"], [256], None, True, None, FIX, tmp_path, 0, model_name="m",
             synthetic_options=opts, progress=False, plots=False)
    res = evaluate(FakeEngine(ANSWERS), "hotpotqa", ["vanilla"], None, None, True, 1, FIX, tmp_path, 0,
                   model_name="m", progress=False, plots=False)
    assert set(res["configs"]) == {"oracle_cs256", "vanilla"}
    md = (tmp_path / "m" / "results.md").read_text()
    assert "| ar | all | 100.00 | – |" in md and "| hotpotqa | Multi-Document QA | – | 0.00 |" in md
    s = score_dir(tmp_path / "m" / "oracle_cs256")
    assert s["pred/ar.jsonl"]["score"] == 100.0 and s["pred/ar.jsonl"]["by_setting"] == {"3": 100.0}


def test_missing_data_fails_before_any_model_work(tmp_path):
    eng = FakeEngine()
    with pytest.raises(OPRMUsageError, match="musique.jsonl"):
        evaluate(eng, "ar,musique", "oracle", [256], None, True, 1, tmp_path, tmp_path / "out", 0, model_name="m",
                 synthetic_options={"ar_num_facts": [3]}, progress=False)
    assert eng.calls == []


def test_synthetic_flags_reach_the_generators(tmp_path):
    args = _eval_args(["--model", "fake", "--tasks", "ar,niah_single", "--modes", "vanilla", "--samples", "2",
                       "--ar-num-facts", "4", "--ar-absent-fraction", "1", "--lengths", "120", "--depths", "0",
                       "--niah-values", "uuids", "--output-path", str(tmp_path), "--quiet", "--no-plots"])
    eng = FakeEngine(vanilla_answer="Error")
    assert run_eval(args, engine=eng) == 0
    ar = _lines(tmp_path / "fake" / "vanilla" / "pred" / "ar.jsonl")
    assert len(ar) == 2 and all(r["answers"] == ["Error"] and r["score"] == 1.0 for r in ar)
    niah = [c for c in eng.calls if "special magic" in c["template"]]
    assert len(niah) == 2 and all(c["context"].startswith("One of the special magic uuids") for c in niah)


# ------------------------------------------------------------------ engine options from OPRMConfig
def test_eval_flags_are_the_config_fields():
    from oprm.eval.cli import OWN_FLAGS, eval_config

    args = _eval_args(["--model", "m", "--overlap", "100", "--max-batch-tokens", "512", "--idk-fallback",
                       "min_entropy", "--no-chat", "--system-prompt", "Be brief.", "--no-shared-prefix",
                       "--decode", "top_k", "--num-decode", "2", "--chunk-size", "1000,2000"])
    config = eval_config(args)
    assert (config.overlap, config.max_batch_tokens, config.idk_fallback, config.shared_prefix) == (
        100, 512, "min_entropy", False)
    assert config.system_prompt == "Be brief." and args.chat_rule == "off"
    assert config.chunk_size == OPRMConfig.paper().chunk_size  # grid fields stay for the runner
    assert config.seed == 42  # eval's --seed seeds the engine too
    defaults = eval_config(_eval_args(["--model", "m"]))
    assert defaults == OPRMConfig.paper(seed=42, document_cache_bytes=0)  # every sample a new context: no cache
    every = set(OPRMConfig.names()) - set(OWN_FLAGS)  # each other field has its generated flag
    assert every <= set(vars(args))


def test_options_that_change_predictions_rename_the_config(tmp_path):
    from oprm.eval.configs import options_tag

    paper = OPRMConfig.paper
    assert options_tag(paper()) == "" and options_tag(paper(max_batch_tokens=64)) == ""
    assert options_tag(paper(overlap=100, idk_fallback="min_entropy")) == "ov100_fallback-min_entropy"
    assert options_tag(paper(decode="top_k", num_decode=3)) == "decode-top_k_k3"
    assert options_tag(OPRMConfig()) == "chunking-sentences"  # the selection has its own place in the name

    class OverlapEngine(FakeEngine):
        config = OPRMConfig.paper(overlap=100)

    res = evaluate(OverlapEngine(ANSWERS), "hotpotqa", ["oprm", "vanilla"], None, None, True, 1, FIX, tmp_path, 0,
                   model_name="m", progress=False, plots=False)
    assert set(res["configs"]) == {"oprm_cs2000_entropy_idk_ov100", "vanilla"}
    assert res["configs"]["oprm_cs2000_entropy_idk_ov100"]["config"]["options"] == "ov100"
    with pytest.raises(OPRMUsageError, match="overlap"):  # a grid size not above the overlap fails before any work
        evaluate(OverlapEngine(ANSWERS), "hotpotqa", ["oprm"], [64], None, True, 1, FIX, tmp_path, 0, model_name="m",
                 progress=False, plots=False)


def test_evaluate_refuses_what_is_not_an_engine(tmp_path):
    with pytest.raises(OPRMUsageError, match="engine"):
        evaluate(object(), "hotpotqa", ["vanilla"], None, None, True, 1, FIX, tmp_path, 0, model_name="m")


def test_cli_eval_engine_flags_reach_a_real_engine(tmp_path, capsys):
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    from oprm.cli import main

    tok, model = tiny_tokenizer(), tiny_model("mamba2")
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    argv = ["eval", "--model", str(tmp_path / "model"), "--tasks", "ar", "--modes", "oprm", "--chunk-size", "48",
            "--overlap", "8", "--idk-fallback", "min_entropy", "--max-batch-tokens", "200", "--no-chat",
            "--samples", "1", "--ar-num-facts", "6", "--max-new-tokens", "2", "--output-path", str(tmp_path / "out"),
            "--quiet", "--no-plots"]
    assert main(argv) == 0
    assert "oprm_cs48_entropy_idk_ov8_fallback-min_entropy" in capsys.readouterr().out
    rows = _lines(tmp_path / "out" / "model" / "oprm_cs48_entropy_idk_ov8_fallback-min_entropy" / "pred" / "ar.jsonl")
    assert len(rows) == 1 and rows[0]["num_chunks"] >= 2 and rows[0]["chunk_size"] == 48
