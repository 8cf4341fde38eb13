"""SwiGLU's input half, `silu(x @ gate_weight.T) * (x @ up_weight.T)`: a Llama-style MLP before its down
projection.

On fp32 CPU tensors (backend "auto", outside torch.compile) the two projections run as one matmul with the
weights stacked, and the gating as the fused kernel of pytrain.ops.cpu_kernels over its output; its backward
is one matmul per gradient as well. Elsewhere the PyTorch reference: two projections, then silu and the
product (on CUDA, compile fuses the elementwise part with its neighbours; stacking the weights there would
copy them once per decoded token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pytrain.errors import PytrainError
from pytrain.ops import cpu_kernels
from pytrain.ops._backend import use_cpu_kernel


def swiglu_reference(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor) -> torch.Tensor:
    return F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight)


def swiglu(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor, *,
           backend: str | None = None) -> torch.Tensor:
    """x [..., hidden], gate_weight and up_weight [inner, hidden] (bias-free projections) -> [..., inner];
    gradients flow to all three."""
    if gate_weight.shape != up_weight.shape or gate_weight.dim() != 2 or x.shape[-1] != gate_weight.shape[1]:
        raise PytrainError(f"swiglu: x {list(x.shape)}, gate_weight {list(gate_weight.shape)} and up_weight "
                           f"{list(up_weight.shape)}: the weights must be [inner, hidden] alike, hidden x's last size")
    if use_cpu_kernel(x, backend) and cpu_kernels.usable(x, gate_weight, up_weight):
        return cpu_kernels.SwiGLU.apply(F.linear(x, torch.cat((gate_weight, up_weight))))
    return swiglu_reference(x, gate_weight, up_weight)
