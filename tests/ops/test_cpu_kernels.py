"""pytrain's fused CPU kernels (csrc/cpu_ops.cpp through pytrain.ops.cpu_kernels): SwiGLU and RMSNorm (RoPE:
test_rope_cpu_kernel.py), forward and every gradient, against the formulas run through autograd in float64,
on odd shapes, non-contiguous inputs and extreme values; the same bits whatever the thread count; and which
calls take them (fp32 CPU tensors under backend "auto", never bf16, never under torch.compile)."""

from __future__ import annotations

import pytest
import torch

from pytrain import ops
from pytrain.errors import PytrainError
from pytrain.ops import cpu_kernels


def _fp64_grads(fn, inputs, grads, dtype=torch.float64):
    """fn's outputs and the inputs' gradients, all in float64 (or `dtype`) through autograd."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, [g.to(dtype) for g in grads])
    return [o.detach() for o in outputs], [leaf.grad for leaf in leaves]


def _fast_grads(fn, inputs, grads):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, grads)
    return [o.detach() for o in outputs], [leaf.grad for leaf in leaves], outputs[0].grad_fn


def _check(fast, formula, reference, inputs, grads):
    """The kernel's outputs and gradients (fp32) against the formula in float64: off by no more than a few
    times PyTorch's reference ops in fp32 are (a weight gradient sums hundreds of rows in fp32)."""
    got, got_grads, grad_fn = _fast_grads(fast, inputs, grads)
    expected, expected_grads = _fp64_grads(formula, inputs, grads)
    fp32, fp32_grads = _fp64_grads(reference, inputs, grads, dtype=torch.float32)
    for g, e, f in zip(got + got_grads, expected + expected_grads, fp32 + fp32_grads):
        assert g.dtype == torch.float32 and g.shape == e.shape
        if e.numel():
            fp32_error = (f.double() - e).abs().max().item()
            assert (g.double() - e).abs().max().item() <= 4 * fp32_error + 2e-7 * max(1.0, e.abs().max().item())
    return grad_fn


def _swiglu_formula(x, gate_weight, up_weight):  # independent of torch.nn.functional
    gate = x @ gate_weight.T
    return gate / (1 + torch.exp(-gate)) * (x @ up_weight.T)


@pytest.mark.parametrize("shape, inner, scale", [((12, 64, 128), 344, 1.0), ((3, 5, 7), 9, 1.0), ((1, 4), 1, 1.0),
                                                  ((2, 3, 16), 33, 40.0), ((0, 8), 8, 1.0)])
def test_swiglu_matches_the_formula_in_float64(shape, inner, scale):
    """scale 40: gates in the hundreds, where the sigmoid saturates both ways (and the kernel's exp is clamped)."""
    generator = torch.Generator().manual_seed(inner)
    x = torch.randn(shape, generator=generator)
    gate_weight = torch.randn(inner, shape[-1], generator=generator) * scale / shape[-1] ** 0.5
    up_weight = torch.randn(inner, shape[-1], generator=generator) / shape[-1] ** 0.5
    grad = torch.randn(*shape[:-1], inner, generator=generator)
    grad_fn = _check(ops.swiglu, _swiglu_formula, ops.swiglu_reference, [x, gate_weight, up_weight], [grad])
    assert "SwiGLU" in type(grad_fn).__name__


def test_swiglu_takes_non_contiguous_inputs():
    x, gate_weight, up_weight = torch.randn(40, 30).t(), torch.randn(20, 80)[:, ::2], torch.randn(40, 20).t()
    assert "SwiGLU" in type(_check(ops.swiglu, _swiglu_formula, ops.swiglu_reference, [x, gate_weight, up_weight],
                                   [torch.randn(20, 30).t()])).__name__


def _rms_formula(mode):
    def norm(x, weight, residual=None):
        h = x if residual is None else x + residual
        normed = h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-5)
        y = normed * (weight if mode == "llama" else 1 + weight)
        return y if residual is None else (y, h)
    return norm


@pytest.mark.parametrize("mode", ["llama", "gemma"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", [(12, 64, 128), (5, 123), (33, 1), (7, 3, 17)])
def test_rms_norm_matches_the_formula_in_float64(mode, residual, shape):
    generator = torch.Generator().manual_seed(shape[-1] + residual)
    x = torch.randn(shape, generator=generator) * 4
    weight = torch.randn(shape[-1], generator=generator) * 0.5 + 1
    inputs = [x, weight] + ([torch.randn(shape, generator=generator)] if residual else [])
    grads = [torch.randn(shape, generator=generator) for _ in range(1 + residual)]

    def fast(x, weight, residual=None):
        return ops.rms_norm(x, weight, 1e-5, residual=residual, mode=mode)

    def reference(x, weight, residual=None):
        return ops.rms_norm_reference(x, weight, 1e-5, residual=residual, mode=mode)

    assert "RMSNorm" in type(_check(fast, _rms_formula(mode), reference, inputs, grads)).__name__


def test_rms_norm_takes_non_contiguous_inputs():
    x, weight = torch.randn(64, 40).t(), (torch.rand(64, 2) + 0.5)[:, 0]
    fast = lambda a, b: ops.rms_norm(a, b, 1e-5)  # noqa: E731
    reference = lambda a, b: ops.rms_norm_reference(a, b, 1e-5)  # noqa: E731
    assert "RMSNorm" in type(_check(fast, _rms_formula("llama"), reference, [x, weight],
                                    [torch.randn(40, 64)])).__name__


def test_the_bits_do_not_depend_on_the_thread_count():
    """Rows enough for several workers: the weight gradient is summed in fixed blocks, whatever the split."""
    generator = torch.Generator().manual_seed(0)
    x, residual = torch.randn(4099, 128, generator=generator), torch.randn(4099, 128, generator=generator)
    weight, grads = torch.rand(128, generator=generator), [torch.randn(4099, 128, generator=generator)] * 2
    gate_up = torch.randn(4099, 2 * 301, generator=generator)  # the kernel alone: matmuls' bits vary with threads
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            norm = _fast_grads(lambda a, b, c: ops.rms_norm(a, b, residual=c), [x, weight, residual], grads)
            glu = _fast_grads(cpu_kernels.SwiGLU.apply, [gate_up], [grads[0].repeat(1, 3)[:, :301]])
            results.append(norm[0] + norm[1] + glu[0] + glu[1])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_which_calls_take_the_kernels():
    x, weight = torch.randn(4, 8, requires_grad=True), torch.ones(8, requires_grad=True)
    assert "RMSNorm" in type(ops.rms_norm(x, weight).grad_fn).__name__
    gate_weight = torch.randn(5, 8, requires_grad=True)
    assert "SwiGLU" in type(ops.swiglu(x, gate_weight, gate_weight).grad_fn).__name__
    assert "RMSNorm" not in type(ops.rms_norm(x, weight, backend="torch").grad_fn).__name__  # the reference, asked for
    assert "SwiGLU" not in type(ops.swiglu(x, gate_weight, gate_weight, backend="torch").grad_fn).__name__
    low = x.detach().bfloat16().requires_grad_()  # other dtypes: the reference, which computes in fp32
    assert "RMSNorm" not in type(ops.rms_norm(low, weight.bfloat16()).grad_fn).__name__
    low_weight = gate_weight.detach().bfloat16()
    assert "SwiGLU" not in type(ops.swiglu(low, low_weight, low_weight).grad_fn).__name__


def test_compiled_callers_trace_the_reference():
    """Under torch.compile the ops take the reference (the compiler fuses it), so fullgraph tracing works."""
    def block(x, weight, gate_weight, up_weight):
        q = x.view(1, 4, 2, 4)
        rotated = ops.apply_rope(q, q)[0].sum()
        return ops.rms_norm(x, weight, residual=x)[0].sum() + ops.swiglu(x, gate_weight, up_weight).sum() + rotated

    args = [torch.randn(4, 8), torch.ones(8), torch.randn(6, 8), torch.randn(6, 8)]
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), block(*args))


def test_swiglu_refuses_mismatched_inputs():
    with pytest.raises(PytrainError, match="must be \\[inner, hidden\\] alike"):
        ops.swiglu(torch.randn(2, 3), torch.randn(4, 3), torch.randn(3, 4))


def test_a_double_backward_is_refused_not_wrong():
    """The backwards are written through data pointers: differentiating them again must fail loudly."""
    x, weight = torch.randn(4, 8, requires_grad=True), torch.rand(8, requires_grad=True)
    y = ops.rms_norm(x, weight)
    (gx,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        gx.pow(2).sum().backward()


def test_a_second_swiglu_backward_is_refused_not_wrong():
    """The backward writes its gradient over the saved projections' output: running it twice must fail loudly."""
    x, gate_weight = torch.randn(4, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    out = ops.swiglu(x, gate_weight, gate_weight).sum()
    out.backward(retain_graph=True)
    with pytest.raises(PytrainError, match="runs its backward once"):
        out.backward()


def test_the_kernels_refuse_what_they_would_misread():
    """Called directly (not through pytrain.ops, which checks first), a kernel refuses a tensor of another dtype."""
    with pytest.raises(PytrainError, match="take torch.float32 CPU tensors"):
        cpu_kernels.SwiGLU.apply(torch.randn(4, 8, dtype=torch.bfloat16))
    with pytest.raises(PytrainError, match="take torch.float32 CPU tensors"):
        cpu_kernels.RMSNorm.apply(torch.randn(4, 8, dtype=torch.float64), torch.ones(8), None, 1e-5, "llama")


def test_autocast_takes_the_reference():
    x, gate_weight = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.swiglu(x, gate_weight, gate_weight)
        expected = ops.swiglu_reference(x, gate_weight, gate_weight)
    assert "SwiGLU" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, expected)
