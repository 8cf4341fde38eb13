"""RMSNorm forward/backward in Triton, registered as `torch.ops.pytrain.rms_norm_fwd/_bwd`.

Rows of up to RESIDENT_MAX columns stay in registers. Forward: a program normalises ROWS rows at once
(statistics in fp32), optionally adding the residual first, and saves only the per-row rstd. Backward:
a persistent grid sized from the compiled kernel's occupancy; each program walks a contiguous range of
rows, writes dX and keeps its share of dW in fp32 registers, then stores one partial row; the partials
([programs, hidden], fp32) are summed once at the end, so there are no atomics.
Longer rows (up to MAX_HIDDEN) are streamed in COLUMN_BLOCK-wide steps so that nothing spills: the
forward makes two passes over each row; the backward computes each row's dot product first, then
programs own (row range, column block) tiles, each with its own dW partial.
Semantics (casting modes, residual form) are those of `pytrain.ops.rms_norm`. The `launch_*`
functions are the custom ops' bodies (plain functions, so benchmarks/aot_check.py can run them on meta
tensors).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op

from pytrain.kernels._common import resident_programs, rows_2d

MAX_HIDDEN = 65536
RESIDENT_MAX = 8192  # rows up to this many columns stay in registers; longer ones are streamed in column blocks
COLUMN_BLOCK = 4096  # columns per step when streaming


@triton.jit
def _summed_input(X, R, S, x_offs, r_offs, s_offs, mask, HAS_RESIDUAL: tl.constexpr, STORE_SUM: tl.constexpr):
    """The normalised input: x, or x + residual rounded to the input dtype (as PyTorch's `x + residual` is)."""
    x = tl.load(X + x_offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + r_offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        if STORE_SUM:
            tl.store(S + s_offs, x, mask=mask)
    return x


@triton.jit
def _scaled(x, rstd, w, GEMMA: tl.constexpr):
    """y = normalised x times the weight, in the casting mode's order (fp32 result)."""
    normed = x.to(tl.float32) * rstd
    if GEMMA:
        return normed * (1.0 + w.to(tl.float32))
    return normed.to(x.dtype).to(tl.float32) * w.to(x.dtype).to(tl.float32)


@triton.jit
def _rms_norm_fwd_kernel(X, R, Y, S, W, RSTD, stride_x, stride_r, n_rows, n_cols, eps,
                         HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK: tl.constexpr):
    """ROWS whole rows per program, held in registers (BLOCK >= n_cols)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    out_offs = r64 * n_cols + cols[None, :]
    x = _summed_input(X, R, S, r64 * stride_x + cols[None, :], r64 * stride_r + cols[None, :], out_offs, mask,
                      HAS_RESIDUAL, True)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / n_cols + eps)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0)
    y = _scaled(x, rstd[:, None], w[None, :], GEMMA)
    tl.store(Y + out_offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rows < n_rows)


@triton.jit
def _rms_norm_fwd_streamed_kernel(X, R, Y, S, W, RSTD, stride_x, stride_r, n_cols, eps,
                                  HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr, BLOCK: tl.constexpr):
    """One long row per program in two passes over column blocks: the sum of squares, then the output.
    The second pass recomputes x + residual rather than reading back what the first stored."""
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        xf = _summed_input(X, R, S, row * stride_x + cols, row * stride_r + cols, row * n_cols + cols, mask,
                           HAS_RESIDUAL, True).to(tl.float32)
        acc += xf * xf
    rstd = tl.rsqrt(tl.sum(acc, axis=0) / n_cols + eps)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = _summed_input(X, R, S, row * stride_x + cols, row * stride_r + cols, row * n_cols + cols, mask,
                          HAS_RESIDUAL, False)
        w = tl.load(W + cols, mask=mask, other=0.0)
        tl.store(Y + row * n_cols + cols, _scaled(x, rstd, w, GEMMA).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _weight_factor(w, dtype, GEMMA: tl.constexpr):
    if GEMMA:
        return 1.0 + w.to(tl.float32)
    return w.to(dtype).to(tl.float32)


@triton.jit
def _weight_grad_term(dy, xhat, dtype, GEMMA: tl.constexpr):
    if GEMMA:
        return dy * xhat
    return dy * xhat.to(dtype).to(tl.float32)  # the forward multiplied w by the row rounded to the input dtype


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DS, DX, DW_PARTIAL, stride_dy, stride_x, stride_ds, n_rows, n_cols,
                         rows_per_program, HAS_DS: tl.constexpr, GEMMA: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Persistent: each program walks its range of whole rows (in registers) and keeps its dW share."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    cmask = cols < n_cols
    wf = _weight_factor(tl.load(W + cols, mask=cmask, other=0.0), X.dtype.element_ty, GEMMA)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
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
        dw += tl.sum(_weight_grad_term(dy, xhat, X.dtype.element_ty, GEMMA), axis=0)
        dxhat = dy * wf[None, :]
        dx = rstd[:, None] * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / n_cols)[:, None])
        if HAS_DS:
            dx += tl.load(DS + r64 * stride_ds + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + r64 * n_cols + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=cmask)


@triton.jit
def _rms_norm_bwd_row_dot_kernel(DY, X, W, RSTD, DOT, stride_dy, stride_x, n_cols, GEMMA: tl.constexpr,
                                 BLOCK: tl.constexpr):
    """Streamed rows, step 1: dot[row] = sum(dy * w' * xhat) / n_cols, one row per program."""
    row = tl.program_id(0).to(tl.int64)
    rstd = tl.load(RSTD + row)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        wf = _weight_factor(tl.load(W + cols, mask=mask, other=0.0), X.dtype.element_ty, GEMMA)
        acc += dy * wf * x * rstd
    tl.store(DOT + row, tl.sum(acc, axis=0) / n_cols)


@triton.jit
def _rms_norm_bwd_streamed_kernel(DY, X, W, RSTD, DOT, DS, DX, DW_PARTIAL, stride_dy, stride_x, stride_ds, n_rows,
                                  n_cols, rows_per_program, HAS_DS: tl.constexpr, GEMMA: tl.constexpr,
                                  BLOCK: tl.constexpr):
    """Streamed rows, step 2: program (i, j) handles column block j of row range i, so its dX and dW
    need only BLOCK columns in registers; it stores its dW share for that block."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < n_cols
    wf = _weight_factor(tl.load(W + cols, mask=cmask, other=0.0), X.dtype.element_ty, GEMMA)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    start = first.to(tl.int64)  # row pointers advance row by row in 64 bits (no i32 offset overflow)
    x_row, dy_row, ds_row, dx_row = X + start * stride_x, DY + start * stride_dy, DS + start * stride_ds, \
        DX + start * n_cols
    for row in range(first, last):
        rstd = tl.load(RSTD + row)
        x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols, mask=cmask, other=0.0).to(tl.float32)
        xhat = x * rstd
        dw += _weight_grad_term(dy, xhat, X.dtype.element_ty, GEMMA)
        dx = rstd * (dy * wf - xhat * tl.load(DOT + row))
        if HAS_DS:
            dx += tl.load(ds_row + cols, mask=cmask, other=0.0).to(tl.float32)
            ds_row += stride_ds
        tl.store(dx_row + cols, dx.to(DX.dtype.element_ty), mask=cmask)
        x_row += stride_x
        dy_row += stride_dy
        dx_row += n_cols
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=cmask)


def _config(n_cols: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps). Register-resident kernels: several short rows per program, about 16
    values per thread for the forward and 8 for the backward (which holds x, dy, ds and the dW share at
    once; more spills on sm_80/sm_90, see benchmarks/aot_check.py). Streamed kernels (n_cols >
    RESIDENT_MAX): BLOCK = COLUMN_BLOCK."""
    if n_cols > MAX_HIDDEN:
        raise ValueError(f"rms_norm kernel supports hidden sizes up to {MAX_HIDDEN}, got {n_cols}")
    block = triton.next_power_of_2(n_cols)
    if block > RESIDENT_MAX:
        return COLUMN_BLOCK, 1, 8
    per_program, per_warp = (2048, 256) if backward else (4096, 512)
    rows = max(1, min(16, per_program // block))
    return block, rows, max(1, min(16, block * rows // per_warp))


def launch_rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, eps: float,
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
    options = dict(HAS_RESIDUAL=residual is not None, GEMMA=gemma, BLOCK=block, num_warps=warps)
    if block >= n_cols:
        _rms_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
            x2, r2, y, s, weight, rstd, x2.stride(0), r2.stride(0), n_rows, n_cols, eps, ROWS=rows, **options)
    elif n_rows:
        _rms_norm_fwd_streamed_kernel[(n_rows,)](
            x2, r2, y, s, weight, rstd, x2.stride(0), r2.stride(0), n_cols, eps, **options)
    return y, s, rstd


rms_norm_fwd = custom_op("pytrain::rms_norm_fwd", launch_rms_norm_fwd, mutates_args=())


@rms_norm_fwd.register_fake
def _(x, weight, residual, eps, gemma):
    s = x.new_empty(x.shape if residual is not None else (0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), s, \
        x.new_empty(x.shape[:-1], dtype=torch.float32)


def launch_rms_norm_bwd(dy: torch.Tensor, ds: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor,
                        rstd: torch.Tensor, gemma: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dX (which is also the residual's gradient) and dW. `x` is the normalised input (x + residual)."""
    n_cols = x.shape[-1]
    dy2, x2 = rows_2d(dy), rows_2d(x)
    ds2 = rows_2d(ds) if ds is not None else dy2
    n_rows = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block, rows, warps = _config(n_cols, backward=True)
    options = dict(HAS_DS=ds is not None, GEMMA=gemma, BLOCK=block, num_warps=warps)
    if block >= n_cols:
        kernel, options["ROWS"], col_blocks = _rms_norm_bwd_kernel, rows, 1
        extra = ()
    else:  # streamed: the per-row dot product first, then column blocks of row ranges
        kernel, col_blocks = _rms_norm_bwd_streamed_kernel, triton.cdiv(n_cols, block)
        extra = (torch.empty(n_rows, dtype=torch.float32, device=x.device),)
        if n_rows:
            _rms_norm_bwd_row_dot_kernel[(n_rows,)](dy2, x2, weight, rstd, extra[0], dy2.stride(0), x2.stride(0),
                                                    n_cols, GEMMA=gemma, BLOCK=block, num_warps=warps)

    def args(programs, partial):
        rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), rows) * rows
        return (dy2, x2, weight, rstd, *extra, ds2, dx, partial, dy2.stride(0), x2.stride(0), ds2.stride(0), n_rows,
                n_cols, rows_per_program)

    groups = triton.cdiv(resident_programs(kernel, args(1, rstd), options, x.device, triton.cdiv(n_rows, rows)
                                           * col_blocks), col_blocks)
    partial = torch.empty((groups, n_cols), dtype=torch.float32, device=x.device)
    kernel[(groups, col_blocks)](*args(groups, partial), **options)
    return dx, partial.sum(0).to(weight.dtype)


rms_norm_bwd = custom_op("pytrain::rms_norm_bwd", launch_rms_norm_bwd, mutates_args=())


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
