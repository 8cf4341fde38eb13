"""The MoE layer's routing options against a plain per-token, per-expert loop written here: dropless routing,
a capacity factor (the latest assignments of an over-full expert dropped, and counted, in training mode
only), the aux-loss-free
expert bias (it steers the choice, not the weights), the z-loss; and no host sync on the kernel path.
(The families' routers and aux loss against transformers: test_families.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _kernel_checks import TRITON_OK, host_syncs_forbidden
from pytrain.model import preset
from pytrain.model.moe import MoE, moe_layers, router_losses


def layer(seed=0, **overrides) -> MoE:
    config = preset("tiny-qwen3_moe", **overrides)
    moe = MoE(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in moe.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return moe


def expert(moe: MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    w = moe.experts
    return F.linear(F.silu(F.linear(x, w.gate_proj[e])) * F.linear(x, w.up_proj[e]), w.down_proj[e])


def plain_moe(moe: MoE, x: torch.Tensor, capacity: int | None = None, bias=None):
    """Token by token, slot by slot: route, skip an assignment once its expert is full, sum the weighted
    expert outputs. Returns (output, dropped assignments)."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(tokens @ moe.gate.weight.T, dim=-1)
    taken = [0] * moe.num_experts
    out, dropped = torch.zeros_like(tokens), 0
    for t in range(tokens.shape[0]):
        scores = probs[t] if bias is None else probs[t] + bias
        chosen = torch.topk(scores, moe.top_k).indices.tolist()
        weights = probs[t, chosen]
        if moe.gate.norm_topk_prob:
            weights = weights / weights.sum()
        for slot, e in enumerate(chosen):
            if capacity is not None and taken[e] >= capacity:
                dropped += 1
                continue
            taken[e] += 1
            out[t] += weights[slot] * expert(moe, e, tokens[t])
    return out.view_as(x), dropped


def inputs(seed=1, batch=2, seq=24):
    return torch.randn(batch, seq, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_dropless_layer_is_the_plain_loop(norm_topk_prob):
    moe = layer(norm_topk_prob=norm_topk_prob)
    x = inputs()
    expected, _ = plain_moe(moe, x)
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)
    assert moe.routing.dropped is None and moe.routing.counts.sum() == 2 * 24 * 2


def test_capacity_drops_the_latest_assignments_of_a_full_expert():
    moe = layer(moe_capacity_factor=0.5)
    x = inputs(seed=2)
    capacity = math.ceil(0.5 * 48 * 2 / 8)
    assert moe.capacity(48) == capacity == 6
    expected, dropped = plain_moe(moe, x, capacity=capacity)
    assert dropped > 0  # the test shape makes experts overflow
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)
    assert moe.routing.dropped.item() == dropped
    assert moe.routing.counts.sum() == 48 * 2  # the load counts what the router asked for, before the cap
    moe.eval()  # evaluation and generation are dropless, as the exported model is in transformers
    torch.testing.assert_close(moe(x), plain_moe(moe, x)[0], atol=1e-5, rtol=1e-5)
    assert moe.routing.dropped is None


def test_expert_bias_steers_the_choice_and_not_the_weights():
    moe = layer(router_bias_update_rate=1e-3)
    bias = torch.zeros(8)
    bias[5] = 10.0  # every token's top-2 now holds expert 5, weighted by its own probability
    moe.gate.expert_bias.copy_(bias)
    x = inputs(seed=3)
    expected, _ = plain_moe(moe, x, bias=bias)
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)
    assert moe.routing.counts[5] == 48


def test_router_z_loss_is_the_mean_squared_log_partition():
    model_config = preset("tiny-qwen3_moe")
    moes = [layer(seed=s) for s in (4, 5)]
    xs = [inputs(seed=s) for s in (6, 7)]
    for moe, x in zip(moes, xs):
        moe(x)
    expected = torch.stack([torch.logsumexp(x.reshape(-1, 64) @ m.gate.weight.T, -1).square()
                            for m, x in zip(moes, xs)])
    losses = router_losses(moes)
    torch.testing.assert_close(losses.z_loss, expected.mean())
    assert losses.counts.shape == (2, model_config.num_experts)
    assert moe_layers(torch.nn.Sequential(*moes)) == moes


@pytest.mark.skipif(not TRITON_OK, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 (CI sets it)")
def test_layer_has_no_host_sync_on_the_kernel_path(monkeypatch):
    """Routing, sorting, capacity and combining keep counts and offsets on the device: the layer adds no
    host sync to a training step (the trainer's one per step stays the only one)."""
    from pytrain import ops

    moe = layer(moe_capacity_factor=1.0)
    x = inputs(seed=8).requires_grad_()
    previous = ops.get_backend()
    ops.set_backend("triton")
    try:
        with host_syncs_forbidden(monkeypatch):
            moe(x).sum().backward()
    finally:
        ops.set_backend(previous)
    assert x.grad is not None and moe.experts.down_proj.grad is not None
