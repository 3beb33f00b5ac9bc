"""Exact, stateful, block-wise selective scan for the Hugging Face Mamba-1 family mixers.

Why this exists
---------------
In transformers 5.24 the mixers of ``MambaForCausalLM``, ``FalconMambaForCausalLM`` and Jamba's Mamba layers
(``MambaMixer``, ``FalconMambaMixer``, ``JambaMambaMixer``) only use the cached *SSM* state for single-token decode.
A multi-token forward on top of a cache reads the cached conv state but starts the selective scan from zeros, so
continuing a sequence with several tokens at once is silently wrong. The pure-PyTorch path also materialises
``[batch, d_inner, T, d_state]`` tensors (three of them) and loops over ``T`` in Python, so prefill memory grows
linearly with ``T``.

What this module does
---------------------
``stateful_mixer_forward`` runs one such mixer on ``hidden_states [B, T, H]`` starting from the conv and SSM states
held in the cache (or from zeros for a fresh sequence), walking ``T`` in blocks of ``block_size`` tokens. Per block it
does the whole mixer (in-projection, causal conv with the carried left context, x/dt projections, the model's own
RMS norms where it has them, selective scan from the carried state, gate, out-projection), so the largest temporaries
are ``[B, d_inner, block, d_state]`` (on CPU the scan further walks each block in cache-sized pieces of
``DEFAULT_SCAN_CHUNK`` tokens, so they are ``[B, d_inner, min(block, 32), d_state]``). The final conv and SSM states
are written back through the cache's own ``update_conv_state`` / ``update_recurrent_state``, exactly as the model's
prefill would leave them, so the model's own single-token decode continues from them unchanged.

``stateful_mamba_scan(model, block_size)`` is a context manager that routes every multi-token mixer forward (fresh or
continuing) of a model through that function and restores the original forwards on exit. Single-token forwards
that continue from a cached state keep the model's own decode path (which is exact and uses the CUDA kernels when
transformers picks them).

The scan of each block (a two-level PyTorch scan, or ``mamba_ssm``'s CUDA kernel plus an analytic start-state term)
is in :mod:`oprm.adapters.selective_scan`; this module runs whole mixers block by block and patches models.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from .selective_scan import DEFAULT_SCAN_CHUNK, selective_scan_block

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_SCAN_CHUNK",
    "is_supported_mixer",
    "iter_supported_mixers",
    "supports_stateful_scan",
    "mixer_scan_from_state",
    "stateful_mixer_forward",
    "stateful_mamba_scan",
    "selective_scan_block",
]

DEFAULT_BLOCK_SIZE = 256

_MIXER_CLASSES = (
    ("transformers.models.mamba.modeling_mamba", "MambaMixer"),
    ("transformers.models.falcon_mamba.modeling_falcon_mamba", "FalconMambaMixer"),
    ("transformers.models.jamba.modeling_jamba", "JambaMambaMixer"),
)
_REQUIRED_ATTRS = (
    "in_proj",
    "conv1d",
    "x_proj",
    "dt_proj",
    "out_proj",
    "A_log",
    "D",
    "act",
    "layer_idx",
    "intermediate_size",
    "ssm_state_size",
    "conv_kernel_size",
    "time_step_rank",
)
_PATCH_MARK = "_oprm_stateful_scan"


@functools.lru_cache(maxsize=1)
def _mixer_classes() -> tuple[type, ...]:
    found = []
    for module_name, class_name in _MIXER_CLASSES:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except Exception:  # pragma: no cover - model family missing from this transformers build
            continue
        found.append(cls)
    return tuple(found)


def is_supported_mixer(module: torch.nn.Module) -> bool:
    """True for an HF Mamba-1 family mixer (Mamba, FalconMamba, Jamba) this module knows how to run."""
    classes = _mixer_classes()
    if not classes or not isinstance(module, classes):
        return False
    return all(hasattr(module, a) for a in _REQUIRED_ATTRS)


def iter_supported_mixers(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    for module in model.modules():
        if is_supported_mixer(module):
            yield module


def supports_stateful_scan(model: torch.nn.Module) -> bool:
    """True when ``model`` holds at least one Mamba-1 family mixer that ``stateful_mamba_scan`` patches."""
    return next(iter_supported_mixers(model), None) is not None


# ----------------------------------------------------------------------------------------------------------------
# one mixer, block by block
# ----------------------------------------------------------------------------------------------------------------
def _time_step_and_bc(mixer, x: torch.Tensor):
    """x [B, L, d] (post conv) -> (dt [B, d, L] without bias, B [B, L, N], C [B, L, N]) as the mixer computes them."""
    ts, Bm, Cm = torch.split(
        mixer.x_proj(x), [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=-1
    )
    # FalconMamba (weightless) and Jamba (weighted) normalise dt, B and C; plain Mamba does not
    if getattr(mixer, "dt_layernorm", None) is not None:
        ts = mixer.dt_layernorm(ts)
    if getattr(mixer, "b_layernorm", None) is not None:
        Bm = mixer.b_layernorm(Bm)
    if getattr(mixer, "c_layernorm", None) is not None:
        Cm = mixer.c_layernorm(Cm)
    if hasattr(getattr(mixer, "config", None), "_is_quantized"):
        dt = (mixer.dt_proj(ts) - mixer.dt_proj.bias).transpose(1, 2)
    else:
        dt = mixer.dt_proj.weight @ ts.transpose(1, 2)
    return dt, Bm, Cm


def _mask_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x
    return (x * mask[:, :, None]).to(x.dtype)


@contextlib.contextmanager
def _accelerate_child_hooks(mixer, names=("conv1d", "dt_proj")):
    """Fire the accelerate hooks of children whose weights are read directly (offloaded models)."""
    fired = []
    for name in names:
        child = getattr(mixer, name, None)
        hook = getattr(child, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(child)
            fired.append((child, hook))
    try:
        yield
    finally:
        for child, hook in reversed(fired):
            hook.post_forward(child, ())


def mixer_scan_from_state(
    mixer: torch.nn.Module,
    hidden_states: torch.Tensor,
    conv_state: torch.Tensor | None = None,
    ssm_state: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    use_kernels: bool | None = None,
    _kernel: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``mixer`` on ``hidden_states [B, T, H]`` continuing from the given states; touches no cache.

    ``conv_state [B, d_inner, K]`` holds the last ``K = conv_kernel`` pre-conv inputs, in the cache's layout (None:
    a fresh sequence, i.e. zeros). ``ssm_state [B, d_inner, d_state]`` (None: zeros). ``attention_mask [B, T]``
    (or longer: its last ``T`` columns are used) zeroes padding positions as the model does.

    Returns ``(out [B, T, H], tail, ssm_state)`` where ``tail`` holds the last ``min(T, K)`` pre-conv inputs of
    this call (feed it to ``cache.update_conv_state`` to get the cache's conv state) and ``ssm_state`` is the final
    float32 state.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    bsz, T, _ = hidden_states.shape
    if T == 0:
        raise ValueError("empty sequence")
    dtype = hidden_states.dtype
    d, k = mixer.intermediate_size, mixer.conv_kernel_size
    if attention_mask is not None:
        if attention_mask.ndim != 2 or attention_mask.shape[1] < T:
            raise ValueError(f"attention_mask must be 2D with at least {T} columns, got {tuple(attention_mask.shape)}")
        attention_mask = attention_mask[:, -T:]
    for name, st in (("conv_state", conv_state), ("ssm_state", ssm_state)):
        if st is not None and st.shape[0] != bsz:
            raise ValueError(f"{name} has batch {st.shape[0]} but hidden_states has batch {bsz}")

    A = -torch.exp(mixer.A_log.float())
    D = mixer.D.float()
    dt_bias = mixer.dt_proj.bias.float() if mixer.dt_proj.bias is not None else None
    weight = mixer.conv1d.weight  # [d, 1, K]
    conv_bias = mixer.conv1d.bias

    ctx = None  # last K-1 pre-conv inputs seen so far (the causal conv's left context)
    if k > 1:
        if conv_state is not None:
            ctx = conv_state[..., conv_state.shape[-1] - (k - 1) :]
        else:
            ctx = torch.zeros(bsz, d, k - 1, dtype=dtype, device=hidden_states.device)
    tail = None
    h = ssm_state
    out = None
    with _accelerate_child_hooks(mixer):
        for s in range(0, T, block_size):
            e = min(T, s + block_size)
            mask = attention_mask[:, s:e] if attention_mask is not None else None
            proj = mixer.in_proj(_mask_padding(hidden_states[:, s:e], mask)).transpose(1, 2)
            xbc, z = proj.chunk(2, dim=1)  # [B, d, L] each
            if ctx is not None:
                xin = torch.cat([ctx.to(xbc.dtype), xbc], dim=-1)
                ctx = xin[..., -(k - 1) :].clone()
            else:
                xin = xbc
            tail = xbc[..., -k:] if tail is None else torch.cat([tail, xbc], dim=-1)[..., -k:]
            u = F.conv1d(xin.to(weight.dtype), weight, conv_bias, groups=d)
            u = mixer.act(u).to(xbc.dtype)
            del xin
            u = _mask_padding(u.transpose(1, 2), mask)  # [B, L, d]
            dt, Bm, Cm = _time_step_and_bc(mixer, u)
            y, h = selective_scan_block(
                u.transpose(1, 2), dt, A, Bm, Cm, D, z, dt_bias, h, use_kernels=use_kernels, _kernel=_kernel
            )
            o = mixer.out_proj(y.transpose(1, 2).to(dtype))
            if out is None:
                out = o.new_empty(bsz, T, o.shape[-1])
            out[:, s:e] = o
    return out, tail.contiguous(), h


def stateful_mixer_forward(
    mixer: torch.nn.Module,
    hidden_states: torch.Tensor,
    cache=None,
    attention_mask: torch.Tensor | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    use_kernels: bool | None = None,
    _kernel: Callable | None = None,
) -> torch.Tensor:
    """Drop-in multi-token forward for ``mixer`` that honours the cached conv *and* SSM state.

    With ``cache`` (a transformers ``Cache`` with linear-attention layers) the scan starts from the layer's cached
    states when ``has_previous_state`` is set (zeros otherwise), and the new states are written back with the cache's
    own ``update_conv_state`` (which also sets ``has_previous_state``) and ``update_recurrent_state``, leaving the
    cache as the model's prefill would. Without a cache it is a fresh, stateless forward.
    """
    conv_state = ssm_state = None
    layer_idx = mixer.layer_idx
    if cache is not None:
        conv_state = cache.get_conv_state(layer_idx, state_idx=0)
        ssm_state = cache.get_recurrent_state(layer_idx, state_idx=0)
        if conv_state is not None and getattr(cache, "is_recording_past", None) and cache.is_recording_past(layer_idx):
            # recording keeps every past conv input; the left context is still its last K-1 columns
            conv_state = conv_state[..., -mixer.conv_kernel_size :]
    out, tail, new_ssm = mixer_scan_from_state(
        mixer,
        hidden_states,
        conv_state,
        ssm_state,
        attention_mask,
        block_size=block_size,
        use_kernels=use_kernels,
        _kernel=_kernel,
    )
    if cache is not None:
        cache.update_conv_state(tail, layer_idx, conv_kernel_size=mixer.conv_kernel_size)
        cache.update_recurrent_state(new_ssm, layer_idx)
    return out


# ----------------------------------------------------------------------------------------------------------------
# patching a model
# ----------------------------------------------------------------------------------------------------------------
def _make_forward(mixer, original: Callable, block_size: int, use_kernels: bool | None):
    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        if cache is None:
            cache = kwargs.pop("cache_params", None)
        else:
            kwargs.pop("cache_params", None)
        if (
            hidden_states.shape[1] == 1
            and cache is not None
            and cache.get_conv_state(self.layer_idx, state_idx=0) is not None
            and cache.get_recurrent_state(self.layer_idx, state_idx=0) is not None
            and not (getattr(cache, "is_recording_past", None) and cache.is_recording_past(self.layer_idx))
        ):
            # single-token decode from a state: the model's own recurrent step is exact (and kernel-backed on CUDA)
            return original(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        return stateful_mixer_forward(
            self,
            hidden_states,
            cache=cache,
            attention_mask=attention_mask,
            block_size=block_size,
            use_kernels=use_kernels,
        )

    return types.MethodType(forward, mixer)


@contextlib.contextmanager
def stateful_mamba_scan(model: torch.nn.Module, block_size: int = DEFAULT_BLOCK_SIZE, *, use_kernels: bool | None = None):
    """Patch every Mamba-1 family mixer of ``model`` so multi-token forwards continue exactly from the cache.

    Inside the ``with`` block, every mixer forward with more than one token (fresh prefill or continuation from a
    cache that has a previous state) runs ``stateful_mixer_forward`` in blocks of ``block_size`` tokens; single-token
    decode from a state keeps the model's own path. ``use_kernels``: None = use ``mamba_ssm``'s CUDA scan when
    importable and the tensors are on CUDA; False = always the PyTorch scan. The original forwards are restored on
    exit (also on error). Yields the list of patched mixers. A model without such mixers is left untouched.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    patched = []  # (module, attribute name, previous instance attribute or _MISSING)
    try:
        for mixer in iter_supported_mixers(model):
            # accelerate's hooks replace `forward` on the instance and call `_old_forward`: patch underneath them
            attr = "_old_forward" if hasattr(mixer, "_hf_hook") and hasattr(mixer, "_old_forward") else "forward"
            previous = mixer.__dict__.get(attr, _MISSING)
            original = getattr(mixer, attr)
            setattr(mixer, attr, _make_forward(mixer, original, block_size, use_kernels))
            patched.append((mixer, attr, previous))
            setattr(mixer, _PATCH_MARK, getattr(mixer, _PATCH_MARK, 0) + 1)
        yield [m for m, _, _ in patched]
    finally:
        for mixer, attr, previous in reversed(patched):
            if previous is _MISSING:
                mixer.__dict__.pop(attr, None)
            else:
                setattr(mixer, attr, previous)
            depth = getattr(mixer, _PATCH_MARK, 1) - 1
            if depth > 0:
                setattr(mixer, _PATCH_MARK, depth)
            else:
                mixer.__dict__.pop(_PATCH_MARK, None)


def is_patched(module: torch.nn.Module) -> bool:
    """True while ``module`` (a mixer) or any mixer inside it is patched by ``stateful_mamba_scan``."""
    return any(getattr(m, _PATCH_MARK, 0) > 0 for m in module.modules())


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()
