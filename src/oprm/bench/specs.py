"""The models ``oprm bench`` runs: random-weight configs by name, or any model oprm can load; and random inputs."""

from __future__ import annotations

__all__ = ["RANDOM", "TINY_RWKV_RUNTIME", "TINY_VOCAB", "load_model", "make_input", "random_config"]

TINY_VOCAB = 1000
# RWKV v6 / v7 on the official `rwkv` runtime: a random checkpoint in the released layout, sized like tiny-rwkv
TINY_RWKV_RUNTIME = {"tiny-rwkv6": "6", "tiny-rwkv7": "7"}

# random-weight configs: (transformers config class, vocabulary, kwargs). The tiny ones are sized like the
# scaled-down research configs (hidden 256, 4 layers); Mamba2-family SSD chunk 64 and state 16 (the shipped AR model
# uses chunk 64): the CPU reference SSD path costs ~2x per doubling of either, and these keep a 1M-token run within
# minutes on one thread. falcon-mamba-7b-2l has Falcon-Mamba-7B's widths and vocabulary with 2 of its 64 layers: the
# per-layer cost and memory of a real model (on a GPU: mamba_ssm's kernel or the PyTorch scan, see --mamba-kernels).
RANDOM = {
    "tiny-mamba": ("MambaConfig", TINY_VOCAB, dict(hidden_size=256, num_hidden_layers=4, state_size=16, expand=2,
                                                   conv_kernel=4)),
    "tiny-falcon-mamba": ("FalconMambaConfig", TINY_VOCAB, dict(hidden_size=256, num_hidden_layers=4, state_size=16,
                                                                expand=2, conv_kernel=4)),
    "tiny-mamba2": ("Mamba2Config", TINY_VOCAB, dict(hidden_size=256, num_hidden_layers=4, state_size=16, expand=2,
                                                     head_dim=64, num_heads=8, n_groups=1, conv_kernel=4,
                                                     chunk_size=64)),
    "tiny-rwkv": ("RwkvConfig", TINY_VOCAB, dict(hidden_size=256, num_hidden_layers=4, attention_hidden_size=256,
                                                 intermediate_size=1024, context_length=1 << 21)),
    "tiny-zamba2": ("Zamba2Config", TINY_VOCAB, dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                     num_key_value_heads=4, intermediate_size=512, mamba_d_state=16,
                                                     mamba_expand=2, mamba_headdim=64, mamba_ngroups=1,
                                                     n_mamba_heads=8, chunk_size=64,
                                                     layers_block_type=["mamba", "hybrid", "mamba", "hybrid"])),
    "tiny-llama": ("LlamaConfig", TINY_VOCAB, dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                   num_key_value_heads=4, intermediate_size=1024,
                                                   max_position_embeddings=1 << 21)),
    "falcon-mamba-7b-2l": ("FalconMambaConfig", 65024, dict(hidden_size=4096, num_hidden_layers=2, state_size=16,
                                                            expand=2, conv_kernel=4, time_step_rank=256)),
}


def random_config(name: str):
    """The transformers config of a random-weight spec."""
    import transformers as tf

    cls_name, vocab, kwargs = RANDOM[name]
    return getattr(tf, cls_name)(vocab_size=vocab, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2, **kwargs)


def load_model(name: str, dtype: str = "auto", device: str | None = None, trust_remote_code: bool = False):
    import torch
    import transformers as tf

    from oprm.dtypes import announce_dtype, resolve_dtype
    from oprm.models import check_device
    from oprm.models import load_model as oprm_load_model

    device = check_device(device)
    if name in TINY_RWKV_RUNTIME:
        return _tiny_rwkv_runtime(name, dtype, device)
    if name in RANDOM:
        torch_dtype = resolve_dtype(dtype, random_config(name), device)
        if dtype == "auto":
            announce_dtype(random_config(name), device)
        torch.manual_seed(0)
        with torch.device(device or "cpu"):  # weights are created (and initialised) where they run: fast on a GPU
            model = tf.AutoModelForCausalLM.from_config(random_config(name), dtype=torch_dtype)
    else:  # the way oprm loads it (one-line errors; GGUF files converted once and cached)
        model, _ = oprm_load_model(name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model.generation_config.eos_token_id = None  # always decode max_new_tokens tokens
    return model.eval()


def _tiny_rwkv_runtime(name: str, dtype: str, device: str | None):
    """``tiny-rwkv6`` / ``tiny-rwkv7``: written to a temporary folder (hidden 256, 4 layers, head size 64, vocabulary
    1000), then loaded by the `rwkv` runtime (which keeps the weights in memory)."""
    import os
    import tempfile

    from oprm.adapters.rwkv_checkpoint import write_tiny_checkpoint
    from oprm.adapters.rwkv_runtime import load_rwkv_runtime

    with tempfile.TemporaryDirectory() as folder:
        path = write_tiny_checkpoint(os.path.join(folder, f"{name}.pth"), TINY_RWKV_RUNTIME[name], n_embd=256,
                                     n_layer=4, vocab_size=TINY_VOCAB)
        model = load_rwkv_runtime(path, dtype, device)[0]
    model.generation_config.eos_token_id = None  # always decode max_new_tokens tokens
    return model


def make_input(vocab_size: int, context_tokens: int, prefix_tokens: int, suffix_tokens: int, seed: int = 0):
    """Random (P, C, S) token ids, avoiding the lowest ids (usually special tokens)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = min(4, vocab_size - 1)

    def ids(n):
        return torch.randint(low, vocab_size, (n,), generator=g).tolist()

    return ids(prefix_tokens), ids(context_tokens), ids(suffix_tokens)
