"""--dtype auto: the measured rule (bf16 for the matmul family on CPUs with native bf16 matmul, fp32 for recurrent
scans and hybrids, fp32 elsewhere), applied by load_model and recorded in results."""

import pytest
import torch
from tiny_models import tiny_model

from oprm import OPRM
from oprm import dtypes
from oprm.errors import OPRMUsageError


@pytest.fixture
def native(monkeypatch):
    def set_native(value: bool):
        monkeypatch.setattr(dtypes, "native_bf16", lambda: value)
    return set_native


@pytest.mark.parametrize("model_type, expected", [("llama", torch.bfloat16), ("mamba2", torch.float32),
                                                  ("mamba", torch.float32), ("zamba2", torch.float32),
                                                  ("rwkv_runtime", torch.float32)])
def test_auto_follows_the_family_table_on_a_bf16_cpu(native, model_type, expected):
    native(True)
    assert dtypes.resolve_dtype("auto", model_type, "cpu") == expected


def test_auto_is_fp32_without_native_bf16_and_off_the_cpu(native):
    native(False)
    assert dtypes.resolve_dtype("auto", "llama", "cpu") == torch.float32
    native(True)
    assert dtypes.resolve_dtype("auto", "llama", "cuda") == torch.float32


def test_explicit_dtypes_and_bad_names():
    assert dtypes.resolve_dtype("bfloat16") == torch.bfloat16
    assert dtypes.resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(OPRMUsageError, match="unknown dtype"):
        dtypes.resolve_dtype("int8")


def test_native_bf16_reads_the_cpu_flags():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert dtypes.native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_the_choice_is_announced_once_and_recorded(native, capsys):
    native(True)
    dtypes._ANNOUNCED.clear()
    model = tiny_model("llama")
    dtypes.announce_dtype(model, "cpu")
    dtypes.announce_dtype(model, "cpu")
    assert capsys.readouterr().err.count("dtype auto -> bfloat16") == 1
    result = OPRM(model.to(torch.bfloat16), chunk_size=8, idk=None).generate(
        prefix_ids=[3, 4], context_ids=list(range(5, 30)), suffix_ids=[6, 7], max_new_tokens=2)
    assert result.dtype == "bfloat16" and result.to_dict()["dtype"] == "bfloat16"


def test_auto_loads_in_its_dtype_as_from_pretrained_does(native, tmp_path):
    """auto is decided from the config before the weights load, which then load in that dtype the transformers way:
    the rotary frequencies stay fp32 (a loaded fp32 model cast to bf16 would round them: angles off at long
    positions), and the model equals from_pretrained(dtype=bfloat16) bit for bit."""
    import transformers as tf
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    from oprm.models import load_model

    native(True)
    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert {b.dtype for _, b in model.named_buffers()} == {torch.float32}
    reference = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
