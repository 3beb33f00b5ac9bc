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
    for fam, wanted in runtime.FAMILY_THREADS.items():
        model_type = {"recurrent": "mamba", "hybrid": "zamba2", "matmul": "llama"}[fam]
        assert runtime.default_threads(model_type) == (2 if wanted == "all" else min(2, wanted))
    assert runtime.default_threads(tiny_model("mamba2")) == runtime.default_threads("mamba2")  # a model works too
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert runtime.default_threads("mamba") == 8  # big machines: half the cores


def test_set_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)
