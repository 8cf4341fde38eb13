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


def _is_boolean_mask(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


@contextlib.contextmanager
def host_syncs_forbidden(monkeypatch):
    """Trap every way a CPU test can see a device-to-host sync: Python conversions, copies to the host,
    data-dependent shapes (nonzero, boolean-mask indexing, masked_select); on CUDA, torch's own detector."""
    def sync(*_args, **_kwargs):
        raise AssertionError("host synchronisation")

    getitem = torch.Tensor.__getitem__

    def checked_getitem(self, index):
        if _is_boolean_mask(index):
            sync()
        return getitem(self, index)

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "nonzero", "masked_select"):
            m.setattr(torch.Tensor, name, sync)
        for name in ("equal", "nonzero", "masked_select", "argwhere"):
            m.setattr(torch, name, sync)
        m.setattr(torch.Tensor, "__getitem__", checked_getitem)
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")
