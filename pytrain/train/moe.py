"""What a training step adds for a mixture-of-experts model: router losses, expert load, the expert bias.

After each micro-batch's forward, the routing its MoE layers left behind (pytrain.model.moe) gives the
router losses of that forward: router_aux_loss_coef x transformers' load-balancing loss plus
router_z_loss_coef x the z-loss. A forward's router loss is divided by the number of forwards in the
step (micro-batches x ranks), so the step's gradient is that of the LM loss (the mean over the global
batch's tokens) plus the mean router loss of its forwards. Like transformers', the aux loss is a
statistic of one forward (its tokens, all layers), so a run is invariant to how micro-batches are spread
over ranks, not to the micro-batch size.

Over the step the per-expert token counts are summed on the device; before the step's one host sync
they, the router losses and the dropped assignments are summed over ranks in one all-reduce, and the
sync reads the logged values with the loss: `aux_loss` and `z_loss` (the mean over the step's forwards,
before their coefficients), `expert_load` (the largest max/mean ratio of tokens per expert over the
layers; 1 is perfectly balanced) and, with a capacity factor, `dropped_tokens` (assignments past an
expert's capacity, all layers, the whole step). With aux-loss-free balancing (router_bias_update_rate
u > 0, DeepSeek-V3), after each applied update every router's expert bias moves by u x sign(mean load -
load) of its layer: from the load, outside the gradient, identically on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pytrain.model.moe import clear_routing, moe_layers, router_losses
from pytrain.train.distributed import all_reduce_sum


class RouterTraining:
    """The router side of the training steps of one MoE model; `of(model)` is None for a dense one."""

    def __init__(self, model: nn.Module, layers: list):
        config = model.config
        self.layers = layers
        self.aux_coef, self.z_coef = config.router_aux_loss_coef, config.router_z_loss_coef
        self.bias_rate = config.router_bias_update_rate
        self.capacity = config.moe_capacity_factor is not None
        self._sums: torch.Tensor | None = None  # aux, z, dropped, then counts [layers x experts], this step
        self._forwards = 0
        self.load: torch.Tensor | None = None   # [layers, experts] the last step's global counts

    @classmethod
    def of(cls, model: nn.Module) -> RouterTraining | None:
        layers = moe_layers(model)
        return cls(model, layers) if layers else None

    def loss(self, forwards_per_step: int) -> torch.Tensor:
        """The router loss of the forward just run, divided by the step's number of forwards (add it to
        the LM loss term before its backward)."""
        losses = router_losses(self.layers)
        dropped = losses.dropped if losses.dropped is not None else losses.aux_loss.new_zeros(())
        sums = torch.cat([torch.stack([losses.aux_loss.detach(), losses.z_loss.detach(), dropped]),
                          losses.counts.flatten()])
        self._sums = sums if self._sums is None else self._sums + sums
        self._forwards += 1
        return (self.aux_coef * losses.aux_loss + self.z_coef * losses.z_loss) / forwards_per_step

    def after_backward(self) -> None:
        clear_routing(self.layers)

    def step_values(self) -> dict[str, torch.Tensor]:
        """This step's logged values as device scalars, summed over ranks (a collective, no host sync;
        every rank runs the same number of forwards)."""
        totals = all_reduce_sum(self._sums)
        forwards = self._forwards * dist.get_world_size()
        self._sums, self._forwards = None, 0
        self.load = totals[3:].view(len(self.layers), -1)
        values = {"aux_loss": totals[0] / forwards, "expert_load": (self.load.amax(-1) / self.load.mean(-1)).max()}
        if self.z_coef:
            values["z_loss"] = totals[1] / forwards
        if self.capacity:
            values["dropped_tokens"] = totals[2]
        return values

    @torch.no_grad()
    def update_bias(self) -> None:
        """Aux-loss-free balancing: move each layer's expert bias against its load of the last step."""
        if not self.bias_rate:
            return
        for layer, load in zip(self.layers, self.load):
            layer.gate.expert_bias.add_(self.bias_rate * torch.sign(load.mean() - load))
