"""Exactness of the stateful block-wise selective scan (src/oprm/adapters/mamba_scan.py) on tiny random models."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

try:
    import oprm.adapters.mamba_scan  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))

from oprm.adapters.mamba_scan import (
    is_patched,
    iter_supported_mixers,
    mixer_scan_from_state,
    selective_scan_block,
    stateful_mamba_scan,
    stateful_mixer_forward,
    supports_stateful_scan,
)

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)
TOL = 1e-5
KINDS = ["mamba", "falcon_mamba", "jamba"]


def _build(kind: str):
    torch.manual_seed(0)
    common = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, tie_word_embeddings=False)
    if kind == "mamba":
        cfg = transformers.MambaConfig(state_size=8, intermediate_size=64, conv_kernel=4, time_step_rank=4,
                                       use_bias=True, **common)
        model = transformers.MambaForCausalLM(cfg)
    elif kind == "falcon_mamba":
        cfg = transformers.FalconMambaConfig(state_size=8, intermediate_size=64, conv_kernel=4, time_step_rank=4,
                                             use_bias=True, **common)
        model = transformers.FalconMambaForCausalLM(cfg)
    else:  # layer 0: Mamba + MLP, layer 1: attention + 2-expert MoE
        cfg = transformers.JambaConfig(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                       attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                       expert_layer_offset=1, num_experts=2, num_experts_per_tok=1, mamba_d_state=8,
                                       mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4, mamba_proj_bias=True,
                                       **common)
        model = transformers.JambaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    # weights large enough that a dropped state shows clearly in the logits (Jamba amplifies float noise more)
    std = 0.1 if kind == "jamba" else 0.2
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "A_log" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif p.ndim == 1 and torch.all(p == 0):  # zero biases hide bugs; pretrained biases are not zero
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


_MODELS: dict[str, torch.nn.Module] = {}


def model_for(kind: str):
    if kind not in _MODELS:
        _MODELS[kind] = _build(kind)
    return _MODELS[kind]


def fwd(model, ids, cache=None, start=0, attention_mask=None):
    kw = {}
    if isinstance(model, transformers.JambaForCausalLM):  # needs explicit positions on top of a cache
        kw["position_ids"] = (torch.arange(ids.shape[1]) + start)[None].expand(ids.shape[0], -1)
    return model(input_ids=ids, cache=cache, use_cache=True, attention_mask=attention_mask, **kw)


def ids_of(batch, length, seed):
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def linear_layers(cache):
    return [(i, l) for i, l in enumerate(cache.layers) if hasattr(l, "conv_states")]


@pytest.mark.parametrize("kind", KINDS)
def test_supported(kind):
    model = model_for(kind)
    assert supports_stateful_scan(model)
    assert len(list(iter_supported_mixers(model))) == (2 if kind != "jamba" else 1)
    assert not supports_stateful_scan(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_fresh_prefill_matches_model(kind):
    model = model_for(kind)
    ids = ids_of(2, 37, seed=1)
    ref = fwd(model, ids)
    for block in (1, 5, 16, 37, 64):  # smaller (incl. non-dividing), equal to and larger than T
        with stateful_mamba_scan(model, block_size=block):
            out = fwd(model, ids)
        assert (out.logits - ref.logits).abs().max().item() <= TOL, block
        # the cache is left exactly as the model's own prefill leaves it
        for (i, lr), (_, lo) in zip(linear_layers(ref.cache), linear_layers(out.cache)):
            assert lo.has_previous_state[0] and lo.is_conv_states_initialized[0] and lo.is_recurrent_states_initialized[0]
            assert lo.conv_states[0].shape == lr.conv_states[0].shape
            assert (lo.conv_states[0] - lr.conv_states[0]).abs().max().item() <= TOL
            assert (lo.recurrent_states[0] - lr.recurrent_states[0]).abs().max().item() <= TOL


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_short_prompt_shorter_than_conv_kernel(kind):
    model = model_for(kind)
    ids = ids_of(1, 2, seed=2)  # 2 tokens < conv kernel 4: the conv state is zero-padded
    ref = fwd(model, ids)
    with stateful_mamba_scan(model, block_size=1):
        out = fwd(model, ids)
    assert (out.logits - ref.logits).abs().max().item() <= TOL
    for (_, lr), (_, lo) in zip(linear_layers(ref.cache), linear_layers(out.cache)):
        assert (lo.conv_states[0] - lr.conv_states[0]).abs().max().item() <= TOL


def _greedy_vs_recompute(model, seq, cache, last_logits, steps):
    """Greedy-decode ``steps`` tokens from ``cache``; every step's logits must match a full recompute."""
    worst = 0.0
    for _ in range(steps):
        tok = last_logits.argmax(-1, keepdim=True)
        seq = torch.cat([seq, tok], dim=1)
        out = fwd(model, tok, cache=cache, start=seq.shape[1] - 1)
        cache, last_logits = out.cache, out.logits[:, -1]
        ref = fwd(model, seq).logits[:, -1]
        worst = max(worst, (last_logits - ref).abs().max().item())
    return worst


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_continuation_from_cache_matches_full_recompute(kind):
    model = model_for(kind)
    P = 20
    prefix = ids_of(1, P, seed=3)
    body = ids_of(1, 11, seed=4)
    more = ids_of(1, 6, seed=5)
    full = torch.cat([prefix, body, more], dim=1)
    ref = fwd(model, full).logits
    cache = fwd(model, prefix).cache
    with stateful_mamba_scan(model, block_size=4):
        out = fwd(model, body, cache=cache, start=P)
        assert (out.logits - ref[:, P : P + 11]).abs().max().item() <= TOL
        out = fwd(model, more, cache=out.cache, start=P + 11)  # a second multi-token continuation
        assert (out.logits - ref[:, P + 11 :]).abs().max().item() <= TOL
    # the model's own decode continues exactly from the states the patch wrote
    assert _greedy_vs_recompute(model, full, out.cache, out.logits[:, -1], steps=4) <= TOL


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_prefix_broadcast_to_three_rows(kind):
    model = model_for(kind)
    P, Tb = 17, 9
    prefix = ids_of(1, P, seed=6)
    bodies = ids_of(3, Tb, seed=7)
    full = torch.cat([prefix.expand(3, -1), bodies], dim=1)
    ref = fwd(model, full).logits
    cache = fwd(model, prefix).cache
    c = copy.deepcopy(cache)
    c.reorder_cache(torch.zeros(3, dtype=torch.long))
    with stateful_mamba_scan(model, block_size=4):
        out = fwd(model, bodies, cache=c, start=P)
        assert (out.logits - ref[:, P:]).abs().max().item() <= TOL
        # decode inside the patch (single tokens keep the model's own step)
        assert _greedy_vs_recompute(model, full, out.cache, out.logits[:, -1], steps=3) <= TOL
    # the prefix cache itself was not touched
    again = copy.deepcopy(cache)
    again.reorder_cache(torch.zeros(3, dtype=torch.long))
    with stateful_mamba_scan(model, block_size=64):
        out2 = fwd(model, bodies, cache=again, start=P)
    assert (out2.logits - ref[:, P:]).abs().max().item() <= TOL


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_unpatched_continuation_is_wrong_and_patch_is_removed(kind):
    model = model_for(kind)
    P = 20
    prefix, body = ids_of(1, P, seed=8), ids_of(1, 8, seed=9)
    ref = fwd(model, torch.cat([prefix, body], dim=1)).logits[:, P:]
    cache = fwd(model, prefix).cache

    def err(c):
        return (fwd(model, body, cache=c, start=P).logits - ref).abs().max().item()

    assert err(copy.deepcopy(cache)) > 1e-3  # the bug this module fixes is present in this transformers build
    mixers = list(iter_supported_mixers(model))
    with stateful_mamba_scan(model) as patched:
        assert patched == mixers and all("forward" in m.__dict__ for m in mixers) and is_patched(model)
        assert err(copy.deepcopy(cache)) <= TOL
    assert not is_patched(model)
    assert all("forward" not in m.__dict__ for m in mixers)
    assert err(copy.deepcopy(cache)) > 1e-3  # back to the model's own behaviour
    with pytest.raises(RuntimeError):  # restored on error too
        with stateful_mamba_scan(model):
            raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in mixers) and not is_patched(model)


@pytest.mark.parametrize("kind", ["mamba", "jamba"])
@torch.no_grad()
def test_left_padded_prefill_with_mask(kind):
    model = model_for(kind)
    ids = ids_of(2, 13, seed=10)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    ref = fwd(model, ids, attention_mask=mask).logits
    with stateful_mamba_scan(model, block_size=3):
        out = fwd(model, ids, attention_mask=mask).logits
    assert (out[0, 4:] - ref[0, 4:]).abs().max().item() <= TOL
    assert (out[1] - ref[1]).abs().max().item() <= TOL


def _random_states(mixer, batch, seed):
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(batch, mixer.intermediate_size, mixer.conv_kernel_size, generator=g)
    ssm = torch.randn(batch, mixer.intermediate_size, mixer.ssm_state_size, generator=g)
    return conv, ssm


def _stepwise(mixer, x, conv, ssm):
    """Reference: the mixer's own single-token path, token by token, from the given states."""
    from transformers import DynamicCache

    cache = DynamicCache(config=mixer.config)
    layer = cache.layers[mixer.layer_idx]
    cache.update_conv_state(conv.clone(), mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    cache.update_recurrent_state(ssm.clone(), mixer.layer_idx)
    assert layer.has_previous_state[0]
    outs = [mixer(x[:, t : t + 1], cache=cache) for t in range(x.shape[1])]
    return torch.cat(outs, dim=1), layer.conv_states[0], layer.recurrent_states[0]


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_mixer_from_explicit_states_matches_stepwise_decode(kind):
    mixer = next(iter_supported_mixers(model_for(kind)))
    x = torch.randn(2, 23, mixer.hidden_size, generator=torch.Generator().manual_seed(11))
    conv, ssm = _random_states(mixer, 2, seed=12)
    ref, ref_conv, ref_ssm = _stepwise(mixer, x, conv, ssm)
    for block in (1, 7, 23, 100):
        out, tail, h = mixer_scan_from_state(mixer, x, conv, ssm, block_size=block)
        assert (out - ref).abs().max().item() <= TOL
        assert (h - ref_ssm).abs().max().item() <= TOL
        assert (tail - ref_conv).abs().max().item() <= TOL  # T >= K: the tail is the new conv state


def _fake_zero_start_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False):
    """CPU stand-in with mamba_ssm.selective_scan_fn's signature and layout (B, C as [batch, N, L]); zero start."""
    assert delta_softplus and return_last_state
    return selective_scan_block(u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z, delta_bias, None,
                                use_kernels=False)


@pytest.mark.parametrize("kind", ["mamba", "falcon_mamba"])
@torch.no_grad()
def test_kernel_path_state_correction(kind):
    """The CUDA path (zero-start kernel + analytic initial-state term) is exact; checked with a CPU stand-in."""
    mixer = next(iter_supported_mixers(model_for(kind)))
    x = torch.randn(3, 19, mixer.hidden_size, generator=torch.Generator().manual_seed(13))
    conv, ssm = _random_states(mixer, 3, seed=14)
    ref, _, ref_ssm = _stepwise(mixer, x, conv, ssm)
    out, _, h = mixer_scan_from_state(mixer, x, conv, ssm, block_size=8, _kernel=_fake_zero_start_kernel)
    assert (out - ref).abs().max().item() <= TOL
    assert (h - ref_ssm).abs().max().item() <= TOL


def test_gradient_path_matches():
    mixer = next(iter_supported_mixers(model_for("mamba")))
    x = torch.randn(1, 10, mixer.hidden_size, generator=torch.Generator().manual_seed(15))
    conv, ssm = _random_states(mixer, 1, seed=16)
    with torch.no_grad():
        ref, _, _ = mixer_scan_from_state(mixer, x, conv, ssm, block_size=4)
    xg = x.clone().requires_grad_(True)
    out, _, _ = mixer_scan_from_state(mixer, xg, conv, ssm, block_size=4)
    assert (out.detach() - ref).abs().max().item() <= TOL
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@torch.no_grad()
def test_stateless_forward_without_cache():
    model = model_for("mamba")
    mixer = next(iter_supported_mixers(model))
    x = torch.randn(2, 9, mixer.hidden_size, generator=torch.Generator().manual_seed(17))
    ref = mixer(x)
    assert (stateful_mixer_forward(mixer, x, block_size=2) - ref).abs().max().item() <= TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("kind", ["mamba", "falcon_mamba"])
@torch.no_grad()
def test_cuda_scan_paths_match(kind):
    """On a GPU: the PyTorch scan matches the CPU one, and mamba_ssm's kernel (when installed) matches both."""
    from oprm.adapters.selective_scan import kernel_available

    mixer = next(iter_supported_mixers(model_for(kind)))
    x = torch.randn(3, 300, mixer.hidden_size, generator=torch.Generator().manual_seed(21))
    conv, ssm = _random_states(mixer, 3, seed=22)
    ref, _, ref_ssm = mixer_scan_from_state(mixer, x, conv, ssm, block_size=128)
    gpu = copy.deepcopy(mixer).cuda()
    args = (gpu, x.cuda(), conv.cuda(), ssm.cuda())
    paths = {"pytorch": mixer_scan_from_state(*args, block_size=128, use_kernels=False)}
    if kernel_available():
        paths["mamba_ssm"] = mixer_scan_from_state(*args, block_size=128)
    for name, (out, _, h) in paths.items():
        assert (out.cpu() - ref).abs().max().item() <= 1e-4, name
        assert (h.cpu() - ref_ssm).abs().max().item() <= 1e-4, name
