"""A mixture-of-experts layer written out token by token, slot by slot: the oracle of the MoE layer's tests
(tests/model/test_moe.py) and of expert parallelism (tests/train/test_expert_parallel.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expert(moe, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert `e` of `moe` (pytrain.model.moe.MoE, its full weights) on the rows `x`: a SwiGLU."""
    w = moe.experts
    return F.linear(F.silu(F.linear(x, w.gate_proj[e])) * F.linear(x, w.up_proj[e]), w.down_proj[e])


def plain_moe(moe, x: torch.Tensor, capacity: int | None = None, bias=None):
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
