"""Backend selection shared by the public ops.

"auto" runs the Triton kernel for CUDA tensors, pytrain's fused CPU kernel (pytrain.ops.cpu_kernels)
for fp32 CPU tensors of the ops that have one, and the PyTorch reference otherwise; "triton" and "torch"
force one. A per-call `backend=` overrides the process-wide choice made with `set_backend`
(which is what the training config's switch calls). Triton on CPU tensors is only possible through
the interpreter (`TRITON_INTERPRET=1`, how the kernels are tested without a GPU).
"""

from __future__ import annotations

import os

import torch

from pytrain.errors import PytrainError, did_you_mean

BACKENDS = ("auto", "triton", "torch")
_default = "auto"


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise PytrainError(f'unknown kernel backend "{name}"{did_you_mean(name, BACKENDS)}; '
                           f"choose one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide backend: "auto" (default), "triton" or "torch"."""
    global _default
    _default = _check(name)


def get_backend() -> str:
    return _default


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _chosen(backend: str | None) -> str:
    """The backend an op runs under: `backend`, checked, or the process-wide one (checked when it was set)."""
    return _default if backend is None else _check(backend)


def use_triton(x: torch.Tensor, backend: str | None) -> bool:
    """Whether an op called on `x` with `backend` (None = the process-wide one) runs the Triton kernel."""
    name = _chosen(backend)
    if name == "torch":
        return False
    if name == "auto":
        return x.is_cuda
    if not x.is_cuda and not interpreter_enabled():
        raise PytrainError(f"backend \"triton\" needs CUDA tensors (got {x.device.type}); on CPU set "
                           "TRITON_INTERPRET=1 (slow, for tests) or use backend \"torch\"")
    return True


def use_cpu_kernel(x: torch.Tensor, backend: str | None) -> bool:
    """Whether an op called on `x` with `backend` may run pytrain's fused CPU kernel: "auto" on a CPU tensor
    (the op checks the rest: dtype, layout, not compiling; see pytrain.ops.cpu_kernels.usable)."""
    return _chosen(backend) == "auto" and x.is_cpu
