"""Helpers for the kernel tests: where Triton can run, float64 comparisons, poisoned allocations."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

TRITON_OK = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
requires_triton = pytest.mark.skipif(
    not TRITON_OK, reason="Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (CI sets it)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# relative-norm tolerances against float64 references
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values (an unwritten, poisoned element?)"
    return ((actual - expected).norm() / expected.norm().clamp(min=1e-30)).item()


def assert_close(actual, expected, dtype, what="") -> None:
    err = rel_err(actual, expected)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e} ({dtype})"


def leaf64(t: torch.Tensor) -> torch.Tensor:
    """A float64 leaf copy of `t` that requires grad (so the reference's gradients stay in float64)."""
    return t.detach().double().requires_grad_()


class _PoisonedTorch:
    """Stands in for the `torch` module inside a kernel module: `torch.empty` returns NaN-filled tensors."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def empty(self, *args, **kwargs):
        t = self._real.empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)


@contextlib.contextmanager
def poisoned(*modules):
    """Make every `torch.empty` in `modules` (the kernel wrappers' output buffers) come back poisoned, so
    an element a kernel forgets to write shows up as NaN instead of passing by luck."""
    for module in modules:
        module.torch = _PoisonedTorch(torch)
    try:
        yield
    finally:
        for module in modules:
            module.torch = torch
