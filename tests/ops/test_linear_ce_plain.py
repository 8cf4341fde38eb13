"""The CPU fast path of linear_cross_entropy (no smoothing, z-loss or softcap, fp32): its loss and both
gradients are bit for bit those of the reference run through autograd, on odd shapes and with ignored
rows; the reference itself is checked against float64 and F.cross_entropy in test_ops_reference.py."""

from __future__ import annotations

import pytest
import torch

from pytrain.labels import IGNORE_INDEX
from pytrain.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference


def _loss_and_grads(fn, hidden, weight, labels, reduction):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(hidden, weight, labels, reduction=reduction)
    (loss * 1.7).backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("rows, vocab, width", [(768, 512, 128), (37, 1001, 33), (5, 7, 3)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_the_fast_path_is_the_reference_bit_for_bit(rows, vocab, width, reduction):
    generator = torch.Generator().manual_seed(rows)
    hidden = torch.randn(rows, width, generator=generator)
    weight = torch.randn(vocab, width, generator=generator) * 0.1
    labels = torch.randint(0, vocab, (rows,), generator=generator)
    labels[::3] = IGNORE_INDEX
    fast = _loss_and_grads(linear_cross_entropy, hidden, weight, labels, reduction)
    reference = _loss_and_grads(linear_cross_entropy_reference, hidden, weight, labels, reduction)
    for got, expected in zip(fast, reference):
        assert torch.equal(got, expected)


def test_every_label_ignored_gives_zero_and_no_gradient():
    hidden, weight = torch.randn(4, 8), torch.randn(16, 8)
    labels = torch.full((4,), IGNORE_INDEX)
    loss, dhidden, dweight = _loss_and_grads(linear_cross_entropy, hidden, weight, labels, "mean")
    assert loss.item() == 0.0 and not dhidden.any() and not dweight.any()
