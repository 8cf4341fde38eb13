"""apply_rope's fused CPU kernel (fp32; the backward is the rotation by the negated angles): its outputs and
both gradients are bit for bit those of the reference run through autograd, with and without packed
positions, with fewer KV heads than query heads; the reference itself is checked against complex
multiplication in test_ops_reference.py."""

from __future__ import annotations

import pytest
import torch

from pytrain.errors import PytrainError
from pytrain.ops import apply_rope, apply_rope_reference


def _rotated_and_grads(fn, q, k, grads, **kwargs):
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    outputs = fn(q, k, **kwargs)
    torch.autograd.backward(outputs, grads)
    return [*(o.detach() for o in outputs), q.grad, k.grad], outputs[0].grad_fn


@pytest.mark.parametrize("packed", [False, True])
def test_the_cpu_kernel_is_the_reference_bit_for_bit(packed):
    dtype = torch.float32
    generator = torch.Generator().manual_seed(int(packed))
    q = torch.randn(3, 11, 4, 18, generator=generator, dtype=dtype)
    k = torch.randn(3, 11, 2, 18, generator=generator, dtype=dtype)
    grads = [torch.randn(q.shape, generator=generator, dtype=dtype), torch.randn(k.shape, generator=generator,
                                                                                 dtype=dtype)]
    positions = torch.randint(0, 40, (3, 11), generator=generator) if packed else None
    fast, grad_fn = _rotated_and_grads(apply_rope, q, k, grads, position_ids=positions, max_position=40, theta=500.0)
    reference, _ = _rotated_and_grads(apply_rope_reference, q, k, grads, position_ids=positions, max_position=40,
                                      theta=500.0)
    assert "Rope" in type(grad_fn).__name__  # the kernel ran
    for got, expected in zip(fast, reference):
        assert torch.equal(got, expected)


def test_positions_must_be_integers():
    """A bool mask as positions would index the tables as a mask (a short table the kernel would overrun)."""
    q = torch.randn(4, 4, 2, 8)
    with pytest.raises(PytrainError, match="must hold integers"):
        apply_rope(q, q, torch.tensor([[True, False, False, False]] * 4))


def test_the_kernel_refuses_tables_of_another_shape():
    """Its last line of defence: tables the native loop would overrun are refused before it runs."""
    from pytrain.ops import cpu_kernels

    q, short = torch.randn(2, 4, 2, 8), torch.ones(3)
    with pytest.raises(PytrainError, match="RoPE tables of shape"):
        cpu_kernels.Rope.apply(q, q, short, short)
