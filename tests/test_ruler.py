"""RULER in ``oprm eval``: generators against hand-computed expectations (templates, needles, answer sets, sizes in
the model's tokens), RULER's metrics, summary.csv, and a tiny end-to-end run on the shipped model."""

import csv
import json
import math
import re

import pytest

from oprm import cli
from oprm.errors import OPRMUsageError
from oprm.eval.report import make_plots
from oprm.eval.ruler_report import average_ci
from oprm.eval.ruler_tables import main as ruler_report_main, results_from_predictions
from oprm.eval.scoring import ruler_by_length
from oprm.metrics.synthetic import string_match_all, string_match_part
from oprm.models import resolve_model
from oprm.prompts import build_prompt
from oprm.tasks import expand_tasks, get_task
from oprm.tasks.ruler import RULER_TASKS, ruler_samples
from oprm.tasks.ruler_gen import RULER_DEPTHS, ruler_table, wonder_words
from oprm.tasks.ruler_words import fwe_sample, zeta

NIAH_PLURAL = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz "
               "you about the numbers afterwards.\n{context}\nWhat are all the special magic numbers for {input} "
               "mentioned in the provided text?")
NIAH_SINGULAR = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz "
                 "you about the number afterwards.\n{context}\nWhat is the special magic number for {input} mentioned "
                 "in the provided text?")
NUMBER_NEEDLE = re.compile(r"One of the special magic numbers for (.+?) is: (\d{7})\.")  # keys may hold spaces
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("oprm-ar-mamba2")[0])


def _samples(name, tok, length=2048, n=2, **opts):
    return ruler_samples(get_task(name), seed=42, options={"tokenizer": tok, "samples_per_setting": n,
                                                           "lengths": [length], **opts})


def _fed_tokens(tok, s):
    """What the engine feeds the model for a sample: P + C + S (chat template, answer prefix)."""
    parts = build_prompt(tok, s["context"], s["template"], {"input": s["input"]}, answer_prefix=s["answer_prefix"])
    return len(parts.prefix_ids) + len(parts.context_ids) + len(parts.suffix_ids)


def test_registry_group_and_official_strings():
    names = [t.name for t in expand_tasks("ruler")]
    assert names == list(RULER_TASKS) and len(names) == 13
    t = ruler_table()
    assert "c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a" in t["_source"]
    assert t["needle"] == "One of the special magic {type_needle_v} for {key} is: {value}."
    assert t["noise"] == "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    budgets = {k: v["tokens_to_generate"] for k, v in t["templates"].items()}
    assert budgets == {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
                       "freq_words_extraction": 50, "qa": 32}
    assert t["templates"]["niah"]["answer_prefix"] == (" The special magic {type_needle_v} for {query} mentioned in "
                                                      "the provided text are")
    assert t["templates"]["qa"]["answer_prefix"] == " Answer:"
    assert get_task("ruler_qa_1").metric == "string_match_part" and get_task("ruler_vt").metric == "string_match_all"
    assert get_task("niah_single_1").max_new_tokens == 128 and get_task("ruler_fwe").max_new_tokens == 50
    # the lighter synthetic variant keeps working under its new name
    assert get_task("niah_multivalue_lite").params["variant"] == "multivalue"


def test_depths_are_rulers_linspace():
    assert len(RULER_DEPTHS) == 40 and RULER_DEPTHS[:9] == [0, 3, 5, 8, 10, 13, 15, 18, 21]
    assert RULER_DEPTHS[-3:] == [95, 97, 100]


def test_niah_single_noise_sample(tok):
    s = _samples("niah_single_1", tok)[0]
    assert s["template"] == NIAH_SINGULAR  # RULER's singular rule: Some->A, are all->is, are->is, numbers->number
    key = s["input"]
    adjs, nouns = set(wonder_words()["adjective"]), set(wonder_words()["noun"])
    assert any(key.startswith(a + "-") and key[len(a) + 1:] in nouns for a in adjs)
    assert s["answer_prefix"] == f" The special magic number for {key} mentioned in the provided text is"
    assert re.fullmatch(r"\d{7}", s["answers"][0])
    lines = s["context"].split("\n")
    needle = f"One of the special magic numbers for {key} is: {s['answers'][0]}."
    assert lines.count(needle) == 1 and s["gold"] == needle
    assert set(lines) == {needle, ruler_table()["noise"]}  # the noise haystack, one sentence group a line
    assert s["setting"] == {"target_length": 2048, "haystack": "noise"}


def test_niah_multivalue_multiquery_multikey(tok):
    mv = _samples("niah_multivalue", tok)[0]
    assert mv["template"] == NIAH_PLURAL and mv["answer_prefix"].endswith("mentioned in the provided text are")
    found = dict((v, k) for k, v in NUMBER_NEEDLE.findall(mv["context"]))
    assert len(mv["answers"]) == 4 and all(found[a] == mv["input"] for a in mv["answers"])
    assert mv["setting"]["haystack"] == "essay:moby_dick_ch1-18"
    mq = _samples("niah_multiquery", tok)[0]
    keys = re.fullmatch(r"(\S+), (\S+), (\S+), and (\S+)", mq["input"]).groups()
    found = dict((v, k) for k, v in NUMBER_NEEDLE.findall(mq["context"]))
    assert len(mq["answers"]) == 4 and [found[a] for a in mq["answers"]] == list(keys)
    mk = _samples("niah_multikey_1", tok)[0]
    pairs = NUMBER_NEEDLE.findall(mk["context"])
    assert len(pairs) == 4 and (mk["input"], mk["answers"][0]) in pairs and mk["template"] == NIAH_SINGULAR
    mk2 = _samples("niah_multikey_2", tok)[0]  # the haystack is distractor needles, every line one
    lines = mk2["context"].split("\n")
    assert all(NUMBER_NEEDLE.fullmatch(x) for x in lines) and len(lines) > 10
    assert [v for k, v in map(lambda x: NUMBER_NEEDLE.fullmatch(x).groups(), lines) if k == mk2["input"]] \
        == mk2["answers"]
    mk3 = _samples("niah_multikey_3", tok)[0]
    assert re.fullmatch(UUID, mk3["input"]) and re.fullmatch(UUID, mk3["answers"][0])
    assert f"One of the special magic uuids for {mk3['input']} is: {mk3['answers'][0]}." in mk3["context"]
    assert "magic uuid is hidden" in mk3["template"]


@pytest.mark.parametrize("name", [n for n in RULER_TASKS if not n.startswith("ruler_qa")])
def test_lengths_at_or_under_target_in_the_models_tokens(tok, name):
    for length in (1536, 3072):
        for s in _samples(name, tok, length=length):
            fed = _fed_tokens(tok, s)
            assert s["length"] == fed + get_task(name).max_new_tokens <= length
            # the binary search filled the budget; a draw that comes out too long shrinks by RULER's increment, which
            # for essays is 500 words (about 1.3K tokens of this small-vocabulary tokenizer)
            slack = 1400 if get_task(name).params.get("type_haystack") == "essay" else 0.4 * length
            assert s["length"] > length - slack


def test_samples_reproducible_and_prefix_stable(tok):
    a = _samples("niah_single_2", tok, n=1)
    b = _samples("niah_single_2", tok, n=3)
    assert a[0] == b[0] and len({s["answers"][0] for s in b}) == 3


def test_vt_sample(tok):
    s = _samples("ruler_vt", tok)[0]
    names, value = s["answers"], s["input"]
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", x) for x in names) and re.fullmatch(r"\d{5}", value)
    lines = s["context"].split("\n")
    assert f"VAR {names[0]} = {value}" in lines
    assert all(f"VAR {names[j + 1]} = VAR {names[j]} " in lines for j in range(4))
    assert s["answer_prefix"] == (" Answer: According to the chain(s) of variable assignment in the text above, 5 "
                                  f"variables are assigned the value {value}, they are: ")
    # the one-shot example (3-letter names), answered, before the task text
    m = re.match(r"Memorize and track .*?they are:  ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3})\n\n"
                 r"Memorize and track", s["template"], re.S)
    assert m and f"VAR {m.group(2)} = VAR {m.group(1)}" in s["template"]
    assert s["template"].endswith("{context}\nQuestion: Find all variables that are assigned the value {input} in the "
                                  "text above.")


def _cwe_counts(context):
    from collections import Counter

    entries = re.split(r"(?:^|\s)\d+\. ", context)[1:]  # "1. word 2. word ..." (a few wonderwords hold a space)
    return dict(Counter(entries))


def test_cwe_repeats_and_fewshot(tok):
    long = _samples("ruler_cwe", tok, length=6000, n=1)[0]  # >= 4K: 30 / 3 repeats, 40-word example with 10 / 3
    counts = _cwe_counts(long["context"])
    assert len(long["answers"]) == 10 and all(counts[w] == 30 for w in long["answers"])
    assert set(counts.values()) == {30, 3}
    shot = long["template"].split("\nBelow is a numbered list")[0]
    assert shot.startswith("Below is a numbered list of words.") and "\n1. " in shot
    assert re.search(r" Answer: The top 10 words that appear most often in the list are: 1\. \S+ .* 10\. \S+$", shot)
    shot_counts = _cwe_counts(shot.split("\nQuestion:")[0])
    assert sorted(shot_counts.values()) == [3] * 30 + [10] * 10
    short = _samples("ruler_cwe", tok, length=3072, n=1)[0]  # < 4K: 6 / 1 repeats, 20-word example with 3 / 1
    assert set(_cwe_counts(short["context"]).values()) == {6, 1}
    shot_counts = _cwe_counts(short["template"].split("\nBelow is a numbered list")[0].split("\nQuestion:")[0])
    assert sorted(shot_counts.values()) == [1] * 10 + [3] * 10


@pytest.mark.parametrize("name, question", [
    ("ruler_cwe", "Question: What are the 10 most common words in the above list?"),
    ("ruler_fwe", "Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
                  "frequently appeared words in the above coded text?")])
def test_keyless_tasks_give_their_question_as_input(tok, name, question):
    """CWE / FWE name no key: the question after the haystack is the sample's input (what the support selection
    looks for around an answer), marked {input} in the template, so the prompt is the same text and tokens."""
    s = _samples(name, tok, length=2048, n=1)[0]
    assert s["input"] == question and s["template"].endswith("\n{input}")
    literal = s["template"].replace("{input}", question.replace("{", "{{").replace("}", "}}"))
    with_input = build_prompt(tok, s["context"], s["template"], {"input": s["input"]}, answer_prefix=s["answer_prefix"])
    plain = build_prompt(tok, s["context"], literal, {}, answer_prefix=s["answer_prefix"])
    assert (with_input.prefix_ids, with_input.suffix_ids) == (plain.prefix_ids, plain.suffix_ids)
    assert with_input.query_text == question and with_input.query_span is not None


def test_support_selection_runs_on_every_offline_task(tmp_path):
    args = ["eval", "--model", "oprm-ar-mamba2", "--tasks", "ruler_cwe,ruler_fwe,ruler_vt", "--lengths", "2048",
            "--samples", "1", "--modes", "oprm", "--selection", "support", "--chunk-size", "300",
            "--output-path", str(tmp_path), "--quiet", "--no-plots"]
    assert cli.main(args) == 0
    preds = [json.loads(x) for x in open(next((tmp_path / "oprm-ar-mamba2").glob("oprm_cs300_support*/pred/"
                                                                                    "ruler_cwe.jsonl")))]
    assert len(preds) == 1 and preds[0]["num_chunks"] >= 2 and preds[0]["selection"] == "support"


def test_fwe_zeta_counts():
    assert zeta(2.0) == pytest.approx(1.6449340668482264)
    assert zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-9)
    spec = get_task("ruler_fwe").params
    import random

    inp, n = fwe_sample(spec, random.Random(0), 42, lambda i: 0, 5000, num_words=1000)
    words = inp.context.split(" ")
    # int(1000 * k**-2 / zeta(2)): 607 noise dots, then 151, 67, 37 for the three answers
    assert n == 1000 and words.count("...") == 607
    assert [words.count(w) for w in inp.answers] == [151, 67, 37]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in inp.answers)
    assert inp.answer_prefix == " Answer: According to the coded text above, the three most frequently appeared words are:"


def _squad(tmp_path):
    data = {"data": [
        {"title": "A", "paragraphs": [
            {"context": "Paris is the capital of France.", "qas": [
                {"question": "What is the capital of France?", "is_impossible": False,
                 "answers": [{"text": "Paris"}, {"text": "Paris, France"}]},
                {"question": "Unanswerable?", "is_impossible": True, "answers": []}]},
            {"context": "France is in Europe.", "qas": []}]},
        {"title": "B", "paragraphs": [{"context": f"Filler paragraph {i} about rivers." , "qas": []}
                                      for i in range(40)]}]}
    p = tmp_path / "dev-v2.0.json"
    p.write_text(json.dumps(data))
    return p


def test_qa_squad_and_hotpotqa(tok, tmp_path):
    s = _samples("ruler_qa_1", tok, length=1024, n=1, ruler_squad=str(_squad(tmp_path)))[0]
    assert s["answers"] == ["Paris", "Paris, France"] and s["input"] == "What is the capital of France?"
    assert re.match(r"Document 1:\n", s["context"]) and "Paris is the capital of France." in s["context"]
    assert "France is in Europe." in s["context"]  # the article's other paragraphs come first as distractors
    assert s["template"].endswith("\n\nQuestion: {input}") and s["answer_prefix"] == " Answer:"
    docs = re.findall(r"Document (\d+):\n", s["context"])
    assert docs == [str(i + 1) for i in range(len(docs))] and len(docs) > 5
    hp = tmp_path / "hotpot.json"
    hp.write_text(json.dumps([{"question": "Who?", "answer": "Ann", "context": [["T1", ["Ann wrote it. ", "Yes."]],
                                                                              ["T2", ["Other."]]]},
                              {"question": "Q2", "answer": "x", "context": [["T3", ["Third."]]]}]))
    h = _samples("ruler_qa_2", tok, length=1024, n=1, ruler_hotpotqa=str(hp))[0]
    assert "T1\nAnn wrote it. Yes." in h["context"] and h["answers"] == ["Ann"]
    with pytest.raises(OPRMUsageError, match="ruler-squad"):
        _samples("ruler_qa_1", tok)


def test_metrics_match_official_definitions():
    # control characters become newlines, then strip; case-insensitive containment
    pred = "\x02The numbers are 1234567 and ABC\x1f"
    assert string_match_all(pred, ["1234567", "abc", "7654321", "zzz"]) == 0.5
    assert string_match_part(pred, ["7654321", "abc"]) == 1.0
    assert string_match_part(pred, ["nope"]) == 0.0
    assert string_match_all("", ["a"]) == 0.0
    recs = [{"score": 1.0, "pred": "x", "setting": {"target_length": 4096}},
            {"score": 0.5, "pred": " \x00\n", "setting": {"target_length": 4096}},
            {"score": 0.0, "pred": "y", "setting": {"target_length": 8192}}]
    by = ruler_by_length(recs)
    assert by["4096"]["score"] == 75.0 and by["4096"]["nulls"] == 1 and by["4096"]["n"] == 2
    assert by["4096"]["sd"] == round(math.sqrt(2 * 25 ** 2), 4)  # sample sd of 100 and 50, x100 scale
    assert by["8192"]["nulls"] == 0 and math.isnan(by["8192"]["sd"])


def test_average_ci_hand_example():
    # two tasks, 4 samples each: 50 (sd 57.735) and 100 (sd 0: Agresti-Coull p = 6/8 gives var 1875)
    mean, half = average_ci({"a": {"score": 50.0, "n": 4, "sd": 57.735}, "b": {"score": 100.0, "n": 4, "sd": 0.0}})
    assert mean == 75.0
    assert half == pytest.approx(round(1.96 * math.sqrt(57.735 ** 2 / 4 + 1875 / 4) / 2, 2))


def _pred(task, length, i, score, pred="x", config="vanilla"):
    return {"_id": f"{task}-L{length}-{i}-s42", "task": task, "pred": pred, "score": score, "config": config,
            "setting": {"target_length": length, "haystack": "noise"}}


def test_tables_from_prediction_files_of_split_runs(tmp_path, capsys):
    """Runs split over processes write into one or several model folders; the report reads them back read-only,
    deduplicates by (config, id), keeps the first N samples on request and ignores a torn last line."""
    a, b = tmp_path / "a" / "m", tmp_path / "b" / "m"
    for root, recs in ((a, [_pred("niah_single_1", 4096, 0, 1.0), _pred("niah_single_1", 4096, 1, 0.0),
                            _pred("ruler_cwe", 4096, 0, 0.5, pred="")]),
                       (b, [_pred("niah_single_1", 4096, 1, 0.0), _pred("niah_single_1", 8192, 0, 1.0),
                            _pred("niah_single_1", 4096, 2, 1.0)])):
        path = root / "vanilla" / "pred"
        path.mkdir(parents=True)
        for task in {r["task"] for r in recs}:
            lines = "".join(json.dumps(r) + "\n" for r in recs if r["task"] == task)
            (path / f"{task}.jsonl").write_text(lines + ('{"_id": "torn' if task == "niah_single_1" else ""))
    torn = (b / "vanilla" / "pred" / "niah_single_1.jsonl").read_text()
    res = results_from_predictions([a, b])
    assert (b / "vanilla" / "pred" / "niah_single_1.jsonl").read_text() == torn  # never truncated while read
    per = res["configs"]["vanilla"]["tasks"]
    assert list(res["tasks"]) == ["niah_single_1", "ruler_cwe"]  # RULER's task order
    assert per["niah_single_1"]["ruler"]["4096"]["n"] == 3 and per["niah_single_1"]["ruler"]["4096"]["score"] == 66.67
    assert (per["niah_single_1"]["ruler"]["8192"]["score"], per["niah_single_1"]["ruler"]["8192"]["n"]) == (100.0, 1)
    assert per["ruler_cwe"]["ruler"]["4096"]["nulls"] == 1
    first2 = results_from_predictions([a, b], lengths=[4096], max_samples=2)["configs"]["vanilla"]["tasks"]
    assert first2["niah_single_1"]["ruler"] == {"4096": {"score": 50.0, "n": 2, "sd": 70.7107, "nulls": 0}}
    only = results_from_predictions([a, b], tasks=["ruler_cwe"])
    assert list(only["tasks"]) == ["ruler_cwe"] and list(only["configs"]["vanilla"]["tasks"]) == ["ruler_cwe"]
    out = tmp_path / "docs"
    assert ruler_report_main([str(a), str(b), "--output", str(out)]) == 0
    md = capsys.readouterr().out
    assert "### 4096 tokens" in md and "### 8192 tokens" in md and "### Averages" in md
    mean, half = average_ci({t: per[t]["ruler"]["4096"] for t in ("niah_single_1", "ruler_cwe")})
    assert f"{mean:.2f} ± {half:.2f} (2 tasks, n=1-3)" in md
    rows = list(csv.reader(open(out / "vanilla" / "ruler" / "4096" / "summary.csv")))
    assert rows[1:] == [["Tasks", "niah_single_1", "ruler_cwe"], ["Score", "66.67", "50.0"], ["Nulls", "0/3", "1/1"]]
    # column names for publishing; summary.csv stays under the config's folder; the plot of the averages
    assert ruler_report_main([str(a), "--configs", "vanilla", "--labels", "plain model", "--output", str(out),
                              "--plot", "--window", "8192"]) == 0
    assert "| task | plain model |" in capsys.readouterr().out
    assert (out / "vanilla" / "ruler" / "4096" / "summary.csv").is_file() and not (out / "plain model").exists()
    assert (out / "ruler_by_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ruler_report_main([str(a), "--configs", "vanilla,truncate_cs2000", "--labels", "plain"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--labels needs one name per --configs entry" in err


def test_eval_end_to_end_on_the_shipped_model(tmp_path, capsys):
    args = ["eval", "--model", "oprm-ar-mamba2", "--tasks", "niah_single_1,ruler_fwe,ruler_qa_1", "--lengths", "1024",
            "--samples", "2", "--modes", "vanilla,oprm", "--chunk-size", "400", "--output-path", str(tmp_path),
            "--quiet", "--no-plots"]
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "skipping ruler_qa_1: give --ruler-squad FILE" in out.err and "## RULER" in out.out
    root = tmp_path / "oprm-ar-mamba2"
    rows = list(csv.reader(open(root / "vanilla" / "ruler" / "1024" / "summary.csv")))
    assert rows[0] == ["0", "1", "2"]  # RULER's DataFrame.to_csv header
    assert [r[0] for r in rows[1:]] == ["Tasks", "Score", "Nulls"] and rows[1][1:] == ["niah_single_1", "ruler_fwe"]
    assert re.fullmatch(r"\d+\.\d+", rows[2][1]) and re.fullmatch(r"\d/2", rows[3][1])
    preds = [json.loads(x) for x in open(root / "oprm_cs400_entropy_idk" / "pred" / "niah_single_1.jsonl")]
    assert len(preds) == 2 and all(p["num_chunks"] >= 2 for p in preds)  # OPRM split the haystack into chunks
    assert preds[0]["setting"] == {"target_length": 1024, "haystack": "noise"}
    res = json.loads((root / "results.json").read_text())
    assert res["configs"]["vanilla"]["tasks"]["ruler_fwe"]["ruler"]["1024"]["n"] == 2
    assert "ruler.md" in {p.name for p in root.iterdir()}
    made = make_plots(res, tmp_path / "plots")  # RULER's plot, and no empty NIAH plot for RULER's niah_* tasks
    assert {p.name for p in made} == {"ruler_by_length.png"}
    # resume: a second run finds every sample done and writes no new line
    before = (root / "vanilla" / "pred" / "ruler_fwe.jsonl").read_text()
    assert cli.main(args) == 0
    assert (root / "vanilla" / "pred" / "ruler_fwe.jsonl").read_text() == before
    # a later run at another length adds its column to the tables instead of replacing the first
    assert cli.main([a if a != "1024" else "1100" for a in args]) == 0
    res = json.loads((root / "results.json").read_text())
    assert set(res["configs"]["vanilla"]["tasks"]["ruler_fwe"]["ruler"]) == {"1024", "1100"}
    assert (root / "vanilla" / "ruler" / "1100" / "summary.csv").is_file()
    # a bad data path is one line and a non-zero exit, before any model work
    assert cli.main(args + ["--ruler-squad", str(tmp_path / "nope.json")]) != 0
    assert "no such file" in capsys.readouterr().err
