"""One optimizer step: gradients, precision, clipping, the non-finite policy and the update.

The W ranks each run their micro-batches; each rank's summed token loss is divided by the number of
target tokens in the whole global batch and FSDP2 sums the gradients over ranks, so the gradient is
that of the global mean whatever W and the accumulation: 4 micro-batches of 2 equal one batch of 8,
on one rank or many. Gradients are reduced only after the last micro-batch.

Non-finite values: a non-finite loss stops the run before its update is applied, in every dtype. A
non-finite gradient norm stops it too under fp32/bf16; under fp16 it is an overflow of the loss
scale (pytrain.train.precision): the update is skipped, the scale halved, and the run goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from pytrain.labels import IGNORE_INDEX
from pytrain.train.batch import model_inputs
from pytrain.train.distributed import all_reduce_sum
from pytrain.train.moe import RouterTraining
from pytrain.train.precision import LossScaler


def forward_backward(model: nn.Module, batches: list[dict], *, document_masking: bool, grad_clip: float,
                     device: torch.device, loss_scale: float = 1.0,
                     router: RouterTraining | None = None, shared: torch.Tensor | None = None,
                     parameters: list[nn.Parameter] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Accumulate the gradients of `batches` (this rank's micro-batches) and clip them.

    The backward runs on the loss times `loss_scale` (fp16; a power of two, so exact) and the gradients
    are divided by it again before the norm. Returns (global mean loss, global gradient norm before
    clipping) as device scalars, and the global number of target tokens. The optimizer step is the
    caller's, after it has checked the two values. A mixture of experts' `router` adds each forward's
    router losses (pytrain.train.moe); the returned loss is the LM loss alone. `shared`: a host int64
    tensor of the caller's counts (e.g. a stop request), summed over ranks in place by the all-reduce the
    token count needs anyway. `parameters`: the model's, when the caller has listed them already.
    """
    # Counted on the host (a CPU collective: gloo, even beside NCCL), so the GPU queue never waits.
    local_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    counts = torch.tensor([local_tokens, *([] if shared is None else shared.tolist())], dtype=torch.int64)
    all_reduce_sum(counts)
    global_tokens = int(counts[0])
    if shared is not None:
        shared.copy_(counts[1:])
    loss_sum = torch.zeros((), device=device)
    forwards = len(batches) * dist.get_world_size()
    for i, batch in enumerate(batches):
        if isinstance(model, FSDPModule):  # one process in fp32 trains a plain model (pytrain.train.parallelize)
            model.set_requires_gradient_sync(i == len(batches) - 1)
        loss = model(**model_inputs(batch, document_masking, device), reduction="sum")
        objective = loss / global_tokens + (router.loss(forwards) if router else 0.0)
        (objective * loss_scale).backward()
        if router:
            router.after_backward()
        loss_sum += loss.detach()
    parameters = list(model.parameters()) if parameters is None else parameters
    if loss_scale != 1.0:
        _unscale(parameters, loss_scale)
    grad_norm = clip_gradients(parameters, grad_clip)
    return all_reduce_sum(loss_sum) / global_tokens, grad_norm.to(device), global_tokens


@torch.no_grad()
def _unscale(parameters: list[nn.Parameter], loss_scale: float) -> None:
    """Divide this rank's gradient shards by the loss scale (an inf or NaN stays one)."""
    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
             for p in parameters if p.grad is not None]
    torch._foreach_mul_(grads, 1.0 / loss_scale)


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """The global gradient norm of a model's `parameters` (before clipping), clipping to `max_norm` when it is > 0.

    Sharded gradients are grouped by device mesh (FSDP2's, and expert parallelism's for the experts):
    torch's norm and clipping take one mesh at a time; the groups' norms are combined here. Plain gradients
    of one device and dtype (one process) take torch's arithmetic as one foreach call each, without
    torch.nn.utils' regrouping of the tensors by device and dtype on every call, which costs as much as the
    arithmetic on a small model's CPU step (tests/train/test_train_units.py holds the two equal bit for bit)."""
    groups: dict = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    grads = {mesh: [p.grad for p in params] for mesh, params in groups.items()}
    direct = {mesh: mesh is None and _one_kind(mesh_grads) for mesh, mesh_grads in grads.items()}
    norms = []
    for mesh, mesh_grads in grads.items():
        norm = _foreach_total_norm(mesh_grads) if direct[mesh] else torch.nn.utils.get_total_norm(mesh_grads)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # local norms combined over ranks
    norm = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        for mesh, params in groups.items():
            if direct[mesh]:
                _foreach_clip(grads[mesh], max_norm, norm)
            else:
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def _one_kind(grads: list[torch.Tensor]) -> bool:
    """Whether torch would treat `grads` as one group (one device and dtype), as pytrain's one process makes them."""
    return len({(g.get_device(), g.dtype) for g in grads}) == 1


def _foreach_total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """torch.nn.utils.get_total_norm of plain gradients of one kind: the 2-norm of the tensors' 2-norms."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


@torch.no_grad()
def _foreach_clip(grads: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """torch.nn.utils.clip_grads_with_norm_ of plain gradients of one kind: each times
    min(max_norm / (norm + 1e-6), 1)."""
    torch._foreach_mul_(grads, torch.clamp(float(max_norm) / (norm + 1e-6), max=1.0).to(grads[0].device))


@torch.no_grad()
def _create_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give the optimizer the state of "no step taken yet" now, as its first step would lazily.

    DCP's get_state_dict creates a missing state by stepping with zero gradients at lr 0, which counts
    one Adam step. Only a checkpoint saved before the first update meets a missing state (under fp16,
    when every step so far was skipped), but then the run's later updates would depend on whether it
    was saved. The same zero step is taken here, with the step counters reset: the weights are left
    bit for bit (lr 0, zero gradients) and the moments are zeros, as a lazy first step makes them.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    for param in params:
        param.grad = torch.zeros_like(param)
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"].zero_()
        elif "step" in state:
            state["step"] = 0


class NonFinite(Exception):
    """A step's loss (or, outside fp16, gradient norm) is not finite: the run stops, the update not applied."""

    def __init__(self, what: str, value: float):
        super().__init__(f"non-finite {what} ({value})")
        self.what, self.value = what, value


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float     # before clipping; inf or nan on a skipped step
    tokens: int          # target tokens of the global batch
    skipped: bool        # fp16 only: the gradients overflowed, no update was applied
    router: dict = field(default_factory=dict)  # mixture of experts: aux_loss, expert_load, ... (pytrain.train.moe)


class TrainStep:
    """Owns everything between a step's batches and its update: the learning rate, the loss scale (fp16),
    accumulation, clipping, the non-finite policy and the optimizer step. One host sync per step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, dtype: str, grad_clip: float,
                 document_masking: bool, device: torch.device, loss_scale_init: float = 2.0**16,
                 loss_scale_growth_interval: int = 2000):
        self.model, self.optimizer = model, optimizer
        self.grad_clip, self.document_masking, self.device = grad_clip, document_masking, device
        self.scaler = LossScaler(loss_scale_init, loss_scale_growth_interval) if dtype == "fp16" else None
        self.router = RouterTraining.of(model)
        self.parameters = list(model.parameters())  # fixed from here on (listing them walks every module)
        _create_optimizer_state(optimizer)

    def __call__(self, batches: list[dict], lr: float, shared: torch.Tensor | None = None) -> StepResult:
        """One step; `shared` as in forward_backward (summed over ranks before the forward)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm, tokens = forward_backward(self.model, batches, grad_clip=self.grad_clip,
                                                   document_masking=self.document_masking, device=self.device,
                                                   loss_scale=self.scaler.scale if self.scaler else 1.0,
                                                   router=self.router, shared=shared, parameters=self.parameters)
        router = self.router.step_values() if self.router else {}
        values = torch.stack([loss, grad_norm, *router.values()]).tolist()  # the step's one host sync
        loss_value, norm_value, router_values = values[0], values[1], values[2:]
        if not math.isfinite(loss_value):
            raise NonFinite("loss", loss_value)
        finite = math.isfinite(norm_value)
        if self.scaler is not None:
            self.scaler.update(finite)
        elif not finite:
            raise NonFinite("gradient norm", norm_value)
        if finite:
            self.optimizer.step()
            if self.router:
                self.router.update_bias()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, norm_value, tokens, skipped=not finite, router=dict(zip(router, router_values)))

    # ------------------------------------------------------------------ checkpointed state (fp16's loss scale)
    def state_dict(self) -> dict:
        return {"loss_scale": self.scaler.state_dict()} if self.scaler else {}

    def load_state_dict(self, state: dict, where: str) -> str | None:
        """Restore the loss scale from a checkpoint's train state; a note when there is none to restore."""
        if self.scaler is None:
            return None
        if "loss_scale" not in state:
            return f"the checkpoint has no fp16 loss scale (it was not trained in fp16): starting at {self.scaler.scale:g}"
        self.scaler.load_state_dict(state["loss_scale"], where)
        return None

    def metrics(self) -> dict:
        """loss_scale and skipped_steps (fp16) for the metrics row."""
        if self.scaler is None:
            return {}
        return {"loss_scale": self.scaler.scale, "skipped_steps": self.scaler.skipped_steps}
