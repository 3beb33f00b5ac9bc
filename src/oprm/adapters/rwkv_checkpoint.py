"""Tiny random-weight RWKV v4 / v5.2 / v6 / v7 checkpoints in the released ``.pth`` key layout (tests, ``oprm bench``).

The official runtime tells versions apart by key names and shapes (see ``rwkv_runtime.checkpoint_version``), so the
keys, shapes and storage dtype (bf16) follow the released World checkpoints. Weights are random but not degenerate:
mixing coefficients in (0, 1), decays in the trained range, and a head scaled so the next-token distributions are
peaked (near-uniform logits over 65536 tokens would make greedy choices and entropy rankings float-noise ties).
"""

from __future__ import annotations

import math

import torch

VERSIONS = ("4", "5.2", "6", "7")
WORLD_VOCAB = 65536


def tiny_state_dict(version: str, n_embd: int = 128, n_layer: int = 2, vocab_size: int = WORLD_VOCAB,
                    head_size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    if version not in VERSIONS:
        raise ValueError(f"unknown RWKV version {version!r}; choose one of {VERSIONS}")
    g = torch.Generator().manual_seed(seed)
    C, H, N, F = n_embd, n_embd // head_size, head_size, 4 * n_embd

    def rand(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    def uniform(*shape, low=0.0, high=1.0):
        return torch.rand(*shape, generator=g) * (high - low) + low

    def linear(out_features, in_features):
        return rand(out_features, in_features, scale=1 / math.sqrt(in_features))

    def mix():  # token-shift interpolation, stored [1, 1, C]
        return uniform(1, 1, C)

    sd = {"emb.weight": rand(vocab_size, C, scale=0.5),
          "blocks.0.ln0.weight": uniform(C, low=0.8, high=1.2), "blocks.0.ln0.bias": rand(C, scale=0.1)}
    for i in range(n_layer):
        b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for ln in ("ln1", "ln2"):
            sd[f"{b}{ln}.weight"], sd[f"{b}{ln}.bias"] = uniform(C, low=0.8, high=1.2), rand(C, scale=0.1)
        for name in ("receptance", "key", "value", "output"):
            sd[f"{att}{name}.weight"] = linear(C, C)
        if version != "4":  # v5+ normalise each head's output
            sd[f"{att}ln_x.weight"], sd[f"{att}ln_x.bias"] = uniform(C, low=0.8, high=1.2), rand(C, scale=0.1)
        sd[f"{ffn}key.weight"], sd[f"{ffn}value.weight"] = linear(F, C), linear(C, F)
        if version == "7":
            for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
                sd[att + x] = mix()
            # low-rank decay (w), in-context learning rate (a), value residual (v; none in layer 0), gate (g)
            for x, shift in (("w", -1.0), ("a", 0.0), ("v", 0.0)):
                if x != "v" or i > 0:
                    sd[att + x + "0"] = rand(1, 1, C, scale=0.5, shift=shift)
                    sd[att + x + "1"], sd[att + x + "2"] = linear(C, 16), linear(16, C)
            sd[att + "g1"], sd[att + "g2"] = linear(C, 32), linear(32, C)
            sd[att + "k_k"], sd[att + "k_a"] = uniform(1, 1, C, low=0.5, high=1.0), uniform(1, 1, C)
            sd[att + "r_k"] = rand(H, N, scale=0.5)
            sd[ffn + "x_k"] = mix()
        else:
            sd[f"{ffn}receptance.weight"] = linear(C, C)
        if version == "4":  # per-channel decay and bonus; no heads, no gate
            for x in ("k", "v", "r"):
                sd[f"{att}time_mix_{x}"] = mix()
            sd[att + "time_decay"], sd[att + "time_first"] = uniform(C, low=-3.0, high=1.0), rand(C, scale=0.5)
            sd[ffn + "time_mix_k"], sd[ffn + "time_mix_r"] = mix(), mix()
        elif version != "7":  # 5.2 and 6
            sd[f"{att}gate.weight"] = linear(C, C)
            sd[att + "time_faaaa"] = rand(H, N, scale=0.5)  # the "bonus" u of the current token
            if version == "6":
                for x in ("x", "w", "k", "v", "r", "g"):
                    sd[f"{att}time_maa_{x}"] = mix()
                sd[att + "time_maa_w1"], sd[att + "time_maa_w2"] = rand(C, 5 * 32, scale=0.1), rand(5, 32, C, scale=0.1)
                sd[att + "time_decay"] = uniform(1, 1, C, low=-6.0, high=0.0)
                sd[att + "time_decay_w1"], sd[att + "time_decay_w2"] = rand(C, 64, scale=0.1), rand(64, C, scale=0.1)
                sd[ffn + "time_maa_k"], sd[ffn + "time_maa_r"] = mix(), mix()
            else:  # 5.2: a 2-D [H, N] decay is what marks 5.2 (the runtime sees it from layer 1 on)
                for x in ("k", "v", "r", "g"):
                    sd[f"{att}time_mix_{x}"] = mix()
                sd[att + "time_decay"] = uniform(H, N, low=-6.0, high=0.0)
                sd[ffn + "time_mix_k"], sd[ffn + "time_mix_r"] = mix(), mix()
    sd["ln_out.weight"], sd["ln_out.bias"] = uniform(C, low=0.8, high=1.2), rand(C, scale=0.1)
    sd["head.weight"] = rand(vocab_size, C, scale=4 / math.sqrt(C))  # logits ~ N(0, 4^2): peaked distributions
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}  # released checkpoints store bf16


def write_tiny_checkpoint(path, version: str, **kwargs) -> str:
    """Write a tiny checkpoint of ``version`` (one of ``VERSIONS``) to ``path`` (a ``.pth`` file); returns the path."""
    torch.save(tiny_state_dict(version, **kwargs), str(path))
    return str(path)
