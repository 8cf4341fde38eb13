"""The mixture-of-experts feed-forward layer, in plain PyTorch (qwen2_moe, qwen3_moe, mixtral, olmoe).

    MoE:     x -> Router (top-k experts per token) -> tokens sorted by expert -> GroupedExperts -> weighted
             sum of each token's k expert outputs (+ an optional shared expert, scaled by a sigmoid gate)
    Router:  logits = x @ weight.T; probabilities = softmax(logits) in fp32; the k most probable experts
             (with `expert_bias` added for the choice only, when aux-loss-free balancing is on); weights =
             their probabilities, renormalised to sum to 1 when `norm_topk_prob` (Mixtral always: its
             top-k-then-softmax is exactly this)
    GroupedExperts: SwiGLU experts as three 3-D weights, gate_proj/up_proj [E, I, H] and down_proj
             [E, H, I]: one tensor per projection, sharded on dim 0 by FSDP2 and expert parallelism, one
             matrix per expert for optimizers that treat experts apart; computed with pytrain.ops.grouped_mm

Routing is dropless by default: every token reaches its k experts. With a capacity factor c, an expert
takes at most ceil(c * tokens * k / experts) tokens per training forward, earlier tokens first; the
assignments past that are dropped (the token keeps its other experts and the residual) and counted. In
eval mode (evaluation, generation) the layer is dropless, as the exported model in transformers is. Tokens are
sorted by expert with one stable argsort (dropped ones last), and put back with its inverse: no loop
over experts anywhere in the layer.

Each forward leaves its routing statistics in `MoE.routing` (a `Routing`: per-expert token counts,
the summed probabilities and squared log-partition functions, dropped assignments), which the trainer
reads after the forward for the auxiliary losses and the logged expert load (`router_losses`,
pytrain.train.moe), and clears after the backward. Expert parallelism (pytrain.train.expert_parallel)
is applied from outside, as hooks on `GroupedExperts` that move the sorted tokens to the ranks holding
their experts and back; under it the expert weights are DTensors sharded over experts, and the
experts compute with this rank's shard.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pytrain import ops
from pytrain.model.config import ModelConfig


class Routing(NamedTuple):
    """One MoE layer's routing in one forward (fp32 device tensors)."""
    counts: torch.Tensor        # [E] tokens the router sent to each expert (before any capacity drop), no grad
    prob_sums: torch.Tensor     # [E] router probabilities summed over tokens (differentiable)
    z_sum: torch.Tensor         # [] sum over tokens of logsumexp(logits)^2 (differentiable with a z-loss)
    tokens: int                 # tokens routed
    dropped: torch.Tensor | None  # [] assignments dropped by the capacity, or None when dropless


def _local(weight: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an expert weight that expert parallelism made a DTensor (the only tensors with
    `to_local`), else the weight itself."""
    return weight.to_local() if hasattr(weight, "to_local") else weight


class Router(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k, self.norm_topk_prob = config.num_experts_per_tok, bool(config.norm_topk_prob)
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        if config.router_bias_update_rate:
            # aux-loss-free balancing: changed by the trainer from the load, never by the gradient
            self.register_buffer("expert_bias", torch.zeros(config.num_experts), persistent=True)
        else:
            self.expert_bias = None

    def forward(self, x):
        """x [tokens, hidden] -> (logits [tokens, E], probabilities fp32 [tokens, E], weights fp32 [tokens, k],
        experts int64 [tokens, k])."""
        logits = F.linear(x, self.weight)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        choice = probs if self.expert_bias is None else probs + self.expert_bias
        experts = torch.topk(choice, self.top_k, dim=-1).indices
        weights = probs.gather(-1, experts)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, weights, experts


class GroupedExperts(nn.Module):
    """E SwiGLU experts run on tokens sorted by expert: x [rows, hidden] and the rows per expert [E] ->
    [rows, hidden] (rows past the counted ones come back zero)."""

    def __init__(self, num_experts: int, hidden: int, inner: int):
        super().__init__()
        self.num_experts = num_experts
        self.gate_proj = nn.Parameter(torch.empty(num_experts, inner, hidden))
        self.up_proj = nn.Parameter(torch.empty(num_experts, inner, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, inner))

    def forward(self, x, counts):
        ends = counts.cumsum(0)
        gate = ops.grouped_mm(x, _local(self.gate_proj), ends)
        up = ops.grouped_mm(x, _local(self.up_proj), ends)
        return ops.grouped_mm(F.silu(gate) * up, _local(self.down_proj), ends)


class MoE(nn.Module):
    """Router + grouped experts (+ shared expert with a sigmoid gate when `shared_expert_intermediate_size`)."""

    def __init__(self, config: ModelConfig, shared_mlp: nn.Module | None = None):
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.capacity_factor = config.moe_capacity_factor
        self.z_loss = bool(config.router_z_loss_coef)
        self.gate = Router(config)
        self.experts = GroupedExperts(config.num_experts, config.hidden_size, config.expert_intermediate_size)
        if shared_mlp is not None:
            self.shared_expert = shared_mlp
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)
        else:
            self.shared_expert = None
        self.routing: Routing | None = None

    def capacity(self, tokens: int) -> int | None:
        """Assignments one expert takes per training forward of `tokens` tokens (None: dropless, as every
        forward in eval mode is: evaluation, generation and the exported model see all experts)."""
        if self.capacity_factor is None or not self.training:
            return None
        return math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, probs, weights, experts = self.gate(x)
        flat = experts.flatten()  # assignment a = token * k + slot
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat))  # (bincount would read the largest id on the host)
        order, kept = expert_order(flat, counts, self.capacity(x.shape[0]))
        dropped = None if kept is counts else (flat.shape[0] - kept.sum()).float()
        rows = self.experts(x[order // self.top_k], kept)
        rows = (rows.float() * weights.flatten()[order, None]).to(rows.dtype)  # weighted in fp32, as torchtitan
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0], device=order.device)
        out = rows[inverse].view(x.shape[0], self.top_k, -1).sum(dim=1)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.z_loss):  # its graph would hold the logits
            z_sum = torch.logsumexp(logits.float(), dim=-1).square().sum()
        self.routing = Routing(counts.detach().float(), probs.sum(dim=0), z_sum, x.shape[0], dropped)
        return out.view(shape)


def expert_order(flat: torch.Tensor, counts: torch.Tensor, capacity: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the assignments `flat` (expert ids) sorted by expert, then token; the rows each expert takes). With
    a `capacity`, an expert's assignments past it (its latest tokens) are moved last and not counted."""
    order = torch.argsort(flat, stable=True)
    if capacity is None:
        return order, counts
    starts = counts.cumsum(0) - counts
    place = torch.arange(flat.shape[0], device=flat.device) - starts[flat[order]]  # within its expert
    return order[torch.argsort(place >= capacity, stable=True)], counts.clamp(max=capacity)


# ----------------------------------------------------------------------------- what the trainer reads
def moe_layers(model: nn.Module) -> list[MoE]:
    return [module for module in model.modules() if isinstance(module, MoE)]


class RouterLosses(NamedTuple):
    aux_loss: torch.Tensor        # [] transformers' load_balancing_loss_func over all layers (differentiable)
    z_loss: torch.Tensor          # [] mean over layers and tokens of logsumexp(logits)^2 (differentiable)
    counts: torch.Tensor          # [layers, E] tokens per expert, no grad
    dropped: torch.Tensor | None  # [] dropped assignments over all layers, or None when dropless


def router_losses(layers: list[MoE]) -> RouterLosses | None:
    """The routing of the last forward of `layers` (the model's MoE layers, in order), as losses and loads.

    aux_loss is transformers' `load_balancing_loss_func` on the same forward: with f_e the fraction of
    all (layer, token, slot) assignments that chose expert e and P_e the mean router probability of e
    over all (layer, token) pairs, E * sum_e f_e * P_e (k, the experts per token, when perfectly balanced).
    """
    routings = [layer.routing for layer in layers]
    if not routings or any(r is None for r in routings):
        return None
    num_experts = routings[0].counts.shape[0]
    rows = sum(r.tokens for r in routings)
    counts = torch.stack([r.counts for r in routings])
    fraction = counts.sum(0) / rows
    mean_prob = torch.stack([r.prob_sums for r in routings]).sum(0) / rows
    aux = num_experts * (fraction * mean_prob).sum()
    z_loss = torch.stack([r.z_sum for r in routings]).sum() / rows
    dropped = [r.dropped for r in routings if r.dropped is not None]
    return RouterLosses(aux, z_loss, counts, torch.stack(dropped).sum() if dropped else None)


def clear_routing(layers: list[MoE]) -> None:
    """Forget the last forward's routing (the trainer calls this after the backward, so that nothing of a
    micro-batch's graph outlives it; activation checkpointing's recomputation writes it again)."""
    for layer in layers:
        layer.routing = None
