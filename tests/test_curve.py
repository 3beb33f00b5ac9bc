"""Issue 9 (a flat OPRM curve): OPRM-exact training windows, the real-prose haystack and its secret-number needle."""
import random
from pathlib import Path

import pytest

from oprm.chunking import make_chunks
from oprm.config import OPRMConfig
from oprm.synthetic.niah import (SECRET_NEEDLE, make_secret_number_episode, prose_haystack_path,
                                 prose_sentences)

MODEL_DIR = Path(__file__).resolve().parents[1] / "src" / "oprm" / "models" / "oprm-ar-mamba2"


def test_prose_haystack_ships_and_segments():
    path = prose_haystack_path()
    assert path.is_file() and 150_000 < path.stat().st_size < 250_000
    sents = prose_sentences()
    assert len(sents) > 1000 and sents[2] == "Call me Ishmael."
    assert not any("\n" in s and "\n\n" not in s for s in sents[:200])  # hard-wrapped lines were joined


@pytest.mark.parametrize("seed", range(6))
def test_secret_number_episode(seed):
    ep = make_secret_number_episode(seed, 3000)
    assert ep.context.count(ep.needle) == 1 and ep.answer in ep.needle and len(ep.answer) == 5
    assert ep.needle == SECRET_NEEDLE.format(thing=ep.question.split("inside the ")[1].split(" of ")[0],
                                             person=ep.question.split(" of ")[1].rstrip("?"), value=ep.answer)
    assert 2900 <= ep.length <= 3400 and 0 <= ep.depth <= 100
    assert ep == make_secret_number_episode(random.Random(seed), 3000)
    # the needle is a sentence of its own: boundary-safe chunks keep it whole
    offs = [(i, i + 1) for i in range(len(ep.context))]  # one "token" per character
    chunks = make_chunks(len(offs), 400, offsets=offs, chunking="sentences", text=ep.context)
    s0 = ep.context.index(ep.needle)
    assert any(c.char_start <= s0 and s0 + len(ep.needle) <= c.char_end for c in chunks)


def test_secret_number_depth():
    assert make_secret_number_episode(1, 2000, depth=0).context.startswith("The secret number")
    assert make_secret_number_episode(1, 2000, depth=100).context.endswith(
        make_secret_number_episode(1, 2000, depth=100).needle)


def test_oprm_training_windows_are_engine_chunks():
    """--data oprm trains on [P, C_j, S] with C_j one of the engine's chunks of a longer document."""
    from transformers import AutoTokenizer

    from oprm.config import IDK_WORD
    from oprm.training.chat import prompt_parts
    from oprm.training.data import OPRM_MIX, make_batches, sample_oprm_example
    from oprm.training.train import weighted_loss

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    rng = random.Random(0)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    n_window = n_idk = n_value = 0
    for _ in range(40):
        ids, labels, firsts = sample_oprm_example(rng, tok, 128)
        assert len(ids) == len(labels) and firsts
        for f in firsts:  # every supervised answer starts at a first-answer position
            assert labels[f] == ids[f] and labels[f - 1] == -100
            if tok.decode([ids[f]]) == IDK_WORD:
                n_idk += 1
            else:
                n_value += 1
        supervised = [i for i, lab in zip(ids, labels) if lab != -100]
        assert supervised.count(im_end) == len(firsts)
        # the first turn is P + 128 context tokens + S, exactly as the engine builds a chunk's prompt
        end = firsts[0]
        first_turn = tok.decode(ids[:end])
        question = first_turn.split("Question: ")[1].split("<|im_end|>")[0]
        a_pre = first_turn.split("<|im_start|>assistant\n")[1]
        pre, suf = prompt_parts(tok, question, answer_prefix=a_pre)
        assert ids[:len(pre)] == pre and ids[end - len(suf):end] == suf
        ctx_len = end - len(pre) - len(suf)
        assert ctx_len <= 128
        n_window += ctx_len == 128
    assert n_window > 20 and n_idk > 20 and n_value > 20
    assert OPRM_MIX["chunkings"] and set(OPRM_MIX["snaps"]) == {"end", "start"}
    ids, lab, first = make_batches(rng, tok, 8, 4, 128, data="oprm")[0]
    import torch

    logits = torch.randn(*ids.shape, len(tok))
    base = weighted_loss(logits, lab, first, 1.0)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, len(tok)), lab[:, 1:].reshape(-1),
                                            ignore_index=-100)
    assert torch.allclose(base, ref, atol=1e-5)
    assert not torch.allclose(weighted_loss(logits, lab, first, 3.0), base)


def test_window_eval_runs():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oprm.training.heldout import window_eval

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    acc, idk = window_eval(model, tok, 128, mult=4, n_episodes=4, keyless_per_episode=2)
    assert 0 <= acc <= 1 and 0 <= idk <= 1


def test_chunk_stats_lookahead_equals_generate_on_boundary_safe_chunks():
    """The study's batched look-ahead over every boundary-safe chunk equals model.generate on [P, C_j, S] alone."""
    import torch

    from oprm import OPRM
    from oprm.synthetic.ar import make_ar_episode
    from oprm.training.chunk_stats import chunk_records
    engine = OPRM.from_pretrained(str(MODEL_DIR), chunk_size=128)
    ep = make_ar_episode(random.Random(99), 24)
    prompt = engine.build_prompt(**ep.prompt_kwargs())
    chunks = make_chunks(len(prompt.context_ids), 128, offsets=prompt.context_offsets, text=prompt.context_text,
                         chunking="sentences", snap="end")
    assert len(chunks) > 2
    recs = chunk_records(engine, prompt, chunks, 6, 3, ep.answer, ep.needle, ep.context)
    assert sum(r["needle_whole"] for r in recs) >= 1
    eos = engine.tokenizer.eos_token_id
    for c, r in zip(chunks, recs):
        row = prompt.prefix_ids + prompt.context_ids[c.token_start:c.token_end] + prompt.suffix_ids
        out = engine.model.generate(torch.tensor([row]), max_new_tokens=6, do_sample=False, eos_token_id=eos,
                                    pad_token_id=eos)[0, len(row):].tolist()
        text = engine.tokenizer.decode([t for t in out if t != eos], skip_special_tokens=True).strip()
        assert text == r["text"]


def test_replayed_paper_rule_matches_the_engine():
    """chunk_stats' replay of token chunks + entropy + IDK picks the engine's chunk and answer (the paper config)."""
    from oprm import OPRM
    from oprm.training.chunk_stats import choose, chunk_records, make_rules
    from oprm.synthetic import long_episodes

    engine = OPRM.from_pretrained(str(MODEL_DIR), config=OPRMConfig.paper(chunk_size=128))
    eps, _ = long_episodes(engine.tokenizer, 6 * 128, 4, 777)
    filt, score = make_rules()["entropy"]
    for ep in eps:
        res = engine.generate(**ep.prompt_kwargs(), max_new_tokens=8, do_sample=False)
        prompt = engine.build_prompt(**ep.prompt_kwargs())
        chunks = make_chunks(len(prompt.context_ids), 128, offsets=prompt.context_offsets)
        recs = chunk_records(engine, prompt, chunks, 8, 40, ep.answer, ep.needle, ep.context)
        pick = choose(recs, filt, score)
        assert (pick["text"] if pick else "Error") == res.text
        assert (pick["index"] if pick else None) == (res.chosen[0] if res.chosen else None)


def test_replayed_support_rule_matches_the_engine():
    """The engine's default (sentence chunks + support selection) picks the chunk and answer that chunk_stats'
    offline replay of the study's support_div rule picks."""
    from oprm import OPRM
    from oprm.training.chunk_stats import choose, chunk_records, make_rules
    from oprm.synthetic import long_episodes

    engine = OPRM.from_pretrained(str(MODEL_DIR), chunk_size=128, lookahead_tokens=8)
    eps, _ = long_episodes(engine.tokenizer, 8 * 128, 6, 778)
    filt, score = make_rules()["support_div"]
    for ep in eps:
        res = engine.generate(**ep.prompt_kwargs(), max_new_tokens=8)
        prompt = engine.build_prompt(**ep.prompt_kwargs())
        chunks = make_chunks(len(prompt.context_ids), 128, offsets=prompt.context_offsets, chunking="sentences",
                             text=prompt.context_text)
        recs = chunk_records(engine, prompt, chunks, 8, 40, ep.answer, ep.needle, ep.context, query=ep.question)
        pick = choose(recs, filt, score)
        assert (pick["text"] if pick else "Error") == res.text
        won = res.chunks[res.chosen[0]] if res.chosen else None
        tied = [c.index for c in res.chunks if c.score is not None and won and c.support == won.support and
                (abs(c.score - won.score) < 1e-4 or c.lookahead_ids == won.lookahead_ids)]
        # windows sharing the needle can tie to 1e-6 (the replay rounds log-probs to 1e-5); among contenders that give
        # one answer the engine scores the whole answer, the replay only what follows where every chunk's differ
        if len(tied) <= 1:
            assert (pick["index"] if pick else None) == (res.chosen[0] if res.chosen else None)


def test_train_ar_recipes(tmp_path, monkeypatch):
    import json

    import oprm.training.recipe as R
    import oprm.training.train as T

    assert R.recipe_argv([]) == [] and R.recipe_argv(["--out", "x", "--no-measure"]) == ["--out", "x", "--no-measure"]
    assert R.recipe_argv(["--minutes", "3"]) is None and R.recipe_argv(["--out", "x", "--data", "oprm"]) is None
    # train-ar with no training options runs a recipe, each stage through train-ar itself
    dispatched = []
    monkeypatch.setattr(T, "train_recipe", lambda passthrough, run_stage: dispatched.append((passthrough, run_stage)))
    T.main(["--out", "x", "--recipe", "stage1"])
    assert dispatched == [(["--out", "x", "--recipe", "stage1"], T.main)]
    assert R.TRAIN_COMMAND == "oprm train-ar"  # the recorded command runs the same entry point

    calls = []

    def fake_main(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "training_meta.json").write_text(json.dumps({"command": "x"}))
        return 0

    # stage 1 alone: the model before the previous one, train-ar's original single-stage defaults
    assert R.train_recipe(["--no-measure", "--out", str(tmp_path / "s"), "--recipe", "stage1"], fake_main) == 0
    assert calls == [["--minutes", "45", "--max-ctx-tokens", "128", "--out", str(tmp_path / "s"), "--threads", "1",
                      "--no-measure"]]
    calls.clear()
    # no options: the shipped model's three stages, every one with 8-tap convolutions and values sharing leading digits
    assert R.train_recipe(["--out", str(tmp_path / "m"), "--no-measure"], fake_main) == 0
    assert len(calls) == len(R.RECIPES["shipped"]) == 3
    assert calls[1][:2] == calls[2][:2] == ["--data", "oprm"] and calls[2].count("--schedule-steps") == 1
    assert all(c[c.index("--conv-kernel") + 1] == "8" and "--value-prefix-prob" in c for c in calls)
    assert "--init-from" not in calls[0] and calls[1][calls[1].index("--init-from") + 1] == str(tmp_path / "m" / ".stage1")
    assert calls[-1][calls[-1].index("--out") + 1] == str(tmp_path / "m") and all("--no-measure" in c for c in calls)
    meta = json.loads((tmp_path / "m" / "training_meta.json").read_text())
    assert len(meta["stages"]) == 3 and not (tmp_path / "m" / ".stage1").exists()
    calls.clear()
    # the previous shipped model: stage 1 with 4-tap convolutions, then the two OPRM-window stages
    assert R.train_recipe(["--out", str(tmp_path / "c"), "--no-measure", "--recipe", "conv4"], fake_main) == 0
    assert calls[0][:4] == ["--minutes", "45", "--max-ctx-tokens", "128"] and len(calls) == 3
    assert not any("--conv-kernel" in c for c in calls) and calls[2][:2] == ["--data", "oprm"]


def test_support_and_rules_on_synthetic_records():
    from oprm.training.chunk_stats import choose, make_rules, support

    q = "What is the code of the amber falcon?"
    assert support("Hi. The pin of the green falcon is 123. The code of the amber falcon is 4821. Ok.", "4821", q) == 1
    assert abs(support("The pin of the green falcon is 123. Yes.", "123", q) - 1 / 3) < 1e-9
    assert support("The pin of the green falcon is 1234. Yes.", "123", q) == 0  # whole numbers only
    assert support("Nothing here.", "", q) == 0

    def rec(i, text, idk0, lps, supp, p_idk=0.1, ent=1.0):
        return dict(index=i, text=text, pieces=list(text) or [""], is_idk0=idk0, logprobs=lps, entropies=[1.0] * len(lps),
                    entropy0=ent, p_idk0=p_idk, answer_in_chunk=supp > 0, support=supp, correct=text == "4821")

    chunks = [rec(0, "123", False, [-0.1, -0.1, -0.1], 1 / 3, ent=0.2),     # confident copy of a same-noun fact
              rec(1, "Error", True, [-0.01], 0.0),
              rec(2, "4821", False, [-0.3, -0.2, -0.2, -0.2], 1.0, ent=0.9)]
    rules = make_rules()
    assert choose(chunks, *rules["entropy"])["index"] == 0          # the paper's rule takes the confident copy
    assert choose(chunks, *rules["support_div"])["index"] == 2      # support prefers the needle's own sentence
    assert choose([chunks[1]], *rules["support_div"]) is None        # all IDK: the answer is the IDK word
    assert choose([chunks[1]], *make_rules(idk=False)["support_div"])["index"] == 1


@pytest.mark.parametrize("grow", ["conv", "layers"])
def test_grown_model_computes_the_same_function(grow):
    """Growing the shipped model (wider convolutions, more layers) starts from the same function it had."""
    import torch
    from transformers import AutoModelForCausalLM

    from oprm.training.model import grow_conv, grow_layers

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    grown = (grow_conv(model, model.config.conv_kernel + 4) if grow == "conv" else grow_layers(model, 4)).eval()
    assert grown.config.conv_kernel == model.config.conv_kernel + 4 or grown.config.num_hidden_layers == 4
    ids = torch.randint(5, model.config.vocab_size, (2, 150), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, grown(ids).logits, atol=1e-4)
