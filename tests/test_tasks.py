"""Task registry (official templates, budgets, OPRM treatment), data loading and synthetic generators."""

from pathlib import Path

import pytest

from oprm.errors import OPRMUsageError
from oprm.metrics.longbench import DATASET2METRIC
from oprm.tasks import (LONGBENCH_DATASETS, LONGBENCH_E_DATASETS, LONGBENCH_EN_DATASETS, expand_tasks, get_task,
                        load_task_samples, longbench_table)

FIX = Path(__file__).parent / "fixtures" / "longbench"
QA_IDK = ' If the answer does not exist in the passages, return "Error".'


def test_registry_sizes_and_groups():
    assert len(LONGBENCH_DATASETS) == 21
    assert len(LONGBENCH_E_DATASETS) == 13
    assert len(LONGBENCH_EN_DATASETS) == 16
    names = [t.name for t in expand_tasks("longbench,longbench_e,longbench_v2,ar,niah,passkey,hotpotqa")]
    assert len(names) == 21 + 13 + 1 + 1 + 3 + 1 and len(set(names)) == len(names)
    assert "hotpotqa_e" in names and "niah_multivalue_lite" in names
    with pytest.raises(OPRMUsageError, match="unknown task"):
        expand_tasks("hotpotqa,nope")
    with pytest.raises(OPRMUsageError):
        expand_tasks(" , ")


def test_every_template_has_one_context_and_source_note():
    table = longbench_table()
    assert "2e00731f8d0bff23dc4325161044d0ed8af94c1e" in table["_source"]["longbench"]
    for name in LONGBENCH_DATASETS:
        t = get_task(name)
        assert t.template.count("{context}") == 1
        assert t.metric == DATASET2METRIC[name]
        if t.idk_template:
            assert t.idk_template.count("{context}") == 1


def test_official_template_strings_exact():
    assert get_task("narrativeqa").template.startswith(
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "asconcisely as you can")  # upstream typo kept
    assert get_task("passage_count").template.endswith("The final answer is: ")
    assert get_task("lcc").template == "Please complete the code given below. \n{context}Next line of code:\n"
    assert get_task("repobench-p").template == "Please complete the code given below. \n{context}{input}Next line of code:\n"
    assert get_task("trec").template == ("Please determine the type of the question below. Here are some examples of "
                                          "questions.\n\n{context}\n{input}")
    assert get_task("multi_news").template.startswith("You are given several news passages. Write a one-page summary of all news. \n\n")


def test_budgets_official_and_oprm():
    expected = {"narrativeqa": (128, 20), "qasper": (128, 20), "multifieldqa_en": (64, 20), "hotpotqa": (32, 20),
                "gov_report": (512, 500), "qmsum": (512, 250), "multi_news": (512, 250), "samsum": (128, 250),
                "trec": (64, 20), "lcc": (64, 40), "repobench-p": (64, 40), "passage_retrieval_en": (32, 20),
                "vcsum": (512, 512), "dureader": (128, 128)}
    for name, (official, oprm) in expected.items():
        t = get_task(name)
        assert (t.budget("official"), t.budget("oprm")) == (official, oprm), name
    with pytest.raises(OPRMUsageError):
        get_task("hotpotqa").budget("huge")


def test_idk_variants_match_official_oprm_edits():
    for name in ("hotpotqa", "2wikimqa", "musique"):
        t = get_task(name)
        pre, suf = t.idk_template.split("{context}")
        assert pre == t.template.split("{context}")[0]
        assert ("Only give me the answer and do not output any other words." + QA_IDK + "\n\nQuestion: {input}") in suf
    nq = get_task("narrativeqa")
    assert ("Do not provide any explanation." + QA_IDK + "\n\nQuestion:") in nq.idk_template.split("{context}")[1]
    assert QA_IDK not in nq.idk_template.split("{context}")[0]
    mf = get_task("multifieldqa_en")
    assert ("do not output any other words." + QA_IDK + "\n\nQuestion:") in mf.idk_template
    qs = get_task("qasper")
    assert "unanswerable" not in qs.idk_template and qs.idk_template.count('"Error"') == 4
    assert qs.idk_template == qs.template.replace("unanswerable", "Error")
    pr = get_task("passage_retrieval_en")
    assert pr.idk_template.endswith('etc. If the abstract is not from any of the paragraphs, write "Error".\n\nThe answer is: ')
    for name in ("gov_report", "trec", "triviaqa", "samsum", "passage_count", "lcc", "repobench-p"):
        assert get_task(name).idk_template is None


def test_template_selection_by_mode():
    t = get_task("hotpotqa")
    assert t.template_for("oprm", idk=True) == t.idk_template
    assert t.template_for("oprm", idk=False) == t.template
    for mode in ("vanilla", "truncate", "bm25"):
        assert t.template_for(mode, idk=True) == t.template


def test_oprm_treatment_flags():
    for name in ("gov_report", "qmsum", "multi_news"):
        assert get_task(name).decode == "all"
    assert get_task("hotpotqa").decode == "one" and get_task("vcsum").decode == "one"
    assert get_task("lcc").context_tail and not get_task("repobench-p").context_tail
    assert [n for n in LONGBENCH_DATASETS if get_task(n).first_line] == ["trec", "triviaqa", "samsum", "lsht"]
    assert not get_task("trec").longbench_chat and get_task("hotpotqa").longbench_chat


def test_qasper_error_maps_back_to_unanswerable():
    t = get_task("qasper")
    assert t.postprocess("Error", idk_prompt=True) == "unanswerable"
    assert t.postprocess("Error.", idk_prompt=True) == "unanswerable."
    assert t.postprocess("Error", idk_prompt=False) == "Error"
    assert t.postprocess("ErrorCode", idk_prompt=True) == "ErrorCode"
    assert t.score("unanswerable", {"answers": ["unanswerable"]}) == 1.0
    assert get_task("hotpotqa").postprocess("Error", idk_prompt=True) == "Error"


def test_load_longbench_fixture_and_limit():
    s = load_task_samples(get_task("hotpotqa"), data_dir=FIX)
    assert [x["_id"] for x in s] == ["hp0", "hp1", "hp2"]
    assert set(s[0]) >= {"_id", "context", "input", "answers", "all_classes", "length"}
    assert len(load_task_samples(get_task("hotpotqa"), data_dir=FIX, limit=2)) == 2
    e = load_task_samples(get_task("hotpotqa_e"), data_dir=FIX)
    assert [x["length"] for x in e] == [1200, 5000, 9000]


def test_load_v2_fixture():
    s = load_task_samples(get_task("longbench_v2"), data_dir=FIX)
    assert s[0]["input"] == "Which colour?" and s[0]["answers"] == ["B"] and s[0]["choice_B"] == "blue"
    t = get_task("longbench_v2")
    prompt = t.template.format_map({"context": "CTX", **s[0]})
    assert "(B) blue\n" in prompt and prompt.endswith('"The correct answer is (insert answer here)".')
    assert t.score("The correct answer is (B)", s[0]) == 1.0 and t.score("B", s[0]) == 0.0


def test_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(OPRMUsageError) as ei:
        load_task_samples(get_task("musique"), data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and "musique.jsonl" in msg and "data.zip" in msg
    with pytest.raises(OPRMUsageError, match="LongBench-v2"):
        load_task_samples(get_task("longbench_v2"), data_dir=tmp_path)


def test_bad_jsonl_reports_line(tmp_path):
    (tmp_path / "hotpotqa.jsonl").write_text('{"context": "x", "answers": ["y"]}\n{oops\n')
    with pytest.raises(OPRMUsageError, match=":2:"):
        load_task_samples(get_task("hotpotqa"), data_dir=tmp_path)


# ------------------------------------------------------------------ synthetic
def test_ar_samples():
    opts = {"ar_num_facts": [3, 6], "samples_per_setting": 2}
    s = load_task_samples(get_task("ar"), seed=1, synthetic_options=opts)
    assert len(s) == 4 and [x["setting"]["num_facts"] for x in s] == [3, 3, 6, 6]
    for x in s:
        assert x["gold"] in x["context"] and x["answers"][0] in x["gold"]
    again = load_task_samples(get_task("ar"), seed=1, synthetic_options=opts)
    assert [x["context"] for x in again] == [x["context"] for x in s]  # reproducible
    assert load_task_samples(get_task("ar"), seed=2, synthetic_options=opts)[0]["context"] != s[0]["context"]
    assert len(load_task_samples(get_task("ar"), limit=1, seed=1, synthetic_options=opts)) == 2  # 1 per setting


@pytest.mark.parametrize("variant,n_answers", [("single", 1), ("multikey", 1), ("multivalue", 4)])
def test_niah_samples(variant, n_answers):
    task = get_task(f"niah_{variant}")
    s = load_task_samples(task, seed=0, synthetic_options={"lengths": [300], "samples_per_setting": 2, "depths": [0, 100]})
    assert len(s) == 2
    for x in s:
        assert len(x["answers"]) == n_answers and all(a in x["context"] for a in x["answers"])
        assert x["gold"] in x["context"] and x["input"] in x["gold"]
        assert 280 <= x["length"] <= 340
        assert x["template"].count("{context}") == 1 and "{input}" in x["template"]
    # depth 0 -> the needle opens the context, depth 100 -> it closes it (single)
    if variant == "single":
        assert s[0]["context"].startswith("One of the special magic number")
        assert s[1]["context"].endswith(s[1]["gold"])
        assert "A special magic number is hidden" in s[0]["template"]
    if variant == "multikey":
        assert s[0]["context"].count("One of the special magic numbers for") == 4


def test_niah_haystack_file(tmp_path):
    f = tmp_path / "essay.txt"
    f.write_text("First sentence here. Second one follows! A third? Yes.\n\nMore text.", encoding="utf-8")
    s = load_task_samples(get_task("niah_single"), synthetic_options={"lengths": [60], "samples_per_setting": 1,
                                                                       "haystack": str(f)})
    assert "Second one follows!" in s[0]["context"]
    with pytest.raises(OPRMUsageError, match="haystack file not found"):
        load_task_samples(get_task("niah_single"), synthetic_options={"haystack": str(tmp_path / "nope.txt")})


def test_niah_counts_with_tokenizer():
    class CharTok:  # one token per character
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    s = load_task_samples(get_task("niah_single"), synthetic_options={"lengths": [500], "samples_per_setting": 1,
                                                                       "tokenizer": CharTok()})
    assert 400 <= len(s[0]["context"]) <= 620


def test_passkey_samples():
    s = load_task_samples(get_task("passkey"), synthetic_options={"lengths": [200, 400], "samples_per_setting": 1})
    assert len(s) == 2
    for x in s:
        assert x["answers"][0] in x["gold"] and x["gold"] in x["context"]
    t = get_task("passkey")
    assert t.score("The pass key is " + s[0]["answers"][0] + ".", s[0]) == 1.0
    assert t.score(s[0]["answers"][0] + "9", s[0]) == 0.0


def test_download_uses_hf_hub_and_unzips(tmp_path, monkeypatch):
    """--download: data.zip / data.json fetched with huggingface_hub (mocked here: no network in tests)."""
    import zipfile

    hub = pytest.importorskip("huggingface_hub")
    src = tmp_path / "hub"
    src.mkdir()
    with zipfile.ZipFile(src / "data.zip", "w") as zf:
        zf.write(FIX / "data" / "hotpotqa.jsonl", "data/hotpotqa.jsonl")
    calls = []

    def fake_download(repo_id, filename, repo_type=None, **kw):
        calls.append((repo_id, filename, repo_type))
        return str(src / "data.zip") if filename == "data.zip" else str(FIX / "LongBench-v2" / "data.json")

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    ddir = tmp_path / "cache"
    assert len(load_task_samples(get_task("hotpotqa"), data_dir=ddir, download=True)) == 3
    assert len(load_task_samples(get_task("longbench_v2"), data_dir=ddir, download=True)) == 2
    assert calls == [("THUDM/LongBench", "data.zip", "dataset"), ("THUDM/LongBench-v2", "data.json", "dataset")]
    # a second load finds the files locally
    load_task_samples(get_task("hotpotqa"), data_dir=ddir, download=True)
    assert len(calls) == 2

    def failing(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(hub, "hf_hub_download", failing)
    with pytest.raises(OPRMUsageError, match="could not download"):
        load_task_samples(get_task("musique"), data_dir=ddir, download=True)


def test_oprm_prompt_style():
    hp = get_task("hotpotqa")
    assert hp.template_for("oprm", True, "oprm").endswith("\nAnswer: ")
    assert "The following are given passages.\n {context}" in hp.template_for("vanilla", True, "oprm")
    assert QA_IDK in hp.template_for("oprm", True, "oprm") and QA_IDK not in hp.template_for("oprm", False, "oprm")
    nq = get_task("narrativeqa").template_for("vanilla", False, "oprm")
    assert nq.split("{context}")[0].count("asconcisely") == 1 and "asconcisely" not in nq.split("{context}")[1]
    assert get_task("gov_report").template_for("oprm", True, "oprm").endswith("Summary: ")
    # identical where the OPRM script did not change the wording
    for name in ("qasper", "trec", "passage_retrieval_en", "lcc", "vcsum"):
        t = get_task(name)
        for mode, idk in (("oprm", True), ("vanilla", False)):
            assert t.template_for(mode, idk, "oprm") == t.template_for(mode, idk, "longbench")
    with pytest.raises(OPRMUsageError):
        hp.template_for("oprm", True, "fancy")
