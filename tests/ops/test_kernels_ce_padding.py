"""Fused cross-entropy with an odd vocabulary: the padded logits buffer, and out-of-vocabulary labels."""

import math

import pytest
import torch

import pytrain.kernels.linear_cross_entropy as kmod
from _kernel_checks import DEVICE, assert_close, leaf64, poisoned, requires_triton
from pytrain.ops import linear_cross_entropy_reference


@pytest.mark.parametrize("vocab", [50257, 32000, 7])
def test_logits_buffer_rows_are_aligned(vocab):
    buffer = kmod._logits_buffer(3, vocab, torch.bfloat16, "cpu")
    assert buffer.shape == (3, vocab) and buffer.stride(1) == 1
    assert buffer.stride(0) % kmod.ROW_ALIGN == 0 and 0 <= buffer.stride(0) - vocab < kmod.ROW_ALIGN


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpt2_vocabulary_matches_float64_reference(dtype):
    """V = 50257: rows padded to 50304 columns; the padding (NaN here, as the buffer is poisoned) must
    stay out of the loss and the gradients."""
    gen = torch.Generator().manual_seed(21)
    n, h, v = 6, 16, 50257
    hidden = torch.randn(n, h, generator=gen).to(DEVICE, dtype).requires_grad_()
    weight = (0.3 * torch.randn(v, h, generator=gen)).to(DEVICE, dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[1], labels[2] = -100, v - 1
    labels = labels.to(DEVICE)
    with poisoned(kmod):
        loss, _ = kmod.linear_cross_entropy(hidden, weight, labels, label_smoothing=0.1, chunk=4)
        dh, dw = torch.autograd.grad(loss, (hidden, weight))
    h64, w64 = leaf64(hidden), leaf64(weight)
    ref = linear_cross_entropy_reference(h64, w64, labels, label_smoothing=0.1)
    ref_dh, ref_dw = torch.autograd.grad(ref, (h64, w64))
    for name, a, b in [("loss", loss, ref), ("dhidden", dh, ref_dh), ("dweight", dw, ref_dw)]:
        assert_close(a, b, dtype, name)


@requires_triton
@pytest.mark.parametrize("bad", [2003, 2003 + 20, 10**6, -5])
def test_out_of_vocabulary_label_makes_the_loss_nan(bad):
    """Not silently a zero label term: the row's loss is NaN (the trainer stops on it); others are intact."""
    gen = torch.Generator().manual_seed(22)
    hidden = torch.randn(5, 8, generator=gen).to(DEVICE)
    weight = torch.randn(2003, 8, generator=gen).to(DEVICE)
    labels = torch.tensor([1, bad, -100, 7, 2002], device=DEVICE)
    rows, _ = kmod.linear_cross_entropy(hidden, weight, labels, reduction="none")
    assert math.isnan(rows[1].item())
    good = torch.tensor([0, 3, 4])
    ref = linear_cross_entropy_reference(hidden[good].double(), weight.double(), labels[good], reduction="none")
    assert_close(rows[good], ref, torch.float32, "other rows")
    assert rows[2].item() == 0.0
