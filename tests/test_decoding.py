"""Decoding options follow GenerationConfig and match model.generate; streaming yields the same answer."""

import random

import pytest
import torch
from tiny_models import reference_generate, tiny_model
from tiny_tokenizer import tiny_tokenizer

from oprm import OPRM


@pytest.fixture(scope="module")
def engine():
    tok = tiny_tokenizer()
    model = tiny_model("mamba2")
    model.resize_token_embeddings(len(tok))
    return OPRM(model, tok, chunk_size=24, idk=None, selection="entropy")  # the chunk choice ignores eos ids


def prompt(seed=0):
    rng = random.Random(seed)
    return [rng.randrange(3, 300) for _ in range(4)], [rng.randrange(3, 300) for _ in range(50)], [7, 8, 9]


def test_repetition_penalty_matches_generate(engine):
    P, C, S = prompt()
    result = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=8, repetition_penalty=1.5)
    c = result.chunks[result.chosen[0]]
    ids = P + C[c.token_start:c.token_end] + S
    out = engine.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, repetition_penalty=1.5,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert result.token_ids == out[0, len(ids):].tolist()
    plain = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=8)
    assert plain.token_ids == reference_generate(engine.model, ids, 8)[0]


def test_sampling_is_seeded(engine):
    P, C, S = prompt(1)
    kwargs = dict(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=12, do_sample=True, temperature=1.5,
                  top_k=50, top_p=0.95)
    a = engine.generate(seed=3, **kwargs).token_ids
    assert a == engine.generate(seed=3, **kwargs).token_ids
    assert any(engine.generate(seed=s, **kwargs).token_ids != a for s in range(4, 9))


def test_eos_and_stop_strings(engine):
    P, C, S = prompt(2)
    free = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=10)
    eos = free.token_ids[3]
    stopped = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=10, eos_token_id=eos)
    assert stopped.token_ids == free.token_ids[:free.token_ids.index(eos) + 1]
    stop_text = engine.tokenizer.decode(free.token_ids[:5])[-2:]
    by_string = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=10, stop_strings=stop_text)
    assert len(by_string.token_ids) <= 5 and stop_text in engine.tokenizer.decode(by_string.token_ids)


def test_stream_yields_the_answer(engine):
    context = "The code of the amber falcon is 4821. The river ran slowly past the mill. " * 4
    kwargs = dict(context=context, query="What is the code of the amber falcon?", max_new_tokens=8)
    whole = engine.generate(**kwargs)
    pieces = list(engine.stream(**kwargs))
    assert "".join(pieces).strip() == whole.text


def test_unknown_option_is_rejected(engine):
    P, C, S = prompt()
    with pytest.raises(TypeError, match="num_beams"):
        engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, num_beams=2)


def test_truncate_keeps_both_ends_of_the_prompt(engine):
    P, C, S = prompt(3)
    full = P + C + S
    result = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, mode="truncate", max_input_tokens=20,
                             max_new_tokens=4)
    assert result.token_ids == reference_generate(engine.model, full[:10] + full[-10:], 4)[0]


def test_context_tail_is_one_chunk_of_the_last_tokens(engine):
    P, C, S = prompt(4)
    result = engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, context_tail_tokens=24, max_new_tokens=4)
    assert len(result.chunks) == 1 and result.chosen == [0]
    assert result.token_ids == reference_generate(engine.model, P + C[-24:] + S, 4)[0]


def test_should_stop_abandons_the_prefill_between_micro_batches(engine):
    from oprm.errors import GenerationCancelled

    P, C, S = prompt(2)
    asked = []

    def stop():
        asked.append(1)
        return len(asked) > 2  # the prefix and one micro-batch run, then the client is gone

    with pytest.raises(GenerationCancelled):
        engine.generate(prefix_ids=P, context_ids=C, suffix_ids=S, max_new_tokens=2, max_batch_tokens=40,
                        should_stop=stop, document_cache_bytes=0)
    assert len(asked) == 3
