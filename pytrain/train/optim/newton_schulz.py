"""Newton-Schulz orthogonalisation: the polar factor U V^T of a matrix (approximately), Muon's core.

The quintic iteration X <- a X + (b A + c A^2) X with A = X X^T, from a start normalised to Frobenius
norm 1 (so every singular value is <= 1), pushes each singular value towards 1 without an SVD. Keller
Jordan's coefficients (3.4445, -4.7750, 2.0315) maximise the slope at zero: five steps leave the singular
values scattered around 1 (about 0.5 to 1.5) rather than at 1, which trains as well as the exact factor.

A tensor of three or more dimensions is a batch of matrices along its leading dimensions (MoE experts:
[num_experts, out, in]), each orthogonalised on its own. The operations are those of
`torch.optim.Muon`'s `_zeropower_via_newtonschulz` (addmm for one matrix, baddbmm for a batch), so in
the same dtype the result is the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Keller Jordan's quintic (https://kellerjordan.github.io/posts/muon/), also torch.optim.Muon's defaults.
DEFAULT_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
DEFAULT_STEPS = 5
EPS = 1e-7  # floor of the starting norm: a zero update stays zero


def orthogonalize(update: Tensor, steps: int, coefficients: tuple[float, float, float], dtype: torch.dtype) -> Tensor:
    """`steps` Newton-Schulz iterations on `update` (a matrix, or a batch of matrices along the leading
    dimensions) computed in `dtype`; returns a tensor of `update`'s shape in `dtype`."""
    a, b, c = coefficients
    shape = update.shape
    x = update.to(dtype)
    if x.dim() > 3:
        x = x.flatten(0, -3)
    wide = shape[-2] <= shape[-1]
    if not wide:  # iterate on the short side: A is the smaller Gram matrix
        x = x.mT
    if x.dim() == 2:
        x = x / x.norm().clamp(min=EPS)
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    else:
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=EPS)
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    if not wide:
        x = x.mT
    return x.reshape(shape)


def orthogonalizer(device: torch.device):
    """(function, dtype) for a device: on CUDA bf16 (as the reference implementations, whose accuracy the
    iteration does not need beyond) under torch.compile, which fuses the scaling and the polynomial's
    elementwise terms around the matmuls; elsewhere fp32 in eager mode."""
    if device.type == "cuda":
        return torch.compile(orthogonalize, fullgraph=True, dynamic=None), torch.bfloat16
    return orthogonalize, torch.float32
