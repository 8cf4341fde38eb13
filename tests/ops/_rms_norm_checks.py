"""One RMSNorm check shared by the resident-row and streamed-row kernel tests."""

import torch

import pytrain.kernels.rms_norm as kmod
from _kernel_checks import DEVICE, assert_close, leaf64, poisoned
from pytrain.ops import rms_norm, rms_norm_reference


def _input(shape, dtype, layout, gen):
    """x of `shape` stored contiguously, as a column slice (strided rows), or transposed (no row view)."""
    if layout == "contiguous":
        return torch.randn(shape, generator=gen).to(DEVICE, dtype)
    if layout == "sliced":
        return torch.randn(*shape[:-1], shape[-1] + 5, generator=gen).to(DEVICE, dtype)[..., 2:2 + shape[-1]]
    return torch.randn(shape[1], shape[0], *shape[2:], generator=gen).to(DEVICE, dtype).transpose(0, 1)


def check_rms_norm(shape, dtype, mode, with_residual, layout="contiguous", seed=0):
    """The Triton RMSNorm (poisoned outputs) against the float64 reference: outputs and every gradient."""
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
