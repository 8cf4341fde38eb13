"""The fused ops' public entry points: each runs the Triton kernel (`pytrain.kernels`) on CUDA tensors,
pytrain's fused CPU kernel on fp32 CPU tensors where the op has one (rms_norm, apply_rope, swiglu:
pytrain.ops.cpu_kernels), and the PyTorch reference elsewhere (grouped_mm: PyTorch's own grouped GEMM
where the GPU has it);
`set_backend` or a per-call `backend=` forces either. `set_checks`
(or PYTRAIN_CHECK_INPUTS=1) validates labels and RoPE positions on every call (see `_checks`). Attention
runs SDPA or FlexAttention (block-sparse over packed documents on CUDA), see pytrain.ops.attention."""

from pytrain.ops._backend import BACKENDS, get_backend, set_backend
from pytrain.ops._checks import checks_enabled, set_checks
from pytrain.ops.attention import attention, document_mask
from pytrain.ops.grouped_mm import grouped_mm, grouped_mm_reference
from pytrain.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from pytrain.ops.rms_norm import rms_norm, rms_norm_reference
from pytrain.ops.rope import apply_rope, apply_rope_reference, rope_table
from pytrain.ops.swiglu import swiglu, swiglu_reference

__all__ = [
    "BACKENDS", "apply_rope", "apply_rope_reference", "attention", "checks_enabled", "document_mask", "get_backend",
    "grouped_mm", "grouped_mm_reference", "linear_cross_entropy", "linear_cross_entropy_reference", "rms_norm",
    "rms_norm_reference", "rope_table", "set_backend", "set_checks", "swiglu", "swiglu_reference",
]
