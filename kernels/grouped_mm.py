"""Grouped GEMM in Triton, registered as `torch.ops.pytrain.grouped_mm` and `grouped_mm_bwd`.

`y[r] = x[r] @ w[g].T` for the rows r of group g (the contract of `pytrain.ops.grouped_mm`: rows sorted
by group, offsets = each group's end row, rows past the last end give zero and get no gradient).

Row-grouped kernel (the forward, and dX = dY @ w[g] in the backward): a program owns a BLOCK_M x BLOCK_N
tile of the output in the global row order. It finds the first group that reaches into its rows (a
binary search over the offsets, read on the device: no host sync, and the grid depends only on the
shapes) and accumulates, for each group its rows hold, the product of those rows (others masked to
zero) with that group's matrix, in fp32. Most tiles lie inside one group; a tile across a boundary
does one matmul per group it touches, so the work is at most (rows / BLOCK_M + groups) tile products,
as for kernels that align tiles to groups. The weight operand is read through strides, so the same
kernel multiplies by w[g].T (forward) or w[g] (dX).

Weight-gradient kernel: dW[g] = dY[rows of g].T @ X[rows of g]; a program owns one BLOCK_N x BLOCK_K tile
of one group's dW and walks that group's rows (an empty group writes zeros). Each element of dW is
written once: no atomics. fp32 inputs multiply in IEEE fp32 (no TF32), as torch.matmul does by default.
The `launch_*` functions are the custom ops' bodies (plain functions, so benchmarks/aot_check.py can run
them on meta tensors).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import custom_op


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # Triton's CPU interpreter multiplies bf16 operands wrongly: fp32 there (the logic is the same)
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _grouped_rows_kernel(A, B, C, ENDS, M, N, K, n_groups, stride_am, stride_ak, stride_bg, stride_bk, stride_bn,
                         IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """C[m, n] = sum_k A[m, k] * B[g(m), k, n] for the rows m of each group g; C is [M, N] contiguous."""
    first_row = tl.program_id(0) * BLOCK_M
    rows = first_row + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    rows64 = rows.to(tl.int64)
    # the first group whose end lies past this tile's first row
    lo = 0
    hi = n_groups
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(ENDS + mid) <= first_row:
            lo = mid + 1
        else:
            hi = mid
    g = lo
    start = tl.where(g > 0, tl.load(ENDS + g - 1, mask=g > 0, other=0), 0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    while (g < n_groups) & (start < first_row + BLOCK_M):
        end = tl.load(ENDS + g)
        if end > start:
            in_group = (rows >= start) & (rows < end)
            b_base = B + g.to(tl.int64) * stride_bg + cols[None, :] * stride_bn
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + ks
                a = tl.load(A + rows64[:, None] * stride_am + kk[None, :] * stride_ak,
                            mask=in_group[:, None] & (kk < K)[None, :], other=0.0)
                b = tl.load(b_base + kk[:, None].to(tl.int64) * stride_bk, mask=(kk < K)[:, None] & (cols < N)[None, :],
                            other=0.0)
                acc = _dot(a, b, acc, IEEE, UPCAST)
        start = tl.maximum(start, end)
        g += 1
    tl.store(C + rows64[:, None] * N + cols[None, :], acc.to(C.dtype.element_ty),
             mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def _grouped_weight_grad_kernel(DY, X, DW, ENDS, N, K, stride_dym, stride_dyn, stride_xm, stride_xk,
                                IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_K: tl.constexpr):
    """DW[g, n, k] = sum over the rows m of group g of DY[m, n] * X[m, k]; DW is [G, N, K] contiguous."""
    tiles_k = tl.cdiv(K, BLOCK_K)
    tile = tl.program_id(0)
    g = tl.program_id(1)
    ns = (tile // tiles_k) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = (tile % tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    start = tl.where(g > 0, tl.load(ENDS + g - 1, mask=g > 0, other=0), 0)
    end = tl.load(ENDS + g)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < end
        rows64 = rows.to(tl.int64)
        dy = tl.load(DY + rows64[:, None] * stride_dym + ns[None, :] * stride_dyn,
                     mask=rmask[:, None] & (ns < N)[None, :], other=0.0)
        x = tl.load(X + rows64[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=rmask[:, None] & (kk < K)[None, :], other=0.0)
        acc = _dot(tl.trans(dy), x, acc, IEEE, UPCAST)
    out = DW + g.to(tl.int64) * N * K + ns[:, None].to(tl.int64) * K + kk[None, :]
    tl.store(out, acc.to(DW.dtype.element_ty), mask=(ns < N)[:, None] & (kk < K)[None, :])


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks(dtype: torch.dtype, widths: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). 16-bit operands whose rows are 16-byte multiples (every
    model's widths) take large tiles; fp32 (twice the bytes) and unaligned widths (scalar loads, more
    registers) smaller ones, so that nothing spills on sm_80/sm_90 (benchmarks/aot_check.py)."""
    if dtype != torch.float32 and all(width % 8 == 0 for width in widths):
        return 64, 128, 64, 4
    return 64, 64, 16, 4


def _rows_product(a: torch.Tensor, b: torch.Tensor, b_strides: tuple[int, int, int], n: int,
                  ends: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    c = torch.empty((m, n), dtype=a.dtype, device=a.device)
    block_m, block_n, block_k, warps = _blocks(a.dtype, (k, n))
    if m and n:
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        _grouped_rows_kernel[grid](a, b, c, ends, m, n, k, ends.shape[0], a.stride(0), a.stride(1), *b_strides,
                                   IEEE=a.dtype == torch.float32, UPCAST=_interpreted(), BLOCK_M=block_m,
                                   BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return c


def launch_grouped_mm(x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """y [rows, out] = x [rows, in] @ w[g].T per group; `ends` int32 [groups]."""
    return _rows_product(x, w, (w.stride(0), w.stride(2), w.stride(1)), w.shape[1], ends)


grouped_mm_fwd = custom_op("pytrain::grouped_mm", launch_grouped_mm, mutates_args=())


@grouped_mm_fwd.register_fake
def _(x, w, ends):
    return x.new_empty((x.shape[0], w.shape[1]))


def launch_grouped_mm_bwd(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor,
                          needs_dx: bool, needs_dw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dX [rows, in] = dY @ w[g] per group, dW [groups, out, in]); an unneeded one comes back empty."""
    dx = (_rows_product(dy, w, (w.stride(0), w.stride(1), w.stride(2)), w.shape[2], ends) if needs_dx
          else x.new_empty((0,)))
    if not needs_dw:
        return dx, w.new_empty((0,))
    groups, n, k = w.shape
    dw = torch.empty((groups, n, k), dtype=w.dtype, device=w.device)
    block_m, block_n, block_k, warps = _blocks(x.dtype, (n, k))
    if groups and n and k:
        grid = (triton.cdiv(n, block_n) * triton.cdiv(k, block_k), groups)
        _grouped_weight_grad_kernel[grid](dy, x, dw, ends, n, k, dy.stride(0), dy.stride(1), x.stride(0), x.stride(1),
                                          IEEE=x.dtype == torch.float32, UPCAST=_interpreted(),
                                          BLOCK_M=block_m, BLOCK_N=block_n,
                                          BLOCK_K=block_k, num_warps=warps)
    return dx, dw


grouped_mm_bwd = custom_op("pytrain::grouped_mm_bwd", launch_grouped_mm_bwd, mutates_args=())


@grouped_mm_bwd.register_fake
def _(dy, x, w, ends, needs_dx, needs_dw):
    return (x.new_empty(x.shape if needs_dx else (0,)), w.new_empty(w.shape if needs_dw else (0,)))


def _setup_context(ctx, inputs, output):
    x, w, ends = inputs
    ctx.save_for_backward(x, w, ends)


def _backward(ctx, dy):
    x, w, ends = ctx.saved_tensors
    needs_dx, needs_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dw = grouped_mm_bwd(dy, x, w, ends, needs_dx, needs_dw)
    return (dx if needs_dx else None), (dw if needs_dw else None), None


grouped_mm_fwd.register_autograd(_backward, setup_context=_setup_context)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Triton grouped GEMM with the contract of `pytrain.ops.grouped_mm` (arguments already validated)."""
    return grouped_mm_fwd(x, w, offsets.to(torch.int32))
