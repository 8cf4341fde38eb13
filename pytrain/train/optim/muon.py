"""Muon for the blocks' weight matrices, AdamW for everything else, as one optimizer.

    B <- mu B + (1 - mu) G                        momentum (an average of the gradients)
    U <- (1 - mu) G + mu B   (nesterov)   or B
    O <- NewtonSchulz(U)                           the update with its singular values pushed to ~1
    W <- W (1 - lr wd) - lr 0.2 sqrt(max(out, in)) O

This is `torch.optim.Muon` with `adjust_lr_fn="match_rms_adamw"` (Moonlight's rule, "Muon is Scalable
for LLM Training"): an orthogonal update of an out x in matrix has RMS 1/sqrt(max(out, in)), so the
factor 0.2 sqrt(max(out, in)) gives it the RMS of a typical AdamW update (~0.2). One learning rate,
one weight decay and one schedule then mean the same for both groups. A parameter of three or more
dimensions ([num_experts, out, in]) is a batch of matrices along its leading dimensions: each is
orthogonalised, and its learning rate scaled, on its own.

Sharded parameters (FSDP2, HSDP) are orthogonalised whole, once per shard group, by
pytrain.train.optim.sharded; the momentum buffers are DTensors sharded like the parameters, so DCP
reshards them on a resume with another rank count. HSDP's replicas hold the same gradients and make
the same update, as they do for AdamW's elementwise step: no traffic crosses the replicas.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from pytrain.config import OptimSection
from pytrain.errors import PytrainError
from pytrain.model.materialize import canonical_name
from pytrain.train.optim.adamw import adamw
from pytrain.train.optim.newton_schulz import DEFAULT_COEFFICIENTS, DEFAULT_STEPS, orthogonalizer
from pytrain.train.optim.sharded import Sharded, transform_sharded

MATCH_ADAMW_RMS = 0.2


def is_block_matrix(name: str, param: nn.Parameter) -> bool:
    """A weight of the blocks with two dimensions or more: attention and MLP projections, experts."""
    return canonical_name(name).startswith("layers.") and param.dim() >= 2


def adjusted_lr(lr: float, shape: torch.Size) -> float:
    """The learning rate of an orthogonalised update of a matrix (or batch of matrices) of `shape`."""
    return lr * MATCH_ADAMW_RMS * math.sqrt(max(shape[-2], shape[-1]))


def shard_layout(param: Tensor) -> tuple[torch.distributed.ProcessGroup | None, int | None]:
    """(process group, tensor dimension) over which `param`'s matrices are cut, or (None, None) when this
    rank holds its matrices whole: not a DTensor, sharded over one rank, or a batch of matrices sharded
    along the batch dimension (FSDP2's Shard(0) of [num_experts, out, in] deals whole experts out)."""
    if not isinstance(param, DTensor):
        return None, None
    mesh = param.device_mesh
    cuts = [(dim, placement.dim) for dim, placement in enumerate(param.placements)
            if placement.is_shard() and mesh.size(dim) > 1 and placement.dim >= param.dim() - 2]
    if len(cuts) > 1:
        raise ValueError(f"its matrices are sharded over {len(cuts)} mesh dimensions ({param.placements})")
    if not cuts:
        return None, None
    mesh_dim, tensor_dim = cuts[0]
    return mesh.get_group(mesh_dim), tensor_dim


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class Muon(torch.optim.Optimizer):
    """Muon on the parameters of its first group; a torch.optim.AdamW (built by the caller) steps the
    others. The AdamW's groups become this optimizer's later groups and both share one state, so the
    training step, the schedule (every group's "lr") and DCP's state dict see a single optimizer.

    `device` is where the Newton-Schulz iterations run (the training device, also under CPU offload), in
    `ns_dtype`: bf16 on CUDA, fp32 elsewhere.
    """

    def __init__(self, matrices: list[Tensor], others: torch.optim.AdamW | None, *, lr: float, weight_decay: float,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = DEFAULT_STEPS,
                 ns_coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
                 device: torch.device = torch.device("cpu")):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_coefficients=tuple(ns_coefficients), algorithm="muon")
        super().__init__([{"params": matrices}], defaults)
        self.compute_device = device
        self._orthogonalize, self.ns_dtype = orthogonalizer(device)
        self._adamw = others
        if others is not None:
            for group in others.param_groups:  # their own parameters, disjoint from the matrices
                group["algorithm"] = "adamw"
                self.param_groups.append(group)
        self._share_with_adamw()

    def _share_with_adamw(self) -> None:
        if self._adamw is not None:
            self._adamw.param_groups = [g for g in self.param_groups if g["algorithm"] == "adamw"]
            self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces the group dicts and the state: hand them on again
        self._share_with_adamw()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_matrices()
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def _step_matrices(self) -> None:
        matrices = [(param, group) for group in self.param_groups if group["algorithm"] == "muon"
                    for param in group["params"] if param.grad is not None]
        layouts = [shard_layout(param) for param, _ in matrices]
        exchanged_over: dict = {}  # process group (None: held whole here) -> the matrices exchanged over it
        for i, (process_group, _) in enumerate(layouts):
            exchanged_over.setdefault(process_group, []).append(i)
        results: list[Tensor | None] = [None] * len(matrices)
        for process_group, indices in exchanged_over.items():
            updates = [self._momentum_update(*matrices[i], shard_dim=layouts[i][1]) for i in indices]
            for i, result in zip(indices, transform_sharded(updates, process_group)):
                results[i] = result
        for (param, group), result in zip(matrices, results):
            local = _local(param)
            local.mul_(1 - group["lr"] * group["weight_decay"])
            local.add_(result.to(local.device), alpha=-adjusted_lr(group["lr"], param.shape))

    def _momentum_update(self, param: Tensor, group: dict, shard_dim: int | None) -> Sharded:
        """Step `param`'s momentum; return the update to orthogonalise: this rank's shard, in the iteration's
        dtype on its device."""
        state = self.state[param]
        if "momentum_buffer" not in state:  # a DTensor like the parameter, so DCP reshards it
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        grad, buf, momentum = _local(param.grad), _local(state["momentum_buffer"]), group["momentum"]
        buf.lerp_(grad, 1 - momentum)
        update = grad.lerp(buf, momentum) if group["nesterov"] else buf
        transform = functools.partial(self._orthogonalize, steps=group["ns_steps"],
                                      coefficients=tuple(group["ns_coefficients"]), dtype=self.ns_dtype)
        local = update.to(device=self.compute_device, dtype=self.ns_dtype).contiguous()
        return Sharded(local, param.shape, shard_dim, transform)


def build(model: nn.Module, optim: OptimSection, device: torch.device) -> Muon:
    matrices, others = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (matrices if is_block_matrix(name, param) else others).append((name, param))
    if not matrices:
        raise PytrainError("optim.name=muon: the model has no weight matrices in its blocks for Muon to train; "
                           "use optim.name=adamw")
    for name, param in matrices:
        try:
            shard_layout(param)
        except ValueError as error:
            raise PytrainError(f"optim.name=muon cannot orthogonalise {canonical_name(name)}: {error}; Muon supports "
                               "matrices sharded along one mesh dimension (FSDP2, HSDP)") from None
    return Muon([p for _, p in matrices], adamw(others, optim, device) if others else None, lr=optim.lr,
                weight_decay=optim.weight_decay, momentum=optim.momentum, nesterov=optim.nesterov,
                ns_steps=optim.ns_steps, ns_coefficients=tuple(optim.ns_coefficients), device=device)
