"""Start-up helpers: the GGUF conversion cache's key and switch, and thread defaults per architecture family."""

import os

import pytest
from tiny_models import tiny_model

from oprm import runtime
from oprm.models import gguf_cache_dir


def test_gguf_cache_key_follows_the_file(tmp_path, monkeypatch):
    f = tmp_path / "model.Q4.gguf"
    f.write_bytes(b"x" * 10)
    monkeypatch.setenv("OPRM_CACHE_DIR", str(tmp_path / "cache"))
    first = gguf_cache_dir(f)
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("model.Q4-10-")
    assert gguf_cache_dir(f) == first
    f.write_bytes(b"y" * 11)  # a new file under the same name: a new conversion
    assert gguf_cache_dir(f) != first
    monkeypatch.setenv("OPRM_CACHE_DIR", "off")
    assert gguf_cache_dir(f) is None
    monkeypatch.delenv("OPRM_CACHE_DIR")
    assert str(gguf_cache_dir(f)).startswith(os.path.expanduser("~/.cache/oprm/gguf/"))


@pytest.mark.parametrize("model_type,family", [("mamba", "recurrent"), ("mamba2", "recurrent"), ("rwkv", "recurrent"),
                                               ("zamba2", "hybrid"), ("jamba", "hybrid"), ("llama", "matmul"),
                                               ("gemma", "matmul"), (None, "matmul")])
def test_families(model_type, family):
    assert runtime.family(model_type) == family


def test_default_threads_per_family(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.5, 0.5))  # an idle 2-core machine
    for model_type in ("mamba", "mamba2", "rwkv", "zamba2", "llama", None):  # every family: the free cores
        assert runtime.default_threads(model_type) == 2, model_type
    assert runtime.default_threads(tiny_model("llama")) == 2  # a model works too
    monkeypatch.setattr(os, "getloadavg", lambda: (1.4, 1.0, 1.0))  # another job holds a core
    assert runtime.default_threads("llama") == 1 and runtime.default_threads("mamba") == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert runtime.idle_cores() == 1  # never 0
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert runtime.default_threads("mamba") == runtime.default_threads("llama") == 8  # big machines: half


def test_set_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name, kwargs, window", [
    ("Gemma3TextConfig", dict(sliding_window=512), 512),
    ("Gemma3Config", dict(text_config=dict(sliding_window=1024)), 1024),  # the multimodal wrapper's text model
    ("MistralConfig", dict(sliding_window=4096), 4096),
    ("Qwen2Config", dict(sliding_window=4096, use_sliding_window=False), None),  # declared but switched off
    ("LlamaConfig", {}, None),
])
def test_sliding_window_from_config(name, kwargs, window):
    import transformers

    from oprm.adapters.cache import sliding_window
    assert sliding_window(getattr(transformers, name)(**kwargs)) == window


def test_long_prefill_segment_is_four_windows_on_cpu():
    from oprm.adapters import get_adapter
    gemma, llama = get_adapter(tiny_model("gemma3_text").cpu()), get_adapter(tiny_model("llama").cpu())
    assert (gemma.sliding_window, gemma.long_prefill_segment(8192), gemma.long_prefill_segment(16)) == (6, 24, 16)
    assert (llama.sliding_window, llama.long_prefill_segment(8192)) == (None, 8192)
