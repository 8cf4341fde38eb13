"""Triton RMSNorm against the float64 reference: outputs, dX, dW and d(residual)."""

import pytest
import torch

import pytrain.kernels.rms_norm as kmod
from _kernel_checks import DEVICE, assert_close, leaf64, requires_triton
from _rms_norm_checks import check_rms_norm
from pytrain.ops import rms_norm, rms_norm_reference

pytestmark = requires_triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["llama", "gemma"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_float64_reference(dtype, mode, with_residual):
    check_rms_norm((37, 123), dtype, mode, with_residual)


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_non_contiguous_inputs(layout):
    check_rms_norm((3, 13, 123), torch.bfloat16, "llama", True, layout=layout, seed=1)


@pytest.mark.parametrize("shape", [(5, 4096), (3, 8192), (2, 16384), (1, 1, 3)])
def test_hidden_sizes(shape):
    check_rms_norm(shape, torch.float32, "llama", False, seed=2)


def test_fp16():
    check_rms_norm((9, 123), torch.float16, "gemma", True, seed=3)


def test_expanded_output_gradient():
    """`y.sum().backward()` hands the kernel a stride-0 gradient."""
    x = torch.randn(7, 123, device=DEVICE, requires_grad=True)
    w = torch.randn(123, device=DEVICE, requires_grad=True)
    rms_norm(x, w, backend="triton").sum().backward()
    xr, wr = leaf64(x), leaf64(w)
    rms_norm_reference(xr, wr).sum().backward()
    assert_close(x.grad, xr.grad, torch.float32, "dx")
    assert_close(w.grad, wr.grad, torch.float32, "dw")


def test_opcheck_and_fullgraph_compile():
    x = torch.randn(4, 123, device=DEVICE, requires_grad=True)
    w = torch.randn(123, device=DEVICE, requires_grad=True)
    r = torch.randn(4, 123, device=DEVICE, requires_grad=True)
    torch.library.opcheck(kmod.rms_norm_fwd, (x, w, r, 1e-6, False))
    torch.library.opcheck(kmod.rms_norm_fwd, (x, w, None, 1e-6, True))

    def block(x, w, r):
        y, s = rms_norm(x, w, residual=r, backend="triton")
        return (y * s).sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x, w, r), (x, w, r))
    expected = torch.autograd.grad(block(x, w, r), (x, w, r))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
