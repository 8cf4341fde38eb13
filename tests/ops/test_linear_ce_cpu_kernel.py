"""The CPU kernel of linear_cross_entropy (csrc/cpu_ops.cpp through cpu_kernels.LinearCrossEntropy; fp32, no
smoothing, z-loss or softcap): its loss and both gradients against the formula run through autograd in float64,
on odd shapes, ignored rows (any ignore_index), non-contiguous inputs and logits in the hundreds; NaN for a label
outside the vocabulary (the Triton kernel's contract) and for NaN logits (as the reference), forward and
backward; which calls take it (not under autocast, whatever the default dtype); a second backward refused."""

from __future__ import annotations

import pytest
import torch

from pytrain.errors import PytrainError
from pytrain.labels import IGNORE_INDEX
from pytrain.ops import cpu_kernels
from pytrain.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference


def _formula(hidden, weight, labels, reduction):
    """Cross-entropy written out (no torch.nn.functional, no logsumexp): log(sum(exp(z - max))) + max - z_y."""
    logits = hidden @ weight.T
    top = logits.max(dim=-1, keepdim=True).values.detach()
    valid = labels != IGNORE_INDEX
    lse = torch.log(torch.exp(logits - top).sum(-1)) + top.squeeze(-1)
    target = logits.gather(1, torch.where(valid, labels, 0)[:, None]).squeeze(1)
    rows = torch.where(valid, lse - target, 0.0)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / valid.sum().clamp(min=1)


def _loss_and_grads(fn, hidden, weight, labels, reduction, dtype=torch.float32):
    hidden, weight = (t.detach().to(dtype).requires_grad_() for t in (hidden, weight))
    loss = fn(hidden, weight, labels, reduction=reduction)
    scale = torch.linspace(0.5, 2.0, loss.numel(), dtype=dtype).reshape(loss.shape)  # a per-row gradient for "none"
    (loss * scale).sum().backward()
    return loss.detach(), hidden.grad, weight.grad, loss.grad_fn


def _through_the_kernel(grad_fn) -> bool:
    """Whether the autograd graph ending in grad_fn (the loss's) passes through the kernel's Function."""
    nodes = [grad_fn]
    while nodes:
        node = nodes.pop()
        if node is not None and "LinearCrossEntropy" in type(node).__name__:
            return True
        nodes.extend(next_node for next_node, _ in getattr(node, "next_functions", ()))
    return False


def _inputs(rows, vocab, width, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=generator) * scale
    weight = torch.randn(vocab, width, generator=generator) / width ** 0.5
    labels = torch.randint(0, vocab, (rows,), generator=generator)
    labels[::3] = IGNORE_INDEX
    return hidden, weight, labels


@pytest.mark.parametrize("rows, vocab, width, scale", [(768, 512, 128, 1.0), (37, 1001, 33, 1.0), (5, 7, 3, 1.0),
                                                       (9, 1, 4, 1.0), (64, 300, 16, 60.0), (0, 5, 3, 1.0)])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_the_kernel_matches_the_formula_in_float64(rows, vocab, width, scale, reduction):
    """scale 60: logits in the hundreds (the max must be taken out before exp; most probabilities underflow)."""
    hidden, weight, labels = _inputs(rows, vocab, width, scale, seed=rows + vocab)
    *got, grad_fn = _loss_and_grads(linear_cross_entropy, hidden, weight, labels, reduction)
    *expected, _ = _loss_and_grads(_formula, hidden, weight, labels, reduction, torch.float64)
    *fp32, _ = _loss_and_grads(linear_cross_entropy_reference, hidden, weight, labels, reduction)
    assert _through_the_kernel(grad_fn)
    for g, e, f in zip(got, expected, fp32):
        assert g.dtype == torch.float32 and g.shape == e.shape
        if e.numel():
            fp32_error = (f.double() - e).abs().max().item()
            assert (g.double() - e).abs().max().item() <= 4 * fp32_error + 2e-7 * max(1.0, e.abs().max().item())


def test_any_ignore_index_and_non_contiguous_inputs():
    hidden, weight, labels = _inputs(40, 30, 16, seed=3)
    labels[labels == IGNORE_INDEX] = 7
    hidden, labels = hidden.t().contiguous().t(), torch.stack((labels, labels), 1)[:, 0]  # strided both
    assert not hidden.is_contiguous() and not labels.is_contiguous()
    got = _loss_and_grads(lambda *a, **k: linear_cross_entropy(*a, ignore_index=7, **k), hidden, weight, labels, "sum")
    expected = _loss_and_grads(lambda *a, **k: linear_cross_entropy_reference(*a, ignore_index=7, **k), hidden, weight,
                               labels, "sum")
    assert _through_the_kernel(got[3]) and (labels == 7).any()
    for g, e in zip(got[:3], expected[:3]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_every_label_ignored_gives_zero_and_no_gradient():
    hidden, weight = torch.randn(4, 8), torch.randn(16, 8)
    labels = torch.full((4,), IGNORE_INDEX)
    loss, dhidden, dweight, _ = _loss_and_grads(linear_cross_entropy, hidden, weight, labels, "mean")
    assert loss.item() == 0.0 and not dhidden.any() and not dweight.any()


def test_a_label_outside_the_vocabulary_makes_its_row_nan_and_only_its_row():
    hidden, weight, labels = _inputs(6, 10, 4)
    labels[1], labels[4] = 10, -5
    loss, dhidden, _, _ = _loss_and_grads(linear_cross_entropy, hidden, weight, labels, "none")
    assert loss[[1, 4]].isnan().all() and not loss[[0, 2, 3, 5]].isnan().any()
    assert dhidden[[1, 4]].isnan().all() and not dhidden[[0, 2, 3, 5]].isnan().any()


@pytest.mark.parametrize("logits, label", [([0.0, float("nan"), 1.0, 2.0], 0), ([float("-inf")] * 4, 0),
                                           ([float("nan")] * 4, 0), ([1.0, float("inf"), float("nan"), 0.0], 0),
                                           ([float("-inf"), 3.0, 0.0, 0.0], 1)])
def test_nan_and_infinite_logits_give_the_references_loss_and_gradient(logits, label):
    """A NaN logit anywhere in a row makes the row's loss NaN (the vectorised max alone would skip it). The
    logits go in exactly as one hidden value 1 times a weight column of them."""
    hidden, weight, labels = torch.ones(1, 1), torch.tensor(logits)[:, None], torch.tensor([label])
    got = _loss_and_grads(linear_cross_entropy, hidden, weight, labels, "none")
    expected = _loss_and_grads(linear_cross_entropy_reference, hidden, weight, labels, "none")
    assert _through_the_kernel(got[3])
    for g, e in zip(got[:3], expected[:3]):
        torch.testing.assert_close(g, e, equal_nan=True)


def test_which_calls_take_the_kernel():
    hidden, weight, labels = _inputs(6, 10, 4)
    hidden.requires_grad_()

    def kernel(**kwargs):
        return _through_the_kernel(linear_cross_entropy(hidden, weight, labels, **kwargs).grad_fn)

    assert kernel() and kernel(reduction="sum") and kernel(reduction="none")
    assert not kernel(backend="torch")  # the reference, asked for
    assert not (kernel(label_smoothing=0.1) or kernel(z_loss=1e-4) or kernel(softcap=30.0))
    assert not _through_the_kernel(linear_cross_entropy(hidden.double(), weight.double(), labels).grad_fn)


def test_autocast_takes_the_reference():
    """Under CPU autocast the matmul would make bf16 logits, which the fp32 kernel must never read."""
    hidden, weight, labels = _inputs(16, 40, 8)
    hidden.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, labels)
        expected = linear_cross_entropy_reference(hidden, weight, labels)
    assert not _through_the_kernel(got.grad_fn)
    torch.testing.assert_close(got, expected)


def test_the_default_dtype_does_not_reach_the_kernel():
    hidden, weight, labels = _inputs(16, 40, 8)
    expected = linear_cross_entropy_reference(hidden, weight, labels, reduction="none")
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        got = linear_cross_entropy(hidden, weight, labels, reduction="none")
    finally:
        torch.set_default_dtype(default)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_a_second_backward_is_refused_not_wrong():
    """The backward writes the logits' gradient over the saved logits: running it twice must fail loudly."""
    hidden, weight, labels = _inputs(6, 10, 4)
    hidden.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(PytrainError, match="runs its backward once"):
        loss.backward()


def test_the_bits_do_not_depend_on_the_thread_count():
    logits = torch.randn(4099, 301)
    labels = torch.randint(0, 301, (4099,))
    grad = torch.rand(4099)
    threads, results = torch.get_num_threads(), []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            hidden = logits.clone().requires_grad_()  # times the identity: the matmuls are exact, any threads
            loss = cpu_kernels.LinearCrossEntropy.apply(hidden, torch.eye(301), labels, IGNORE_INDEX)
            loss.backward(grad)
            results.append((loss.detach(), hidden.grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
