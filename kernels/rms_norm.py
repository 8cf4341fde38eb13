"""RMSNorm forward/backward in Triton, registered as `torch.ops.pytrain.rms_norm_fwd/_bwd`.

Forward: a program normalises ROWS rows at once (statistics in fp32), optionally adding the residual
first, and saves only the per-row rstd. Backward: a persistent grid; each program walks a contiguous
range of rows, writes dX and keeps its share of dW in fp32 registers, then stores one partial row;
the partials ([programs, hidden], fp32) are summed once at the end, so there are no atomics.
Semantics (casting modes, residual form) are those of `pytrain.ops.rms_norm`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op

from pytrain.kernels._common import persistent_programs, rows_2d

MAX_HIDDEN = 65536  # one row must fit in a program's registers


@triton.jit
def _rms_norm_fwd_kernel(X, R, Y, S, W, RSTD, stride_x, stride_r, n_rows, n_cols, eps,
                         HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    out_offs = r64 * n_cols + cols[None, :]
    x = tl.load(X + r64 * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:  # the sum is rounded to the input dtype, as PyTorch's `x + residual` is
        r = tl.load(R + r64 * stride_r + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(S + out_offs, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / n_cols + eps)
    normed = xf * rstd[:, None]
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0)
    if GEMMA:
        y = normed * (1.0 + w.to(tl.float32))[None, :]
    else:
        y = normed.to(X.dtype.element_ty).to(tl.float32) * w.to(X.dtype.element_ty).to(tl.float32)[None, :]
    tl.store(Y + out_offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rows < n_rows)


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DS, DX, DW_PARTIAL, stride_dy, stride_x, stride_ds, n_rows, n_cols,
                         rows_per_program, HAS_DS: tl.constexpr, GEMMA: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    cmask = cols < n_cols
    w = tl.load(W + cols, mask=cmask, other=0.0)
    if GEMMA:
        wf = 1.0 + w.to(tl.float32)
    else:
        wf = w.to(X.dtype.element_ty).to(tl.float32)
    dw = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    for start in range(first, last, ROWS):
        rows = start + tl.arange(0, ROWS)
        rmask = rows < last
        mask = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)[:, None]
        x = tl.load(X + r64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + r64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = x * rstd[:, None]
        if GEMMA:
            dw += dy * xhat
        else:  # the forward multiplied w by the normalised row rounded to the input dtype
            dw += dy * xhat.to(X.dtype.element_ty).to(tl.float32)
        dxhat = dy * wf[None, :]
        dx = rstd[:, None] * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / n_cols)[:, None])
        if HAS_DS:
            dx += tl.load(DS + r64 * stride_ds + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + r64 * n_cols + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw, axis=0), mask=cmask)


def _config(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps): several short rows per program, about 16 fp32 values per thread."""
    if n_cols > MAX_HIDDEN:
        raise ValueError(f"rms_norm kernel supports hidden sizes up to {MAX_HIDDEN}, got {n_cols}")
    block = triton.next_power_of_2(n_cols)
    rows = max(1, min(16, 4096 // block))
    return block, rows, max(1, min(16, block * rows // 512))


@custom_op("pytrain::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, eps: float,
                 gemma: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, x + residual or an empty tensor, rstd [rows] fp32)."""
    n_cols = x.shape[-1]
    x2 = rows_2d(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    s = torch.empty(x.shape if residual is not None else (0,), dtype=x.dtype, device=x.device)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    r2 = rows_2d(residual) if residual is not None else x2
    n_rows = x2.shape[0]
    block, rows, warps = _config(n_cols)
    _rms_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        x2, r2, y, s, weight, rstd, x2.stride(0), r2.stride(0), n_rows, n_cols, eps,
        HAS_RESIDUAL=residual is not None, GEMMA=gemma, ROWS=rows, BLOCK=block, num_warps=warps)
    return y, s, rstd


@rms_norm_fwd.register_fake
def _(x, weight, residual, eps, gemma):
    s = x.new_empty(x.shape if residual is not None else (0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), s, \
        x.new_empty(x.shape[:-1], dtype=torch.float32)


@custom_op("pytrain::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(dy: torch.Tensor, ds: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor,
                 rstd: torch.Tensor, gemma: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dX (which is also the residual's gradient) and dW. `x` is the normalised input (x + residual)."""
    n_cols = x.shape[-1]
    dy2, x2 = rows_2d(dy), rows_2d(x)
    ds2 = rows_2d(ds) if ds is not None else dy2
    n_rows = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block, rows, warps = _config(n_cols)
    programs = persistent_programs(x.device, triton.cdiv(n_rows, rows))
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), rows) * rows
    partial = torch.empty((programs, n_cols), dtype=torch.float32, device=x.device)
    _rms_norm_bwd_kernel[(programs,)](
        dy2, x2, weight, rstd, ds2, dx, partial, dy2.stride(0), x2.stride(0), ds2.stride(0), n_rows, n_cols,
        rows_per_program, HAS_DS=ds is not None, GEMMA=gemma, ROWS=rows, BLOCK=block, num_warps=warps)
    return dx, partial.sum(0).to(weight.dtype)


@rms_norm_bwd.register_fake
def _(dy, ds, x, weight, rstd, gemma):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, residual, _eps, gemma = inputs
    _y, s, rstd = output
    ctx.has_residual = residual is not None
    ctx.gemma = gemma
    ctx.save_for_backward(s if ctx.has_residual else x, weight, rstd)
    ctx.mark_non_differentiable(rstd)


def _backward(ctx, dy, ds, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_bwd(dy, ds if ctx.has_residual else None, x, weight, rstd, ctx.gemma)
    return dx, dw, (dx if ctx.has_residual else None), None, None


rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x, weight, eps=1e-6, *, residual=None, mode="llama"):
    """Triton RMSNorm with the contract of `pytrain.ops.rms_norm` (arguments already validated)."""
    y, s, _ = rms_norm_fwd(x, weight, residual, float(eps), mode == "gemma")
    return y if residual is None else (y, s)
