"""Rotary embeddings in Triton, registered as `torch.ops.pytrain.rope`.

One launch rotates q and k: a program per token loads that token's cos/sin row once (from the cached
fp32 tables, indexed by its position) and rotates all its q heads and all its k heads, so GQA with any
head counts (one KV head included) costs nothing extra. Inputs may be strided views (e.g. the output of
`.view` or a transpose); only the head dimension must be contiguous. The backward is the same kernel
with the inverse rotation (sin negated).

Outputs are fresh tensors, never the inputs: the op cannot know whether the caller, another autograd
node or a gradient hook still holds q, k or the incoming gradients (autograd hands the same gradient
tensor to both branches of an add), so overwriting them could silently corrupt someone else's data.
Reading and writing each element once costs the same bandwidth in or out of place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op


@triton.jit
def _rotate_heads(X, XO, x_off, xo_off, stride_h, n_heads, cos, sin, d, dmask,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    mask = (h < n_heads)[:, None] & dmask[None, :]
    src = X + x_off + h[:, None].to(tl.int64) * stride_h + d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = XO + xo_off + h[:, None] * (2 * HALF) + d[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(XO.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(XO.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN, POS, sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, seq_len, table_len, n_qh, n_kh,
                 HAS_POS: tl.constexpr, INVERSE: tl.constexpr, HALF: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    b = tok // seq_len
    s = tok % seq_len
    if HAS_POS:
        pos = tl.load(POS + tok)
    else:
        pos = s
    # an out-of-range position reads no stray memory and turns the token's outputs into NaN, which the
    # trainer's one host sync per step stops on (PYTRAIN_CHECK_INPUTS=1 names the position)
    in_range = (pos >= 0) & (pos < table_len)
    pos = tl.minimum(tl.maximum(pos, 0), table_len - 1)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    cos = tl.load(COS + pos * HALF + d, mask=dmask, other=1.0)
    cos = tl.where(in_range, cos, float("nan"))[None, :]
    sin = tl.load(SIN + pos * HALF + d, mask=dmask, other=0.0)[None, :]
    if INVERSE:
        sin = -sin
    _rotate_heads(Q, QO, b * sq_b + s * sq_s, tok * n_qh * 2 * HALF, sq_h, n_qh, cos, sin, d, dmask,
                  HALF, BLOCK_QH)
    _rotate_heads(K, KO, b * sk_b + s * sk_s, tok * n_kh * 2 * HALF, sk_h, n_kh, cos, sin, d, dmask,
                  HALF, BLOCK_KH)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def launch_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            position_ids: torch.Tensor | None, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [B, S, Hq, D] and k [B, S, Hk, D] by the angles of cos/sin [table_len, D/2] (fp32)."""
    q, k = _unit_last(q), _unit_last(k)
    batch, seq, n_qh, head_dim = q.shape
    n_kh = k.shape[2]
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    pos = position_ids.contiguous() if position_ids is not None else q  # q: an unused placeholder pointer
    half = head_dim // 2
    block_qh, block_kh = triton.next_power_of_2(n_qh), triton.next_power_of_2(n_kh)
    warps = max(1, min(8, block_qh * half // 256))
    _rope_kernel[(batch * seq,)](
        q, k, qo, ko, cos, sin, pos, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        seq, cos.shape[0], n_qh, n_kh, HAS_POS=position_ids is not None, INVERSE=inverse, HALF=half,
        BLOCK_D=triton.next_power_of_2(half), BLOCK_QH=block_qh, BLOCK_KH=block_kh, num_warps=warps)
    return qo, ko


rope_op = custom_op("pytrain::rope", launch_rope, mutates_args=())


@rope_op.register_fake
def _(q, k, cos, sin, position_ids, inverse):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    _q, _k, cos, sin, position_ids, inverse = inputs
    ctx.inverse = inverse
    ctx.has_pos = position_ids is not None
    ctx.save_for_backward(cos, sin, *((position_ids,) if ctx.has_pos else ()))


def _backward(ctx, dq, dk):
    cos, sin, *pos = ctx.saved_tensors
    dq, dk = rope_op(dq, dk, cos, sin, pos[0] if ctx.has_pos else None, not ctx.inverse)
    return dq, dk, None, None, None, None


rope_op.register_autograd(_backward, setup_context=_setup_context)


def rope(q, k, cos, sin, position_ids=None):
    """Triton RoPE with the contract of `pytrain.ops.apply_rope`, given the fp32 cos/sin tables."""
    return rope_op(q, k, cos, sin, position_ids, False)
