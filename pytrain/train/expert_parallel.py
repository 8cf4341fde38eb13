"""Expert parallelism: each MoE layer's experts split over the ranks of the expert mesh, tokens moved by all-to-all.

Applied from outside the model, like FSDP2, to every `GroupedExperts` module (pytrain.model.moe):
- its three weights become DTensors sharded on dim 0 (the experts) over the expert mesh, so a rank holds
  E / ep consecutive experts (FSDP2 then shards those over the expert_shard ranks); checkpoints keep the
  global [E, ...] tensors, so DCP reloads them under another expert-parallel size or rank count;
- a forward pre-hook takes the rows the MoE layer sorted by expert and the rows per expert, exchanges the
  counts (all-to-all), sends every rank the rows of its experts (all-to-all with variable sizes, whose
  split sizes are read on the host: one sync per layer and forward, as any token all-to-all needs), and
  orders the received rows by local expert (they arrive by source rank), so the module computes its own
  experts only;
- a forward hook undoes that order, sends the outputs back (the reverse all-to-all) and appends zero rows
  for the assignments a capacity dropped (never sent), so the MoE layer gets its rows back as it sent them.
Both all-to-alls are differentiable: their backward is the reverse exchange. Routing stays on each rank
(its own tokens over all E experts), so losses equal those of the same micro-batches without expert
parallelism.
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_tensor

from pytrain.errors import PytrainError
from pytrain.model.moe import GroupedExperts

EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")


def expert_modules(model: nn.Module) -> list[GroupedExperts]:
    return [module for module in model.modules() if isinstance(module, GroupedExperts)]


def check_expert_parallel(model_config, size: int, *, compile: bool = False) -> None:
    """A one-line error unless `model_config` has experts that `size` ranks can split evenly (whether `size`
    divides the ranks is pytrain.train.mesh's check), without torch.compile."""
    if size == 1:
        return
    if compile:
        raise PytrainError(f"train.compile with train.expert_parallel={size} is not supported (the token all-to-all "
                           "has data-dependent sizes, which a fullgraph block cannot hold); drop one of them")
    if model_config.num_experts is None:
        raise PytrainError(f"train.expert_parallel={size} needs a mixture-of-experts model; family "
                           f"{model_config.family} has no experts (set it to 1)")
    if model_config.num_experts % size:
        raise PytrainError(f"train.expert_parallel={size} must divide model.num_experts ({model_config.num_experts})")


def apply_expert_parallel(model: nn.Module, mesh: DeviceMesh) -> None:
    """Shard every MoE layer's experts over `mesh` (1-D) and route tokens to them (the module docstring);
    `check_expert_parallel` first."""
    for module in expert_modules(model):
        for name in EXPERT_WEIGHTS:
            weight = getattr(module, name)
            setattr(module, name, nn.Parameter(distribute_tensor(weight, mesh, [Shard(0)], src_data_rank=None)))
        exchange = TokenExchange(mesh)
        module.register_forward_pre_hook(exchange.dispatch)
        module.register_forward_hook(exchange.combine)


def describe(model: nn.Module) -> str | None:
    """How the model's experts are actually placed (from the expert weights' device mesh), for train.log."""
    modules = expert_modules(model)
    weight = modules[0].gate_proj if modules else None
    names = getattr(getattr(weight, "device_mesh", None), "mesh_dim_names", None) or ()
    if "expert" not in names:
        return None
    ranks = weight.device_mesh["expert"].size()
    return (f"expert parallel: each layer's {modules[0].num_experts} experts split over {ranks} ranks "
            f"({modules[0].num_experts // ranks} each), tokens exchanged by all-to-all")


class TokenExchange:
    """The all-to-all dispatch and combine around one experts module (what one forward's dispatch leaves
    for its combine is kept here; activation checkpointing's recomputation runs both again, in order)."""

    def __init__(self, mesh: DeviceMesh):
        self.group, self.size = mesh.get_group(), mesh.size()
        self._pending: tuple | None = None

    def dispatch(self, module, args):
        rows, counts = args
        local = counts.shape[0] // self.size
        with torch.no_grad():
            # received[r, j]: rows rank r sends to this rank's local expert j
            received = funcol.wait_tensor(funcol.all_to_all_single(counts, None, None, self.group))
            received = received.view(self.size, local)
            send_splits, receive_splits = torch.stack([counts.view(self.size, local).sum(1), received.sum(1)]).tolist()
            order = expert_major_order(received, sum(receive_splits))
        sent = sum(send_splits)
        arrived = funcol.all_to_all_single_autograd(rows[:sent], receive_splits, send_splits, self.group)
        self._pending = (rows.shape[0], send_splits, receive_splits, order)
        return arrived[order], received.sum(0)

    def combine(self, module, args, output):
        total, send_splits, receive_splits, order = self._pending
        self._pending = None
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0], device=order.device)
        back = funcol.all_to_all_single_autograd(output[inverse], send_splits, receive_splits, self.group)
        dropped = total - back.shape[0]
        return torch.cat([back, back.new_zeros(dropped, back.shape[1])]) if dropped else back


def expert_major_order(received: torch.Tensor, total: int) -> torch.Tensor:
    """Rows arrive grouped by source rank, then local expert ([r, j] segments of received[r, j] rows, `total`
    rows); the indices that order them by local expert, then source rank (each expert's rows contiguous)."""
    ranks, local = received.shape
    lengths = received.flatten()
    starts = (lengths.cumsum(0) - lengths).view(ranks, local).T.flatten()  # each segment's start, expert-major
    by_expert = received.T.flatten()
    segment = torch.repeat_interleave(torch.arange(ranks * local, device=received.device), by_expert, output_size=total)
    segment_starts = by_expert.cumsum(0) - by_expert
    return starts[segment] + torch.arange(total, device=received.device) - segment_starts[segment]
