"""The synthetic associative-recall task and the small Mamba2 model shipped with oprm."""
import json
import random
from pathlib import Path

import pytest

from oprm.config import IDK_WORD
from oprm.synthetic import AR_TEMPLATE, AREpisode, ar_messages, make_ar_episode
from oprm.synthetic.ar import extra_question
from oprm.synthetic.filler import filler_sentence

MODEL_DIR = Path(__file__).resolve().parents[1] / "src" / "oprm" / "models" / "oprm-ar-mamba2"


def test_template_has_placeholders_and_idk_instruction():
    assert AR_TEMPLATE.count("{context}") == 1 and AR_TEMPLATE.count("{input}") == 1
    assert 'return "Error"' in AR_TEMPLATE and IDK_WORD == "Error"


def test_generator_is_deterministic():
    a = make_ar_episode(123, 8, filler_ratio=1.0, slice_edges=True)
    b = make_ar_episode(random.Random(123), 8, filler_ratio=1.0, slice_edges=True)
    assert a == b
    assert make_ar_episode(124, 8) != a
    assert [filler_sentence(random.Random(5)) for _ in range(3)] == [filler_sentence(random.Random(5))
                                                                     for _ in range(3)]


@pytest.mark.parametrize("seed", range(40))
def test_answer_in_context_iff_present(seed):
    rng = random.Random(seed)
    present = seed % 2 == 0
    ep = make_ar_episode(rng, rng.randint(0 if not present else 1, 30), filler_ratio=rng.choice([0, 0.5, 2.0]),
                         present=present, slice_edges=bool(seed % 3))
    assert isinstance(ep, AREpisode) and ep.present == present
    assert ep.question and ep.key
    if present:
        assert ep.needle in ep.context and ep.needle in ep.facts
        assert ep.key in ep.needle and ep.answer in ep.needle
        assert ep.needle == f"{ep.answer_prefix}{ep.answer}."  # the reply opens with the fact's own words
        assert ep.context.count(ep.key) == 1  # the key occurs only in its fact
    else:
        assert ep.answer == IDK_WORD and ep.needle is None
        assert ep.key not in ep.context  # IDK episodes never mention the key
    assert all(f in ep.context for f in ep.facts)
    assert len({r[0] for r in ep.records}) == len(ep.records)  # keys are unique within a document
    assert ep.key in ep.question and ep.key in ep.answer_prefix and ep.answer_prefix.endswith(" is ")


def test_needle_position_and_hard_negatives():
    ep = make_ar_episode(7, 10, filler_ratio=0.0, needle_pos=0.0)
    assert ep.needle == ep.facts[0]
    ep = make_ar_episode(7, 10, filler_ratio=0.0, needle_pos=1.0)
    assert ep.needle == ep.facts[-1]
    shared = 0
    for s in range(50):
        ep = make_ar_episode(s, 10, present=False, hard_negative_prob=1.0)
        words = set(ep.key.split())
        shared += any(words & set(k.split()) for k, _, _ in ep.records)
    assert shared == 50



def test_values_sharing_leading_digits():
    """The training option that makes values share leading digits: distinct values, each after the first sharing
    at least its first digit with an earlier one when asked always; off by default without touching the seeds."""
    for s in range(30):
        values = [v for _, _, v in make_ar_episode(s, 8, value_prefix_prob=1.0).records]
        assert len(set(values)) == len(values)
        assert all(any(v[0] == u[0] for u in values[:i]) for i, v in enumerate(values) if i)
    # the values this seed drew before the option existed
    assert [v for _, _, v in make_ar_episode(3, 8).records] == ["7350", "7471", "3197", "2596", "239", "4555",
                                                                  "8146", "7900"]

def test_extra_question():
    rng = random.Random(0)
    ep = make_ar_episode(3, 6)
    seen = set()
    for _ in range(40):
        q, prefix, a = extra_question(rng, ep)
        seen.add(a == IDK_WORD)
        if a == IDK_WORD:
            assert not any(k in q for k, _, _ in ep.records)
        else:
            assert f"{prefix}{a}." in ep.facts
    assert seen == {True, False}


def test_messages():
    ep = make_ar_episode(1, 3)
    msgs = ar_messages(ep)
    assert msgs[0]["role"] == "user" and ep.context in msgs[0]["content"] and ep.question in msgs[0]["content"]


# ---------------------------------------------------------------------------- the shipped model folder
needs_model = pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").exists(), reason="model not trained yet")


@pytest.fixture(scope="module")
def shipped():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    return model, tok


@needs_model
def test_folder_contents():
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "README.md"):
        assert (MODEL_DIR / f).exists(), f
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 20 * 2 ** 20


def test_ar_prompt_format_gives_each_question_its_answer_prefix(tmp_path):
    from oprm.prompts import PromptFormat
    from oprm.synthetic.ar import AR_PROMPT_FORMAT

    for s in range(40):
        ep = make_ar_episode(s, 3, person_prob=0.5)
        assert AR_PROMPT_FORMAT.answer_prefix_for(ep.question) == ep.answer_prefix
    assert AR_PROMPT_FORMAT.answer_prefix_for("Who signed the agreement?") is None
    assert AR_PROMPT_FORMAT.answer_prefix_for(None) is None
    AR_PROMPT_FORMAT.save(tmp_path)
    assert PromptFormat.load(tmp_path) == AR_PROMPT_FORMAT and PromptFormat.load(tmp_path / "none") is None
    if MODEL_DIR.exists():  # the shipped model speaks it (written by training's save)
        assert PromptFormat.load(MODEL_DIR) == AR_PROMPT_FORMAT


@needs_model
def test_questions_without_a_template_use_the_shipped_models_prompt(tmp_path):
    """`oprm ask`'s path (OPRM.from_pretrained, a bare question): the prompt is the one the model was trained on, so
    the answer is the fact's value, as with the episode's own prompt; an explicit template still wins."""
    from oprm import OPRM

    engine = OPRM.from_pretrained("oprm-ar-mamba2")
    ep = make_ar_episode(5, 40)
    bare = engine.build_prompt(ep.context, ep.question)
    own = engine.build_prompt(**{k: v for k, v in ep.prompt_kwargs().items() if k != "context"}, context=ep.context)
    assert (bare.prefix_ids, bare.context_ids, bare.suffix_ids) == (own.prefix_ids, own.context_ids, own.suffix_ids)
    assert engine.generate(ep.context, ep.question, max_new_tokens=8).text.strip() == ep.answer
    doc = engine.encode(ep.context)
    assert engine.generate(document=doc, query=ep.question, max_new_tokens=8).text.strip() == ep.answer
    other = engine.build_prompt(ep.context, ep.question, template="{context}\nQ: {input}")
    assert other.suffix_ids != bare.suffix_ids


@needs_model
def test_tokenizer(shipped):
    model, tok = shipped
    for w in ("Error", " Error"):
        assert len(tok.encode(w, add_special_tokens=False)) == 1
    assert tok.tokenize("4821") == ["4", "8", "2", "1"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    ep = make_ar_episode(11, 5, slice_edges=True)
    for text in (ep.context, ep.question, AR_TEMPLATE):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    rendered = tok.apply_chat_template(ar_messages(ep), add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<|im_start|>user\n") and rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.apply_chat_template(ar_messages(ep), add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tok.decode(ids) == rendered


@needs_model
def test_config(shipped):
    model, tok = shipped
    cfg = model.config
    assert cfg.model_type == "mamba2"
    assert cfg.pad_token_id == tok.pad_token_id and cfg.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg.vocab_size >= len(tok)
    assert cfg.num_heads * cfg.head_dim == cfg.expand * cfg.hidden_size


@needs_model
def test_shipped_model_retrieves_and_says_error(shipped):
    """Guards the shipped checkpoint's measured in-distribution behaviour (model card: accuracy 0.95, IDK 0.90 with
    half the absent keys sharing a word with a present key) on fresh seeds, through model.generate on [P, C, S]
    (16 / 16 and 6 / 8 when written)."""
    import torch

    from oprm.prompts import build_prompt
    from oprm.training.heldout import heldout_episodes

    model, tok = shipped
    train_len = json.loads((MODEL_DIR / "training_meta.json").read_text())["max_ctx_tokens"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    results = {}
    for present, n in ((True, 16), (False, 8)):
        results[present] = 0
        for ep in heldout_episodes(31_337 + present, n, present, tok=tok, max_ctx_tokens=train_len):
            parts = build_prompt(tok, ep.context, AR_TEMPLATE, {"input": ep.question}, answer_prefix=ep.answer_prefix)
            ids = torch.tensor([parts.prefix_ids + parts.context_ids + parts.suffix_ids])
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=eos,
                                     pad_token_id=tok.pad_token_id)
            results[present] += tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == ep.answer
    assert results[True] >= 14 and results[False] >= 5, results


@needs_model
def test_shipped_model_overflows_and_oprm_recovers(shipped):
    """At 8x the training length vanilla has lost most facts (33 % in the demo); OPRM with chunks of the training
    length finds them (vanilla 1 / 8, OPRM 8 / 8 when written)."""
    from oprm import OPRM
    from oprm.synthetic import long_episodes

    model, tok = shipped
    train_len = json.loads((MODEL_DIR / "training_meta.json").read_text())["max_ctx_tokens"]
    engine = OPRM(model, tok, chunk_size=train_len)
    episodes, _ = long_episodes(tok, 8 * train_len, 8, seed=4242)
    vanilla = oprm = 0
    for ep in episodes:
        kw = dict(ep.prompt_kwargs(), max_new_tokens=8)
        vanilla += engine.generate(mode="vanilla", **kw).text.strip() == ep.answer
        oprm += engine.generate(**kw).text.strip() == ep.answer
    assert vanilla <= 3 and oprm >= vanilla + 4, (oprm, vanilla)


@needs_model
def test_training_tokenizes_prompts_exactly_as_the_engine(shipped):
    """Training builds [P, C, S] itself (fast); it must produce the same ids as oprm.prompts.build_prompt."""
    from oprm.prompts import build_prompt
    from oprm.training.chat import prompt_parts
    from oprm.training.data import sample_example

    _, tok = shipped
    for seed in range(5):
        ep = make_ar_episode(seed, 4, present=seed % 2 == 0, slice_edges=True)
        parts = build_prompt(tok, ep.context, AR_TEMPLATE, {"input": ep.question}, answer_prefix=ep.answer_prefix)
        assert prompt_parts(tok, ep.question, AR_TEMPLATE, ep.answer_prefix) == (parts.prefix_ids, parts.suffix_ids)
    ids, labels = sample_example(random.Random(0), tok, 256)
    assert len(ids) == len(labels)
    supervised = [i for i, lab in zip(ids, labels) if lab != -100]
    assert supervised and all(lab == i for i, lab in zip(ids, labels) if lab != -100)
    # only answers and their <|im_end|> are supervised: never a prompt token such as <|im_start|>
    assert tok.convert_tokens_to_ids("<|im_start|>") not in supervised
    assert tok.convert_tokens_to_ids("<|im_end|>") in supervised


@needs_model
def test_demo_prints_the_table_and_writes_plot_and_json(tmp_path, capsys):
    from oprm.cli import main

    assert main(["demo", "--samples", "2", "--multiples", "1,4", "--output-path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("| length | facts | ≈ tokens | vanilla acc % | OPRM (paper) acc % | OPRM (oprm) acc % |" in out
            and "| 4x |" in out)
    assert "vanilla answer:" in out and "OPRM answer:" in out and "selection: support" in out
    summary = json.loads((tmp_path / "oprm-ar-mamba2" / "demo.json").read_text())
    train_len = json.loads((MODEL_DIR / "training_meta.json").read_text())["max_ctx_tokens"]
    best = json.loads((MODEL_DIR / "chunk_sizes.json").read_text())["best"]
    assert best < train_len  # the measured best chunks shorter than the training length
    assert [p["multiple"] for p in summary["points"]] == [1, 4] and summary["chunk_size"] == best
    assert set(summary["points"][0]) >= {"vanilla", "paper", "oprm"}
    assert summary["options"]["document_cache_bytes"] == 0  # each document is asked once: no cache
    results = json.loads((tmp_path / "oprm-ar-mamba2" / "results.json").read_text())
    # the paper line chunks at the training length, oprm's at the measured best
    assert set(results["configs"]) == {"vanilla", f"oprm_cs{train_len}_entropy_idk",
                                       f"oprm_cs{best}_support_idk_chunking-sentences"}
    assert (tmp_path / "oprm-ar-mamba2" / "plots" / "ar_accuracy_vs_facts.png").stat().st_size > 0


@needs_model
def test_chunk_size_sweep_writes_the_best_size_the_demo_uses(tmp_path):
    import shutil

    from oprm.models import measured_chunk_size
    from oprm.training.measure import main as measure_main

    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("chunk_sizes.json"))
    assert measured_chunk_size(str(folder)) is None  # no sweep yet
    assert measure_main(["--model", str(folder), "--chunk-sizes", "32,128", "--mults", "4", "--n-curve", "6"]) == 0
    res = json.loads((folder / "chunk_sizes.json").read_text())
    assert res["sizes"] == [32, 128] and res["mults"] == [4] and set(res["accuracy"]) == {"32", "128"}
    assert all(0 <= a["4"] <= 1 for a in res["accuracy"].values())
    assert res["best"] == max([32, 128], key=lambda s: (res["mean"][str(s)], s)) == measured_chunk_size(str(folder))
    assert res["options"]["selection"] == "support" and "chunk_size" not in res["options"]
