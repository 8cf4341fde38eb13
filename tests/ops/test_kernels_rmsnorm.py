"""Triton RMSNorm against the float64 reference: outputs, dX, dW and d(residual)."""

import pytest
import torch

import pytrain.kernels.rms_norm as kmod
from _kernel_checks import DEVICE, assert_close, leaf64, poisoned, requires_triton
from pytrain.ops import rms_norm, rms_norm_reference

pytestmark = requires_triton


def _input(shape, dtype, layout, gen):
    """x of `shape` stored contiguously, as a column slice (strided rows), or transposed (no row view)."""
    if layout == "contiguous":
        return torch.randn(shape, generator=gen).to(DEVICE, dtype)
    if layout == "sliced":
        return torch.randn(*shape[:-1], shape[-1] + 5, generator=gen).to(DEVICE, dtype)[..., 2:2 + shape[-1]]
    return torch.randn(shape[1], shape[0], *shape[2:], generator=gen).to(DEVICE, dtype).transpose(0, 1)


def _check(shape, dtype, mode, with_residual, layout="contiguous", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = _input(shape, dtype, layout, gen).requires_grad_()
    w = (1.0 + 0.3 * torch.randn(shape[-1], generator=gen)).to(DEVICE, dtype).requires_grad_()
    r = _input(shape, dtype, layout, gen).requires_grad_() if with_residual else None
    inputs = [x, w] + ([r] if with_residual else [])
    with poisoned(kmod):
        out = rms_norm(x, w, 1e-6, residual=r, mode=mode, backend="triton")
        outs = out if with_residual else (out,)
        grads_out = [torch.randn(o.shape, generator=gen).to(DEVICE, dtype) for o in outs]
        grads = torch.autograd.grad(outs, inputs, grads_out)
    ref_inputs = [leaf64(t) for t in inputs]
    ref = rms_norm_reference(ref_inputs[0], ref_inputs[1], 1e-6, residual=ref_inputs[2] if with_residual else None,
                             mode=mode)
    refs = ref if with_residual else (ref,)
    ref_grads = torch.autograd.grad(refs, ref_inputs, [g.double() for g in grads_out])
    for o, ro in zip(outs, refs):
        assert o.dtype == dtype and o.shape == x.shape
        assert_close(o, ro, dtype, "output")
    for name, g, rg in zip(["dx", "dw", "dresidual"], grads, ref_grads):
        assert g.dtype == dtype
        assert_close(g, rg, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["llama", "gemma"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_float64_reference(dtype, mode, with_residual):
    _check((37, 123), dtype, mode, with_residual)


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_non_contiguous_inputs(layout):
    _check((3, 13, 123), torch.bfloat16, "llama", True, layout=layout, seed=1)


@pytest.mark.parametrize("shape", [(5, 4096), (3, 8192), (2, 16384), (1, 1, 3)])
def test_hidden_sizes(shape):
    _check(shape, torch.float32, "llama", False, seed=2)


def test_fp16():
    _check((9, 123), torch.float16, "gemma", True, seed=3)


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
