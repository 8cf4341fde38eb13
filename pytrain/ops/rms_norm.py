"""RMSNorm: `y = x * rsqrt(mean(x**2) + eps) * w`, with an optional fused residual add.

Casting modes (statistics always in fp32):
- "llama": normalise in fp32, cast to the input dtype, then multiply by `w` (Llama/HF convention).
- "gemma": multiply by `(1 + w)` in fp32 and cast once at the end (Gemma convention).
The output has the input's dtype.
"""

from __future__ import annotations

import torch

from pytrain.errors import PytrainError
from pytrain.ops import cpu_kernels
from pytrain.ops._backend import use_cpu_kernel, use_triton

MODES = ("llama", "gemma")


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, mode: str) -> None:
    if mode not in MODES:
        raise PytrainError(f'rms_norm mode must be one of {", ".join(MODES)}, got "{mode}"')
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise PytrainError(f"rms_norm weight must have shape [{x.shape[-1]}], got {list(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise PytrainError(f"rms_norm residual must match x ({list(x.shape)}, {x.dtype}), "
                           f"got {list(residual.shape)}, {residual.dtype}")


def rms_norm_reference(x, weight, eps=1e-6, *, residual=None, mode="llama"):
    """Pure-PyTorch RMSNorm (the definition the kernels are tested against); same contract as `rms_norm`."""
    _check(x, weight, residual, mode)
    if residual is not None:
        x = x + residual
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 statistics (fp64 for fp64 input)
    xf = x.to(acc)
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if mode == "llama":
        y = normed.to(x.dtype) * weight.to(x.dtype)
    else:
        y = (normed * (1.0 + weight.to(acc))).to(x.dtype)
    return y if residual is None else (y, x)


def rms_norm(x, weight, eps=1e-6, *, residual=None, mode="llama", backend=None):
    """RMSNorm over the last dimension of `x` ([..., hidden]) with `weight` ([hidden]).

    With `residual` (same shape/dtype as x) it returns `(y, x + residual)` where y is the norm of the
    sum: the pre-norm block's "add then normalise" in one pass. Gradients flow to x, weight and
    residual. `backend`: None (process-wide choice, see `set_backend`), "auto", "triton" or "torch".
    """
    if not use_triton(x, backend):
        if use_cpu_kernel(x, backend) and cpu_kernels.usable(x, weight, *([] if residual is None else [residual])):
            _check(x, weight, residual, mode)
            return cpu_kernels.RMSNorm.apply(x, weight, residual, eps, mode)
        return rms_norm_reference(x, weight, eps, residual=residual, mode=mode)
    _check(x, weight, residual, mode)
    from pytrain.kernels.rms_norm import rms_norm as rms_norm_triton

    return rms_norm_triton(x, weight, eps, residual=residual, mode=mode)
