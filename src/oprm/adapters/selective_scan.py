"""The selective scan of one block of a Mamba-1 mixer, starting from a given state (the math of mamba_scan.py).

``selective_scan_block`` evaluates ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = (C_t . h_t + D u_t) * silu(z_t)``
from ``h0``. On CPU (or without ``mamba_ssm``) it is a two-level PyTorch scan: sequential inside sub-chunks of about
``sqrt(L)`` positions for all sub-chunks at once, then a sequential carry across sub-chunks. It multiplies decays and
adds, never divides or exponentiates a positive number, so it is as stable as the sequential reference and differs
from it only in rounding (about 1e-7 relative in float32), while needing only ``~2*sqrt(L)`` Python-level steps.

On CUDA, when ``mamba_ssm`` is importable, the block runs ``mamba_ssm``'s ``selective_scan_fn``. That kernel always
starts from a zero state, so the contribution of ``h0`` is added analytically:
``y_t += silu(z_t) * sum_n C_t[n] * exp(A[:, n] * cumsum(dt)_t) * h0[:, n]`` and
``h_L += exp(A * cumsum(dt)_L) * h0`` (exact in real arithmetic; the exponent is never positive). Its
``[B, d, L, N]`` float32 temporaries are the price of the correction (about 2 GB for 16 rows of 256 tokens at
Falcon-Mamba-7B widths).

``OPRM_MAMBA_KERNELS=0`` in the environment disables the kernel (the PyTorch scan everywhere): ``oprm bench`` uses it to
measure both paths on one GPU machine.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_SCAN_CHUNK", "selective_scan_block", "kernel_available"]

#: tokens per in-cache piece of the CPU scan (its [B, d, piece, N] temporaries stay small); tuned on 1 thread
DEFAULT_SCAN_CHUNK = 32


@functools.lru_cache(maxsize=1)
def _cuda_selective_scan() -> Callable | None:
    """``mamba_ssm``'s fused selective scan, or None when it cannot be imported (or ``OPRM_MAMBA_KERNELS=0``)."""
    if os.environ.get("OPRM_MAMBA_KERNELS", "1") == "0":
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        return None
    return selective_scan_fn


def kernel_available() -> bool:
    """True when CUDA blocks will use ``mamba_ssm``'s kernel (importable and not disabled)."""
    return _cuda_selective_scan() is not None


def _linear_recurrence_(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """In place: ``b[..., t, :] <- h_t`` with ``h_t = a_t * h_{t-1} + b_t`` along dim 2, ``h_{-1} = h0``.

    ``a`` and ``b`` are contiguous ``[B, d, L, N]`` float tensors; ``a`` is overwritten with partial products.
    Two-level: sub-chunks of ``c ~ sqrt(L)`` positions are scanned side by side (``c`` steps), then each sub-chunk
    receives the final state of the previous one (``L // c`` steps); positions past the last full sub-chunk are
    walked one by one.
    """
    L = a.shape[2]
    if h0 is not None:
        b[:, :, 0].addcmul_(a[:, :, 0], h0)
    c = max(1, math.isqrt(L))
    m = L // c
    if c < 2 or m < 2:
        for t in range(1, L):
            b[:, :, t].addcmul_(a[:, :, t], b[:, :, t - 1])
        return b
    L0 = m * c
    bsz, d, _, n = a.shape
    av = a[:, :, :L0].view(bsz, d, m, c, n)
    bv = b[:, :, :L0].view(bsz, d, m, c, n)
    for i in range(1, c):  # local scans of all sub-chunks at once
        bv[:, :, :, i].addcmul_(av[:, :, :, i], bv[:, :, :, i - 1])
        av[:, :, :, i].mul_(av[:, :, :, i - 1])
    for j in range(1, m):  # carry the true state across sub-chunks
        bv[:, :, j].addcmul_(av[:, :, j], bv[:, :, j - 1, c - 1 :])
    for t in range(L0, L):
        b[:, :, t].addcmul_(a[:, :, t], b[:, :, t - 1])
    return b


def _linear_recurrence_autograd(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """Out-of-place sequential version of ``_linear_recurrence_`` (used when gradients are needed)."""
    h = h0 if h0 is not None else torch.zeros_like(b[:, :, 0])
    states = []
    for t in range(a.shape[2]):
        h = a[:, :, t] * h + b[:, :, t]
        states.append(h)
    return torch.stack(states, dim=2)


def selective_scan_block(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    h0: torch.Tensor | None,
    *,
    use_kernels: bool | None = None,
    scan_chunk: int | None = None,
    _kernel: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan of one block starting from state ``h0``.

    Shapes follow the HF slow path: ``u, dt, z [B, d, L]`` (``dt`` before bias and softplus), ``A [d, N]``
    (already ``-exp(A_log)``), ``B, C [B, L, N]``, ``D [d]``, ``dt_bias [d]``, ``h0 [B, d, N]`` or None (zeros).
    Returns ``(y [B, d, L] in u's dtype, h_last [B, d, N] float32)`` with
    ``y = (C . h_t + D * u) * silu(z)``. The PyTorch path walks ``L`` in pieces of ``scan_chunk`` tokens (default
    ``DEFAULT_SCAN_CHUNK``; the scan is memory-bound, small pieces stay in cache), so its peak extra memory is about
    three ``[B, d, min(L, scan_chunk), N]`` float32 tensors. With gradients enabled it falls back to an out-of-place
    token-by-token loop (correct but slow; run inference under ``torch.no_grad()``).
    """
    kernel = _kernel
    if kernel is None and use_kernels is not False and u.is_cuda:
        kernel = _cuda_selective_scan()
    if kernel is not None:
        return _kernel_block(kernel, u, dt, A, B, C, D, z, dt_bias, h0)

    L = u.shape[-1]
    if scan_chunk is None:
        scan_chunk = DEFAULT_SCAN_CHUNK
    if L > scan_chunk:
        # the scan is memory-bound: walk the block in cache-sized pieces, carrying the state
        y = None
        h = h0
        for s in range(0, L, scan_chunk):
            e = min(L, s + scan_chunk)
            ys, h = selective_scan_block(
                u[..., s:e], dt[..., s:e], A, B[:, s:e], C[:, s:e], D,
                z[..., s:e] if z is not None else None, dt_bias, h, use_kernels=False, scan_chunk=scan_chunk,
            )
            if y is None:
                y = ys.new_empty(*ys.shape[:-1], L)
            y[..., s:e] = ys
        return y, h

    in_dtype = u.dtype
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)[..., None]
    dt = F.softplus(dt).float()
    uf = u.float()
    dA = torch.exp(dt[..., None] * A.float()[None, :, None, :])  # [B, d, L, N]
    dBu = dt[..., None] * B.float()[:, None, :, :]
    dBu.mul_(uf[..., None])
    h0f = h0.float() if h0 is not None else None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (dA, dBu) + ((h0f,) if h0f is not None else ())):
        hs = _linear_recurrence_autograd(dA, dBu, h0f)
        h_last = hs[:, :, -1]
        y = (hs * C.float()[:, None, :, :]).sum(-1)
    else:
        hs = _linear_recurrence_(dA, dBu, h0f)
        h_last = hs[:, :, -1].clone()
        y = torch.mul(hs, C.float()[:, None, :, :], out=dA).sum(-1)  # dA is no longer needed
    y = y.to(in_dtype)
    if D is not None:
        y = y + u * D[None, :, None]
    if z is not None:
        y = y * F.silu(z)
    return y.to(in_dtype), h_last


def _kernel_block(kernel, u, dt, A, B, C, D, z, dt_bias, h0):
    """Zero-start fused kernel plus the analytic contribution of ``h0`` (see the module docstring)."""
    in_dtype = u.dtype
    Bk = B.transpose(1, 2).contiguous()
    Ck = C.transpose(1, 2).contiguous()
    D = D.float() if D is not None else None
    dt_bias_f = dt_bias.float() if dt_bias is not None else None
    if h0 is None:
        y, h_last = kernel(
            u.contiguous(), dt.contiguous(), A.float().contiguous(), Bk, Ck, D,
            z=z.contiguous() if z is not None else None, delta_bias=dt_bias_f, delta_softplus=True,
            return_last_state=True,
        )
        return y.to(in_dtype), h_last.float()
    y, h_last = kernel(
        u.contiguous(), dt.contiguous(), A.float().contiguous(), Bk, Ck, D,
        z=None, delta_bias=dt_bias_f, delta_softplus=True, return_last_state=True,
    )
    dtf = dt.float()
    if dt_bias_f is not None:
        dtf = dtf + dt_bias_f[..., None]
    cum = torch.cumsum(F.softplus(dtf), dim=-1)  # [B, d, L]
    decay = torch.exp(cum[..., None] * A.float()[None, :, None, :])  # [B, d, L, N], exponent <= 0
    h0f = h0.float()
    h_last = h_last.float() + decay[:, :, -1] * h0f
    decay.mul_(h0f[:, :, None, :]).mul_(C.float()[:, None, :, :])
    y = y.float() + decay.sum(-1)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(in_dtype), h_last
