"""Fused linear cross-entropy: chunked cuBLAS projections + a Triton online-softmax kernel.

The logits never exist whole. For each chunk of tokens:
1. cuBLAS writes the chunk's logits [chunk, V] into one reused buffer (hidden's dtype);
2. `_ce_rows_kernel` (a program per row) streams the row once with an online max/sum to get the
   log-sum-exp, the loss and the z-loss term, then streams it again to overwrite it in place with
   d(loss)/d(logits), already multiplied by the row's gradient scale;
3. cuBLAS turns that into the chunk's dHidden rows and adds its dWeight share into an fp32 buffer.
Chunks are large (up to CHUNK_BYTES of logits) so the fp32 dW buffer is read-modified-written only a
few times, each time by a GEMM whose inner dimension (the chunk) hides that traffic.

For "mean"/"sum" the gradients are computed in the forward (the loss is the last op, so its
gradient is known up to one scalar): backward only scales them by the incoming gradient and casts
them to the inputs' dtypes, with no matmul. For "none" the per-row gradients are only known in the
backward, which recomputes the chunks with them. The non-ignored count for "mean" stays on the
device: nothing here synchronises with the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op

from pytrain.labels import IGNORE_INDEX

CHUNK_BYTES = 512 * 2**20  # logits buffer budget: 2048 tokens x 128256 vocab in bf16
MIN_CHUNK = 256
MAX_BLOCK = 8192  # vocab columns per step of the row loops
ROW_ALIGN = 64  # the logits buffer's row stride is a multiple of this many elements (see _logits_buffer)


@triton.jit
def _capped(z, softcap, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        z = softcap * (2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0)  # softcap * tanh(z / softcap)
    return z


@triton.jit
def _ce_rows_kernel(LOGITS, stride_row, LABELS, LOSS, ZLOSS, SCALE, scale_stride, n_cols, ignore_index,
                    label_smoothing, z_loss, softcap, HAS_SOFTCAP: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                    BLOCK: tl.constexpr):
    """One row of logits per program. Loads and stores cover the whole padded row (`stride_row`
    columns, a multiple of ROW_ALIGN, so they stay 16-byte vectors for any vocabulary); columns from
    n_cols on are padding, left out of every sum and overwritten with junk by the gradient pass."""
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * stride_row
    label = tl.load(LABELS + row)
    if label != ignore_index:
        m = -float("inf")
        s = 0.0
        z_sum = 0.0
        z_label = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            in_vocab = cols < n_cols
            z = _capped(tl.load(ptr + cols, mask=cols < stride_row, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
            z = tl.where(in_vocab, z, -float("inf"))  # padding may hold anything, NaN included
            z_label += tl.sum(tl.where(cols == label, z, 0.0))
            z_sum += tl.sum(tl.where(in_vocab, z, 0.0))
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new))
            m = m_new
        lse = m + tl.log(s)
        ce = (1.0 - label_smoothing) * (lse - z_label) + label_smoothing * (lse - z_sum / n_cols)
        # a label outside the vocabulary makes the loss NaN rather than silently dropping its term: the
        # trainer's one host sync per step stops on it (PYTRAIN_CHECK_INPUTS=1 names the label)
        ce = tl.where((label >= 0) & (label < n_cols), ce, float("nan"))
        z_term = z_loss * lse * lse
        tl.store(LOSS + row, ce + z_term)
        tl.store(ZLOSS + row, z_term)
        if COMPUTE_GRAD:
            # d/dz_j = p_j (1 + 2 z_loss lse) - (1 - eps) [j == label] - eps / V, times tanh' under softcap
            scale = tl.load(SCALE + row * scale_stride).to(tl.float32)
            p_coef = scale * (1.0 + 2.0 * z_loss * lse)
            uniform = scale * label_smoothing / n_cols
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                in_row = cols < stride_row
                z = _capped(tl.load(ptr + cols, mask=in_row, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
                g = tl.exp(z - lse) * p_coef - uniform - tl.where(cols == label, scale * (1.0 - label_smoothing), 0.0)
                if HAS_SOFTCAP:
                    t = z / softcap
                    g = g * (1.0 - t * t)
                tl.store(ptr + cols, g.to(LOGITS.dtype.element_ty), mask=in_row)
    else:
        tl.store(LOSS + row, 0.0)
        tl.store(ZLOSS + row, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                tl.store(ptr + cols, tl.zeros([BLOCK], dtype=LOGITS.dtype.element_ty), mask=cols < stride_row)


@triton.jit
def _scale_cast_kernel(X, Y, SCALE, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    scale = tl.load(SCALE).to(tl.float32)
    tl.store(Y + offs, (tl.load(X + offs, mask=mask).to(tl.float32) * scale).to(Y.dtype.element_ty), mask=mask)


def launch_scale_cast(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`(x * scale).to(dtype)` in one pass, without an fp32 temporary; `scale` is a one-element tensor."""
    x = x.contiguous()
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    block = 4096
    _scale_cast_kernel[(triton.cdiv(x.numel(), block),)](x, y, scale, x.numel(), BLOCK=block, num_warps=8)
    return y


scale_cast = custom_op("pytrain::scale_cast", launch_scale_cast, mutates_args=())


@scale_cast.register_fake
def _(x, scale, dtype):
    return x.new_empty(x.shape, dtype=dtype)


def default_chunk(n_tokens: int, vocab: int, dtype: torch.dtype) -> int:
    budget = CHUNK_BYTES // (vocab * torch.empty((), dtype=dtype).element_size())
    return max(1, min(n_tokens, max(MIN_CHUNK, 1 << max(budget, 1).bit_length() - 1)))


def _logits_buffer(rows: int, vocab: int, dtype: torch.dtype, device) -> torch.Tensor:
    """[rows, vocab] logits whose row stride is rounded up to ROW_ALIGN elements: rows start 16-byte
    aligned for any vocabulary (50257 included), so the kernel's loads and stores are vectors and cuBLAS
    gets an aligned leading dimension. The padding columns are never part of a result."""
    stride = triton.cdiv(vocab, ROW_ALIGN) * ROW_ALIGN
    return torch.empty((rows, stride), dtype=dtype, device=device)[:, :vocab]


def _add_weight_grad(dw32: torch.Tensor, dlogits_t: torch.Tensor, hidden: torch.Tensor) -> None:
    """dw32 += dlogits_t @ hidden, accumulated and stored in fp32."""
    if dlogits_t.dtype == torch.float32:
        dw32.addmm_(dlogits_t, hidden)
    elif dw32.is_cuda:
        torch.addmm(dw32, dlogits_t, hidden, out_dtype=torch.float32, out=dw32)
    else:  # CPU (the interpreter tests): no mixed-dtype addmm there
        dw32.addmm_(dlogits_t.float(), hidden.float())


def _chunked(hidden, weight, labels, *, ignore_index, label_smoothing, z_loss, softcap, scale, want_dh, want_dw,
             chunk):
    """Run the chunk loop. `scale` ([1] or [N] fp32, or None for loss only) multiplies each row's gradient.

    Returns per-row loss and z-loss terms (fp32, 0 on ignored rows), dHidden (hidden's dtype) and the
    fp32 dWeight, each gradient an empty tensor when not requested.
    """
    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    loss_rows = torch.empty(n, dtype=torch.float32, device=dev)
    z_rows = torch.empty(n, dtype=torch.float32, device=dev)
    dh = torch.empty((n, h) if want_dh else (0,), dtype=hidden.dtype, device=dev)
    dw32 = torch.zeros((v, h) if want_dw else (0,), dtype=torch.float32, device=dev)
    compute_grad = scale is not None and (want_dh or want_dw)
    chunk = chunk or default_chunk(n, v, hidden.dtype)
    buffer = _logits_buffer(min(chunk, n), v, hidden.dtype, dev)
    block = triton.next_power_of_2(min(v, MAX_BLOCK))
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        logits = buffer[: end - start]
        torch.mm(hidden[start:end], w.T, out=logits)
        row_scale = loss_rows if scale is None else scale[start:] if scale.numel() == n else scale
        _ce_rows_kernel[(end - start,)](
            logits, logits.stride(0), labels[start:end], loss_rows[start:], z_rows[start:], row_scale,
            int(scale is not None and scale.numel() == n), v, ignore_index, float(label_smoothing), float(z_loss),
            float(softcap), HAS_SOFTCAP=softcap > 0, COMPUTE_GRAD=compute_grad, BLOCK=block,
            num_warps=16 if block >= 8192 else 8)
        if compute_grad and want_dh:
            torch.mm(logits, w, out=dh[start:end])
        if compute_grad and want_dw:
            _add_weight_grad(dw32, logits.T, hidden[start:end])
    return loss_rows, z_rows, dh, dw32


def _reduce(rows: torch.Tensor, count: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / count


def launch_lce_fwd(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str,
            label_smoothing: float, z_loss: float, softcap: float, want_dh: bool, want_dw: bool,
            chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, z-loss term, dHidden, fp32 dWeight); the gradients (for "mean"/"sum" only) are those
    of the reduced loss, to be scaled by its incoming gradient. softcap 0 = none; chunk 0 = default."""
    count = (labels != ignore_index).sum().clamp(min=1).to(torch.float32)
    eager = reduction != "none"
    scale = (1.0 / count if reduction == "mean" else torch.ones_like(count)).reshape(1) if eager else None
    loss_rows, z_rows, dh, dw32 = _chunked(
        hidden, weight, labels, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, scale=scale, want_dh=want_dh and eager, want_dw=want_dw and eager, chunk=chunk)
    return _reduce(loss_rows, count, reduction), _reduce(z_rows, count, reduction), dh, dw32


lce_fwd = custom_op("pytrain::linear_cross_entropy_fwd", launch_lce_fwd, mutates_args=())


@lce_fwd.register_fake
def _(hidden, weight, labels, ignore_index, reduction, label_smoothing, z_loss, softcap, want_dh, want_dw, chunk):
    eager = reduction != "none"
    loss_shape = (hidden.shape[0],) if reduction == "none" else ()
    return (hidden.new_empty(loss_shape, dtype=torch.float32), hidden.new_empty(loss_shape, dtype=torch.float32),
            hidden.new_empty(hidden.shape if want_dh and eager else (0,)),
            hidden.new_empty(weight.shape if want_dw and eager else (0,), dtype=torch.float32))


def launch_lce_bwd(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, grad_rows: torch.Tensor,
            ignore_index: int, label_smoothing: float, z_loss: float, softcap: float, want_dh: bool, want_dw: bool,
            chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sum(grad_rows * per-row loss) for reduction "none", by recomputing the chunks."""
    _, _, dh, dw32 = _chunked(
        hidden, weight, labels, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, scale=grad_rows.to(torch.float32).contiguous(), want_dh=want_dh, want_dw=want_dw,
        chunk=chunk)
    return dh, dw32.to(weight.dtype)


lce_bwd = custom_op("pytrain::linear_cross_entropy_bwd", launch_lce_bwd, mutates_args=())


@lce_bwd.register_fake
def _(hidden, weight, labels, grad_rows, ignore_index, label_smoothing, z_loss, softcap, want_dh, want_dw, chunk):
    return hidden.new_empty(hidden.shape if want_dh else (0,)), weight.new_empty(weight.shape if want_dw else (0,))


def _setup_context(ctx, inputs, output):
    hidden, weight, labels, ignore_index, reduction, label_smoothing, z_loss, softcap, want_dh, want_dw, chunk = inputs
    _loss, z_term, dh, dw32 = output
    ctx.mark_non_differentiable(z_term, dh, dw32)
    ctx.reduction = reduction
    ctx.dtypes = hidden.dtype, weight.dtype
    ctx.options = ignore_index, label_smoothing, z_loss, softcap, want_dh, want_dw, chunk
    ctx.save_for_backward(*((hidden, weight, labels) if reduction == "none" else (dh, dw32)))


def _backward(ctx, grad_loss, _grad_z, _grad_dh, _grad_dw):
    ignore_index, label_smoothing, z_loss, softcap, want_dh, want_dw, chunk = ctx.options
    if ctx.reduction == "none":
        hidden, weight, labels = ctx.saved_tensors
        dh, dw = lce_bwd(hidden, weight, labels, grad_loss, ignore_index, label_smoothing, z_loss, softcap,
                         want_dh, want_dw, chunk)
    else:
        dh, dw32 = ctx.saved_tensors
        scale = grad_loss.reshape(1).to(torch.float32)
        dh = scale_cast(dh, scale, ctx.dtypes[0]) if want_dh else None
        dw = scale_cast(dw32, scale, ctx.dtypes[1]) if want_dw else None
    return (dh if want_dh else None), (dw if want_dw else None), *([None] * 9)


lce_fwd.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden, weight, labels, *, ignore_index=IGNORE_INDEX, reduction="mean", label_smoothing=0.0,
                         z_loss=0.0, softcap=None, chunk=0):
    """(loss, z-loss term) with the contract of `pytrain.ops.linear_cross_entropy` (arguments already
    validated). `chunk` overrides the number of tokens per chunk (tests use it to force several)."""
    grad = torch.is_grad_enabled()
    loss, z_term, _, _ = lce_fwd(
        hidden, weight, labels, int(ignore_index), reduction, float(label_smoothing), float(z_loss),
        float(softcap or 0.0), grad and hidden.requires_grad, grad and weight.requires_grad, int(chunk))
    return loss, z_term
