"""pytrain's fused CPU kernels (csrc/cpu_ops.cpp) for fp32 SwiGLU, RMSNorm, RoPE and the LM head's
cross-entropy, as autograd Functions.

Eager PyTorch runs SwiGLU's gating as 2 passes forward and 3 backward, RMSNorm as about 5 and 12, RoPE
as about 8 and 14 per tensor, logsumexp as 5, each over memory with a fresh output; on a CPU, where a
training step's activations come from memory rather than cache, those passes cost as much as the block's
matmuls (benchmarks/bench_train.py --vs-minimal, docs/benchmarks.md). Each kernel here reads its inputs
once from memory (a row at a time, in cache) and writes each output once. `pytrain.ops` runs them under
backend "auto" for fp32 CPU tensors outside `torch.compile` (which traces the reference and fuses it
itself) and outside CPU autocast (whose matmuls would hand them bf16); the Triton kernels stay the CUDA
path and the PyTorch references stay the definition every test holds these against.

The native code trusts the pointers it is given: everything it reads and writes is checked or made here
(contiguous fp32 CPU tensors of the stated sizes, outputs allocated here like their inputs). The
backwards are written through those pointers, so they are once-differentiable: a double backward
(create_graph=True through them) is refused in one line rather than silently missing its second-order
terms. Two backwards write their gradient over a tensor they saved: the cross-entropy over the logits it
computed itself, SwiGLU over its input, which must be a tensor nothing else reads (pytrain.ops.swiglu
passes the output of its own matmul); a second backward through either is refused.
"""

from __future__ import annotations

import functools

import torch

from pytrain import _native
from pytrain.errors import PytrainError


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def plain_cpu(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Whether t is a plain (no subclass), strided CPU tensor of `dtype`: memory the native code can read."""
    return type(t) in _PLAIN and t.is_cpu and t.dtype is dtype and t.layout is torch.strided


def usable(*tensors: torch.Tensor) -> bool:
    """Whether these tensors can go to the kernels: plain strided fp32 CPU tensors, outside torch.compile and
    CPU autocast (under which the matmuls feeding SwiGLU and the cross-entropy would make bf16)."""
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    return all(map(plain_cpu, tensors))


def _checked(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t, contiguous, for the native code; refused when it is not a CPU tensor of `dtype` (a caller that
    skipped `usable`, or a matmul that made another dtype), which the native code would misread."""
    if not plain_cpu(t, dtype):
        raise PytrainError(f"pytrain's CPU kernels take {dtype} CPU tensors, got {t.dtype} on {t.device} "
                           '(use backend "torch")')
    return t.contiguous()


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def once_differentiable(backward):
    """torch's once_differentiable, without its no_grad context in the usual backward (grad mode off, no
    create_graph), where that context changes nothing: one backward per kernel per step costs less Python."""
    guarded = torch.autograd.function.once_differentiable(backward)

    @functools.wraps(backward)
    def run(ctx, *grads):
        return guarded(ctx, *grads) if torch.is_grad_enabled() else backward(ctx, *grads)

    return run


def _spend(ctx, op: str) -> None:
    """Mark a backward that writes its gradient over a saved tensor as run; refuse it a second time."""
    if ctx.spent:
        raise PytrainError(f"{op}'s CPU kernel runs its backward once (it writes the gradient over saved "
                           "values); for a second backward through the same graph use backend \"torch\"")
    ctx.spent = True


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up of gate_up [..., 2 * inner] (gate then up in each row: the output of one matmul with the
    two projections' weights stacked), [..., inner]. Saves gate_up (autograd would save silu(gate) as well)
    and recomputes the sigmoid; the backward writes d(gate_up) over the saved gate_up, in the layout the one
    backward matmul needs, so it runs once, and gate_up must be a tensor nothing else reads
    (pytrain.ops.swiglu passes its own matmul's output)."""

    @staticmethod
    def forward(ctx, gate_up):
        gate_up = _checked(gate_up)
        inner = gate_up.shape[-1] // 2
        out = gate_up.new_empty((*gate_up.shape[:-1], inner))
        _native.swiglu_forward(gate_up.data_ptr(), out.data_ptr(), out.numel() // max(inner, 1), inner,
                               torch.get_num_threads())
        ctx.save_for_backward(gate_up)
        ctx.spent = False
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        _spend(ctx, "swiglu")
        (gate_up,) = ctx.saved_tensors
        grad = grad.contiguous()
        inner = gate_up.shape[-1] // 2
        _native.swiglu_backward(grad.data_ptr(), gate_up.data_ptr(), grad.numel() // max(inner, 1), inner,
                                torch.get_num_threads())
        return gate_up  # now its own gradient


class RMSNorm(torch.autograd.Function):
    """RMSNorm over the last dimension, with the optional residual add before it (then returns (y, x + residual)).
    Saves the normalised input h and one rstd per row; the backward recomputes h * rstd."""

    @staticmethod
    def forward(ctx, x, weight, residual, eps: float, mode: str):
        cols = x.shape[-1]
        x, weight = _checked(x), _checked(weight)
        residual = None if residual is None else _checked(residual)
        rows = x.numel() // cols if cols else 0
        y = torch.empty_like(x)
        h = x if residual is None else torch.empty_like(x)
        rstd = x.new_empty(rows)
        _native.rms_norm_forward(x.data_ptr(), _ptr(residual), weight.data_ptr(), y.data_ptr(),
                                 _ptr(None if residual is None else h), rstd.data_ptr(), rows, cols, eps,
                                 mode == "gemma", torch.get_num_threads())
        ctx.save_for_backward(h, rstd, weight)
        ctx.gemma, ctx.has_residual = mode == "gemma", residual is not None
        return y if residual is None else (y, h)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_out=None):
        h, rstd, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dh_out = None if dh_out is None else dh_out.contiguous()
        dh, dweight = torch.empty_like(h), torch.empty_like(weight)
        _native.rms_norm_backward(dy.data_ptr(), _ptr(dh_out), h.data_ptr(), rstd.data_ptr(), weight.data_ptr(),
                                  dh.data_ptr(), dweight.data_ptr(), rstd.numel(), h.shape[-1], ctx.gemma,
                                  torch.get_num_threads())
        return dh, dweight, dh if ctx.has_residual else None, None, None


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    x = _checked(x)
    out = torch.empty_like(x)
    batch, seq, heads, head_dim = x.shape
    if tuple(cos.shape) not in ((seq, head_dim // 2), (batch, seq, head_dim // 2)) or sin.shape != cos.shape:
        raise PytrainError(f"RoPE tables of shape {list(cos.shape)} for q or k of {list(x.shape)}: expected "
                           f"[seq, head_dim / 2] or [batch, seq, head_dim / 2]")
    _native.rope(x.data_ptr(), out.data_ptr(), cos.data_ptr(), sin.data_ptr(), batch, seq, heads, head_dim // 2,
                 seq * (head_dim // 2) if cos.dim() == 3 else 0, inverse, torch.get_num_threads())
    return out


class Rope(torch.autograd.Function):
    """RoPE of q and k [batch, seq, heads, head_dim] by each token's (cos, sin) rows, [seq, head_dim / 2] or
    [batch, seq, head_dim / 2] fp32 (pytrain.ops.rope); the backward is the rotation by the negated angles.
    The reference's arithmetic in the same order, so the same bits (tests/ops/test_rope_cpu_kernel.py)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        cos, sin = _checked(cos), _checked(sin)
        ctx.save_for_backward(cos, sin)
        return _rotated(q, cos, sin, False), _rotated(k, cos, sin, False)

    @staticmethod
    @once_differentiable
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        return (None if dq is None else _rotated(dq, cos, sin, True),
                None if dk is None else _rotated(dk, cos, sin, True), None, None)


class LinearCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of hidden @ weight.T against labels (0 on ignored rows, NaN for a label outside
    the vocabulary), pytrain.ops.linear_cross_entropy's plain case. Saves the logits and one logsumexp per
    row; the backward writes the logits' gradient over the saved logits (no [N, V] allocation), so it can
    run only once: a second backward through the same graph (retain_graph=True) is refused."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index: int):
        logits = _checked(hidden @ weight.T)
        labels = _checked(labels, torch.int64)
        rows, vocab = logits.shape
        if labels.shape != (rows,):
            raise PytrainError(f"linear_cross_entropy: labels {list(labels.shape)} for {rows} rows")
        lse, loss = logits.new_empty(rows), logits.new_empty(rows)
        _native.cross_entropy_forward(logits.data_ptr(), labels.data_ptr(), lse.data_ptr(), loss.data_ptr(), rows,
                                      vocab, ignore_index, torch.get_num_threads())
        ctx.save_for_backward(hidden, weight, logits, labels, lse)
        ctx.ignore_index, ctx.spent = ignore_index, False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        _spend(ctx, "linear_cross_entropy")
        hidden, weight, dlogits, labels, lse = ctx.saved_tensors
        grad = grad.contiguous()
        _native.cross_entropy_backward(dlogits.data_ptr(), labels.data_ptr(), lse.data_ptr(), grad.data_ptr(),
                                       dlogits.shape[0], dlogits.shape[1], ctx.ignore_index, torch.get_num_threads())
        return dlogits.mm(weight), dlogits.t().mm(hidden), None, None
