"""RWKV v4 / v5.2 / v6 / v7 ``.pth`` checkpoints on the official `rwkv` runtime: exactness, World tokenizer, loading, CLI.

Exactness as for every architecture (tests/test_exactness.py): the chosen chunk's answer equals the runtime's own
greedy decoding of [P, C_j, S] alone (``forward(prompt, None)``, then one ``forward([token], state)`` per step) —
same tokens, fp32 logits within 1e-5 — on tiny random-weight checkpoints written in the released key layout.
"""

import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("rwkv")

from oprm import OPRM  # noqa: E402
from oprm.adapters.rwkv_checkpoint import VERSIONS, write_tiny_checkpoint  # noqa: E402
from oprm.adapters.rwkv_runtime import load_rwkv_runtime, runtime_strategy  # noqa: E402
from oprm.adapters.rwkv_world import RwkvWorldTokenizer  # noqa: E402
from oprm.cli import main  # noqa: E402
from oprm.errors import OPRMUsageError  # noqa: E402
from oprm.prompts import idk_token_ids  # noqa: E402

NEW = 5
TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rwkv")
    return {v: write_tiny_checkpoint(folder / f"tiny-v{v}.pth", v) for v in VERSIONS}


@pytest.fixture(scope="module", params=VERSIONS)
def model(request, checkpoints):
    model, _ = load_rwkv_runtime(checkpoints[request.param])
    model.generation_config.eos_token_id = None  # decode a fixed number of tokens
    return model


def reference_generate(model, prompt, max_new_tokens):
    """The runtime's own greedy decoding of one prompt: tokens and the logits each token was chosen from."""
    logits, state = model.runtime.forward(prompt, None)
    tokens, all_logits = [], []
    for _ in range(max_new_tokens):
        all_logits.append(logits.float())
        tokens.append(int(logits.argmax()))
        logits, state = model.runtime.forward([tokens[-1]], state)
    return tokens, all_logits


def make_prompt(seed=0, n_context=40):
    rng = random.Random(seed)
    tokens = lambda n: [rng.randrange(2, 65530) for _ in range(n)]  # noqa: E731
    return tokens(5), tokens(n_context), tokens(6)


def assert_same_as_runtime(model, result, prompt_ids):
    ref_tokens, ref_logits = reference_generate(model, prompt_ids, NEW)
    assert result.token_ids == ref_tokens
    worst = max(float((a - b).abs().max()) for a, b in zip(result.logits, ref_logits))
    assert worst < TOL, f"max |Δlogit| {worst:.2e}"


def test_versions_detected(model):
    assert model.config.version in ("4.0", "5.2", "6.0", "7")
    assert OPRM(model).adapter.continuation_exact == (model.config.version == "7")


def test_every_chunk_row_equals_runtime_greedy(model):
    P, C, S = make_prompt()
    engine = OPRM(model, chunk_size=12, idk=None)
    for j in range(4):  # chunks [0,12) [12,24) [24,36) [36,40)
        result = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, selection="oracle", gold_chunk=j,
                                 max_new_tokens=NEW, output_logits=True)
        assert result.chosen == [j]
        c = result.chunks[j]
        assert_same_as_runtime(model, result, P + C[c.token_start:c.token_end] + S)


def test_entropy_choice_equals_runtime_greedy(model):
    P, C, S = make_prompt(1)
    result = OPRM(model, chunk_size=12, idk=None, selection="entropy").generate(
        prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    (j,) = result.chosen
    entropies = sorted(c.entropy for c in result.chunks)
    if entropies[1] - entropies[0] > 1e-4:  # a clear winner, not a float-noise tie
        assert j == min(result.chunks, key=lambda c: c.entropy).index
    c = result.chunks[j]
    assert_same_as_runtime(model, result, P + C[c.token_start:c.token_end] + S)


def test_one_chunk_equals_vanilla(model):
    P, C, S = make_prompt(2, n_context=10)
    engine = OPRM(model, chunk_size=16, idk=None)
    oprm = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    vanilla = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, mode="vanilla", max_new_tokens=NEW,
                              output_logits=True)
    assert len(oprm.chunks) == 1 and oprm.token_ids == vanilla.token_ids
    assert_same_as_runtime(model, vanilla, P + C + S)


def test_shared_prefix_equals_full_recompute(model):
    P, C, S = make_prompt(3)
    kwargs = dict(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    shared = OPRM(model, chunk_size=12, idk=None, shared_prefix=True).generate(**kwargs)
    full = OPRM(model, chunk_size=12, idk=None, shared_prefix=False).generate(**kwargs)
    assert shared.chosen == full.chosen and shared.token_ids == full.token_ids
    assert max(abs(a.entropy - b.entropy) for a, b in zip(shared.chunks, full.chunks)) < TOL
    assert (shared.tokens_processed < full.tokens_processed) == OPRM(model).adapter.continuation_exact


def test_continuation_within_tolerance_and_exact_on_v7(model):
    """P's state is shared only where continuing it is bit-exact (v7); on v5/v6 it is only within tolerance."""
    adapter = OPRM(model).adapter
    P, C, _ = make_prompt(4, n_context=12)
    full, _ = adapter.prefill(torch.tensor([P + C]))
    _, state = adapter.prefill(torch.tensor([P]))
    cont, _ = adapter.prefill(torch.tensor([C, C]), adapter.select(state, [0, 0]), start=len(P))
    error = float((cont - full).abs().max())
    assert error < TOL
    if adapter.continuation_exact:
        assert error == 0.0


def test_micro_batches_choose_like_one_batch(model):
    P, C, S = make_prompt(5, n_context=60)
    kwargs = dict(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW)
    one = OPRM(model, chunk_size=12, idk=None, max_batch_tokens=10_000).generate(**kwargs)
    small = OPRM(model, chunk_size=12, idk=None, max_batch_tokens=40).generate(**kwargs)
    assert one.chosen == small.chosen and one.token_ids == small.token_ids
    assert [c.entropy for c in one.chunks] == [c.entropy for c in small.chunks]  # rows run one at a time anyway


def test_query_logprobs_use_the_last_positions(model):
    P, C, S = make_prompt(6)
    adapter = OPRM(model).adapter
    logits, _ = adapter.prefill(torch.tensor([P + C + S]), num_logits=3)
    last, _ = adapter.prefill(torch.tensor([P + C + S]))
    assert logits.shape == (1, 3, 65536)
    assert float((logits[:, -1] - last[:, -1]).abs().max()) < TOL  # [T, C] @ head vs [C] @ head: rounding only


# --- the World tokenizer ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return RwkvWorldTokenizer()


def test_idk_ids_are_the_official_ones(tokenizer):
    assert idk_token_ids(tokenizer, "Error") == {33079, 36638}  # 'Error', ' Error' in the official OPRM code


TEXT = ("Passage 1:\nThe Eiffel Tower — in Paris, « Île-de-France ».\n\n  Ελληνικά, 日本語のテキスト, 🤖🚀"
        "\t\r\ndef f(x):\n    return x ** 2  # done\n\n\n")


def test_tokenizer_matches_the_package_and_offsets_round_trip(tokenizer):
    import os

    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    package = TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))
    rng = random.Random(0)
    noise = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xA0, 0x800), rng.randrange(0x800, 0xD800),
                                    rng.randrange(0x10000, 0x10FFFF)])) for _ in range(3000))
    for text in (TEXT * 5, noise, "Instruction: Answer: \n\nResponse:"):
        assert tokenizer(text)["input_ids"] == package.encode(text)
    enc = tokenizer(TEXT, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    assert tokenizer.decode(ids) == TEXT
    assert offsets[0][0] == 0 and offsets[-1][1] == len(TEXT)
    for (s, e), (s2, _), i in zip(offsets, offsets[1:] + [(len(TEXT), 0)], ids):
        assert s < e and s2 in (e, e - 1)  # contiguous; neighbours share a character split across tokens
        assert tokenizer.id_to_token[i] in TEXT[s:e].encode()
    assert [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]) != "\ufffd"] == \
        [TEXT[s:e] for (s, e), i in zip(offsets, ids) if tokenizer.decode([i]) != "\ufffd"]


def test_chat_format(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages) == "System: Be brief.\n\nUser: hi\n\nAssistant:"
    assert tokenizer.decode([0, 33079]) == "<|endoftext|>Error"
    assert tokenizer.decode([0, 33079], skip_special_tokens=True) == "Error"


def test_eval_prompts_are_the_official_oprm_rwkv_ids(model, tmp_path):
    """`oprm eval` switches to the official script's RWKV wrapping, each piece tokenized on its own:
    [Instruction: ] + pre + [\\n\\nInput: ] + context + query + [\\n\\nResponse:]."""
    from pathlib import Path

    from oprm.eval.runner import evaluate
    from oprm.tasks import get_task

    engine = OPRM(model, RwkvWorldTokenizer(), chunk_size=64)
    fixtures = Path(__file__).parent / "fixtures" / "longbench"
    evaluate(engine, "hotpotqa", ["oprm"], [64], None, True, 1, fixtures, tmp_path, 0, model_name="tiny",
             progress=False, plots=False, max_new_tokens=2, prompt_style="oprm")
    assert engine.tokenizer.prompt_format == "instruction"
    question, context = "Who?", "Passage 1:\nSome text."
    prompt = engine.build_prompt(context, template=get_task("hotpotqa").template_for("oprm", True, "oprm"),
                                 fields={"input": question})
    enc = engine.tokenizer.encode
    pre = ("Answer the question based on the given passages. Only give me the answer and do not output any other "
           "words.\n\nThe following are given passages.\n ")
    query = ("\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other "
             "words. If the answer does not exist in the passages, return \"Error\".\n\nQuestion: " + question
             + "\nAnswer: ")
    assert prompt.prefix_ids == [62994, 59, 33] + enc(pre) + [261, 33192, 59, 33]
    assert prompt.context_ids == enc(context)
    assert prompt.suffix_ids == enc(query) + [261, 53671, 59]
    assert engine.tokenizer.decode(prompt.suffix_ids[slice(*prompt.query_span)]).strip() == question


def test_encoded_document_equals_the_runtime(model, tmp_path):
    """A question on an encoded document (v7: S on the kept states, from memory and from disk; v4-v6: recomputed
    from the kept tokens) equals the runtime's greedy decoding of [P, C_j, S]."""
    from oprm.document import EncodedDocument

    P, C, S = make_prompt(3)
    engine = OPRM(model, chunk_size=12, idk=None, document_cache_bytes=0)
    doc = engine.encode(prefix_ids=P, context_ids=C)
    assert bool(doc.held) == (model.config.version == "7")
    docs = [doc] + ([EncodedDocument.load(doc.save(tmp_path / "d.oprm"))] if doc.held else [])
    for document in docs:
        for j in (0, 2):
            result = engine.generate(document=document, suffix_ids=S, selection="oracle", gold_chunk=j,
                                     max_new_tokens=NEW, output_logits=True)
            c = result.chunks[j]
            assert_same_as_runtime(model, result, P + C[c.token_start:c.token_end] + S)


# --- loading and the CLI ------------------------------------------------------------------------------------------
def test_strategy_mapping():
    assert runtime_strategy("float32", None) == "cpu fp32"
    assert runtime_strategy(torch.bfloat16, "cpu") == "cpu bf16"
    assert runtime_strategy("float16", "cuda") == "cuda fp16"
    assert runtime_strategy("auto", "cuda:1") == "cuda:1 fp16"
    assert runtime_strategy("cuda fp16i8 *10 -> cpu fp32", None) == "cuda fp16i8 *10 -> cpu fp32"
    with pytest.raises(OPRMUsageError, match="drop --device"):
        runtime_strategy("cuda fp16i8", "cuda")
    with pytest.raises(OPRMUsageError, match="unknown dtype"):
        runtime_strategy("float64", None)


def test_v7_models_of_two_strategies_side_by_side(checkpoints):
    """The v7 class keeps dtype and device in module globals (its zero state, its CUDA kernel's dtype check): a bf16
    model loaded later must not change them for a fp32 one."""
    fp32, _ = load_rwkv_runtime(checkpoints["7"])
    before = reference_generate(fp32, list(range(100, 120)), 2)
    bf16, _ = load_rwkv_runtime(checkpoints["7"], dtype="bfloat16")
    assert bf16.runtime.generate_zero_state()[0].dtype == torch.bfloat16
    assert fp32.runtime.generate_zero_state()[0].dtype == torch.float32
    after = reference_generate(fp32, list(range(100, 120)), 2)
    assert before[0] == after[0] and all(torch.equal(a, b) for a, b in zip(before[1], after[1]))


def test_from_pretrained_and_ask_end_to_end(checkpoints, tmp_path):
    engine = OPRM.from_pretrained(checkpoints["7"], chunk_size=32)
    assert engine.model.config.model_type == "rwkv_runtime" and engine.tokenizer.prompt_format == "chat"
    context = "The code of the amber falcon is 4821. The weather was calm. " * 8
    prompt = engine.build_prompt(context, "What is the code?")
    assert engine.tokenizer.decode(prompt.prefix_ids).startswith("User: ")
    assert engine.tokenizer.decode(prompt.suffix_ids).endswith("Answer:\n\nAssistant:")
    result = engine.generate(context, "What is the code?", max_new_tokens=3)
    assert len(result.chunks) > 1 and len(result.chosen) == 1
    (tmp_path / "context.txt").write_text(context)
    proc = subprocess.run([sys.executable, "-m", "oprm", "ask", "--model", checkpoints["7"], "--context",
                           str(tmp_path / "context.txt"), "--question", "What is the code?", "--chunk-size", "32",
                           "--max-new-tokens", "3", "--no-idk", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert '"chosen"' in proc.stdout and "Loading" not in proc.stdout  # the runtime's prints stay off stdout


def test_bad_checkpoints_are_one_line_errors(tmp_path, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    (tmp_path / "context.txt").write_text("Some context.")
    cases = {"other.pth": "is not an RWKV checkpoint", "garbage.pth": "is not an RWKV checkpoint",
             "missing.pth": "model file not found"}
    for name, message in cases.items():
        argv = ["ask", "--model", str(tmp_path / name), "--context", str(tmp_path / "context.txt"), "--question", "q"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "oprm", *argv[:2], str(tmp_path / "other.pth"), *argv[3:]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"oprm: error: {tmp_path / 'other.pth'} is not an RWKV checkpoint (no emb.weight / blocks.0.att.key.weight)"]


@pytest.mark.parametrize("name", ["tiny-rwkv6", "tiny-rwkv7"])
def test_bench_rows(name):
    from oprm import bench
    from oprm.cli import build_parser

    args = build_parser().parse_args(["bench", "--model", name, "--lengths", "300", "--chunk-size", "128",
                                      "--repeats", "1", "--threads", "1", "--max-new-tokens", "3",
                                      "--prefix-tokens", "5", "--suffix-tokens", "4"])
    timing, memory = (bench.run_timing(s) if s["kind"] == "timing" else bench.run_memory(s)
                      for s in bench.plan(args)[:2])
    rows = {r["mode"]: r for r in bench.rows_from_cells([timing, memory])}
    assert rows["oprm"]["num_chunks"] == 3 and rows["vanilla"]["peak_rss_mb"] > 0
    shared = name == "tiny-rwkv7"  # v6 re-runs P with every chunk (its continuation is not bit-exact)
    assert rows["oprm"]["prefill_tokens"] == 3 * 128 + 3 * 4 + 5 * (1 if shared else 3)  # the last chunk is full
