"""OPRM's answer for the chosen chunk equals model.generate on [P, C_j, S] alone, for every architecture.

Runs on ``OPRM_TEST_DEVICE`` (default cpu; e.g. ``OPRM_TEST_DEVICE=cuda``) in fp32. Choices between chunks are compared
only where they are determined: two runs may pick different chunks when their entropies are within ``TOL`` (a tie
that rounding breaks), and then each must pick one of the tied chunks.
"""

import random

import pytest
import torch
from tiny_models import CONFIGS, DEVICE, VOCAB, reference_generate, tiny_model

from oprm import OPRM
from oprm.adapters.cache import CacheAdapter

ARCHS = sorted(CONFIGS)
NEW = 5
TOL = 1e-5
BF16_TOL = 0.1  # logits have std ~2 (tiny_models.LOGIT_STD); bf16 keeps 8 bits of mantissa


def make_prompt(seed=0, n_context=40):
    rng = random.Random(seed)
    tokens = lambda n: [rng.randrange(3, VOCAB) for _ in range(n)]  # noqa: E731
    return tokens(5), tokens(n_context), tokens(6)


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return tiny_model(request.param)


def assert_same_as_generate(model, result, prompt_ids):
    ref_tokens, ref_logits = reference_generate(model, prompt_ids, NEW)
    assert result.token_ids == ref_tokens
    assert len(result.logits) == len(ref_logits)
    worst = max(float((a.cpu() - b).abs().max()) for a, b in zip(result.logits, ref_logits))
    assert worst < TOL, f"max |Δlogit| {worst:.2e}"


def near_best(result, tol=TOL) -> set[int]:
    """The chunks whose selection score is within ``tol`` of the best (the lowest entropy, or the best look-ahead
    score among the chunks of the best support): more than one means rounding may decide."""
    if result.selection in ("support", "lookahead"):
        passed = [c for c in result.chunks if c.score is not None]
        top = max((c.support or 0.0) for c in passed)
        passed = [c for c in passed if (c.support or 0.0) == top]
        best = max(c.score for c in passed)
        return {c.index for c in passed if best - c.score <= tol}
    best = min(c.entropy for c in result.chunks)
    return {c.index for c in result.chunks if c.entropy - best <= tol}


def assert_same_choice(a, b):
    """Both runs chose the same chunk and answer where the choice is determined; a near-tie allows either chunk."""
    tied = near_best(a) | near_best(b)
    if len(tied) == 1:
        assert a.chosen == b.chosen and a.token_ids == b.token_ids
    else:
        assert set(a.chosen) <= tied and set(b.chosen) <= tied, (a.chosen, b.chosen, tied)


def test_every_chunk_row_equals_generate(model):
    P, C, S = make_prompt()
    engine = OPRM(model, chunk_size=12, idk=None)
    for j in range(4):  # chunks [0,12) [12,24) [24,36) and the final 12 tokens [28,40)
        result = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, selection="oracle", gold_chunk=j,
                                 max_new_tokens=NEW, output_logits=True)
        assert result.chosen == [j]
        start, end = result.chunks[j].token_start, result.chunks[j].token_end
        assert_same_as_generate(model, result, P + C[start:end] + S)


def test_entropy_choice_equals_generate_and_is_min_entropy(model):
    P, C, S = make_prompt(1)
    result = OPRM(model, chunk_size=12, idk=None, selection="entropy").generate(
        prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    (j,) = result.chosen
    assert j == min(result.chunks, key=lambda c: c.entropy).index
    c = result.chunks[j]
    assert_same_as_generate(model, result, P + C[c.token_start:c.token_end] + S)


def test_lookahead_choice_equals_generate_and_its_lookahead(model):
    """The look-ahead (every chunk's greedy answer, all rows decoded together) is the chosen chunk's own greedy
    answer, and the answer decoded from the chunk prefilled again equals model.generate."""
    P, C, S = make_prompt(6)
    result = OPRM(model, chunk_size=12, idk=None, selection="lookahead", lookahead_tokens=NEW).generate(
        prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    (j,) = result.chosen
    assert j in near_best(result) and all(c.lookahead_ids is not None for c in result.chunks)
    for c in result.chunks:  # each chunk's look-ahead is its own greedy decoding
        ref_tokens, _ = reference_generate(model, P + C[c.token_start:c.token_end] + S, NEW)
        assert c.lookahead_ids == ref_tokens[:len(c.lookahead_ids)]
    c = result.chunks[j]
    assert_same_as_generate(model, result, P + C[c.token_start:c.token_end] + S)


def test_one_chunk_equals_vanilla(model):
    P, C, S = make_prompt(2, n_context=10)
    engine = OPRM(model, chunk_size=16, idk=None)
    oprm = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    vanilla = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, mode="vanilla", max_new_tokens=NEW,
                              output_logits=True)
    assert len(oprm.chunks) == 1 and oprm.chosen == [0]
    assert oprm.token_ids == vanilla.token_ids
    assert_same_as_generate(model, vanilla, P + C + S)


@pytest.mark.parametrize("max_batch_tokens", [None, 16])
def test_vanilla_in_segments_equals_generate(model, max_batch_tokens):
    """A long vanilla prompt runs in segments where the state continues exactly (at most ``max_batch_tokens``; four
    windows where layers attend to a sliding window: 24 tokens for the tiny Gemma 3) and equals generate on it whole."""
    P, C, S = make_prompt(5, n_context=60)
    engine = OPRM(model, idk=None, max_batch_tokens=max_batch_tokens)
    forwards = []
    prefill = engine.adapter.prefill
    engine.adapter.prefill = lambda ids, *a, **k: forwards.append(ids.shape[1]) or prefill(ids, *a, **k)
    vanilla = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, mode="vanilla", max_new_tokens=NEW,
                              output_logits=True)
    assert_same_as_generate(model, vanilla, P + C + S)
    n = len(P + C + S)  # 71
    segment = max_batch_tokens or (24 if engine.adapter.sliding_window and DEVICE == "cpu" else n)
    if not engine.adapter.continuation_exact:
        segment = n
    assert [t for t in forwards if t > 1] == [min(segment, n - i) for i in range(0, n, segment)]  # decode steps: 1


def test_shared_prefix_equals_full_recompute(model):
    P, C, S = make_prompt(3)
    kwargs = dict(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    engine = OPRM(model, chunk_size=12, idk=None, shared_prefix=True)
    engine.adapter.prefix_share_fraction = 0.0  # share P even where the default would recompute a short one
    shared = engine.generate(**kwargs)
    full = OPRM(model, chunk_size=12, idk=None, shared_prefix=False).generate(**kwargs)
    assert_same_choice(shared, full)
    for a, b in zip(shared.chunks, full.chunks):
        assert abs(a.entropy - b.entropy) < TOL
    if OPRM(model).adapter.continuation_exact:
        assert shared.tokens_processed < full.tokens_processed  # P was computed once


def continuation_error(adapter):
    P, C, _ = make_prompt(4, n_context=12)
    ids = lambda rows: torch.tensor(rows, device=DEVICE)  # noqa: E731
    with torch.no_grad():
        full, _ = adapter.prefill(ids([P + C]))
        _, state = adapter.prefill(ids([P]))
        state = adapter.select(state, [0, 0])
        cont, _ = adapter.prefill(ids([C, C]), state, start=len(P))
    return max(float((cont[0] - full[0]).abs().max()), float((cont[1] - full[0]).abs().max()))


def test_continuation_declaration(model):
    """Adapters that declare exact multi-token continuation are exact; the others really are inexact."""
    adapter = OPRM(model).adapter
    if adapter.continuation_exact:
        assert continuation_error(adapter) < TOL
    else:
        assert continuation_error(adapter) > TOL
    if getattr(adapter, "stateful_scan", False):  # Mamba1 family: exact only thanks to our scan
        assert continuation_error(CacheAdapter(model, stateful_scan=False)) > TOL


def test_micro_batches_choose_like_one_batch(model):
    P, C, S = make_prompt(5, n_context=60)
    kwargs = dict(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW)
    one = OPRM(model, chunk_size=12, idk=None, max_batch_tokens=10_000).generate(**kwargs)
    small = OPRM(model, chunk_size=12, idk=None, max_batch_tokens=40).generate(**kwargs)  # 1-2 rows per batch
    assert_same_choice(one, small)
    assert max(abs(a.entropy - b.entropy) for a, b in zip(one.chunks, small.chunks)) < TOL


def assert_bf16_same_as_generate(result, ref_tokens, ref_logits):
    """The margin rule of bf16 exactness: every step's logits agree with ``generate``'s within ``BF16_TOL``, and each
    token equals ``generate``'s up to the first step whose reference top-2 margin is within ``2 * BF16_TOL`` (there
    rounding may pick either token, and later tokens continue from another prefix)."""
    for step, (ours, ref) in enumerate(zip(result.logits, ref_logits)):
        ours = ours.float().cpu()
        assert torch.isfinite(ours).all() and (ours - ref).abs().max() < BF16_TOL, f"step {step}"
        top2 = ref.topk(2).values
        if top2[0] - top2[1] <= 2 * BF16_TOL:
            return
        assert result.token_ids[step] == ref_tokens[step], f"step {step}"


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "zamba2", "llama"])
@pytest.mark.parametrize("selection", ["entropy", "support"])
def test_bf16_answer_equals_bf16_generate_by_the_margin_rule(arch, selection):
    """bf16 (--dtype auto's choice for the matmul family on CPUs with native bf16): OPRM's chosen row answers what
    model.generate in bf16 answers on [P, C_j, S] alone, by the margin rule (``assert_bf16_same_as_generate``): batched
    and single-row bf16 forwards, and a state carried from P, round differently."""
    if DEVICE == "cpu" and not torch.backends.mkldnn.is_available():
        pytest.skip("no bf16 CPU kernels here")
    model = tiny_model(arch).to(torch.bfloat16)
    P, C, S = make_prompt(6)
    result = OPRM(model, chunk_size=12, idk=None, selection=selection, lookahead_tokens=NEW).generate(
        prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=NEW, output_logits=True)
    c = result.chunks[result.chosen[0]]
    assert_bf16_same_as_generate(result, *reference_generate(model, P + C[c.token_start:c.token_end] + S, NEW))


def test_default_sentence_chunks_and_support_equal_generate(model):
    """The defaults on text — boundary-safe sentence chunks and support selection (look-ahead, the winner prefilled
    again if its state was not kept) — still answer exactly what model.generate answers on [P, C_j, S] alone."""
    from tiny_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(model.config.model_type, vocab_size=len(tok)).to(DEVICE)
    text = ("The code of the amber falcon is 4821. The weather was calm and the river ran slowly. "
            "Error Error error. The silver otter keeps 7731 in a box near the old harbour. ") * 3
    result = OPRM(model, tok, chunk_size=48, lookahead_tokens=NEW, document_cache_bytes=0).generate(
        context=text, query="What is the code of the amber falcon?", max_new_tokens=NEW, output_logits=True)
    assert result.chunking == "sentences" and result.selection == "support" and len(result.chunks) > 2
    prompt = OPRM(model, tok).build_prompt(text, "What is the code of the amber falcon?")
    for c in result.chunks[1:]:  # the first starts at the start; the others end at a sentence end
        assert text[:c.char_end].rstrip()[-1] in ".!?"
    sentence = "The silver otter keeps 7731 in a box near the old harbour."
    assert all(any(c.char_start <= s and s + len(sentence) <= c.char_end for c in result.chunks)
               for s in (i for i in range(len(text)) if text.startswith(sentence, i)))
    if result.chosen:
        c = result.chunks[result.chosen[0]]
        assert_same_as_generate(model, result, prompt.prefix_ids + prompt.context_ids[c.token_start:c.token_end]
                                + prompt.suffix_ids)
