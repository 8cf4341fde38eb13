"""AdamW with weight decay only on the matmul weights (not on norms, biases or embeddings)."""

from __future__ import annotations

import operator
from typing import Iterable

import torch
from torch import nn

from pytrain.config import OptimSection
from pytrain.model.materialize import canonical_name


def decays(name: str, param: nn.Parameter) -> bool:
    # Norm weights and biases are 1-D; the embedding (also the LM head when tied) is a lookup table.
    return param.dim() >= 2 and canonical_name(name) != "embed_tokens.weight"


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """[decayed, not decayed] parameter groups of `named` (an empty group is left out)."""
    decay, no_decay = [], []
    for name, param in named:
        (decay if decays(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW whose fused step on one process's plain tensors makes its fused kernel call itself.

    torch's step collects, checks and groups every parameter of every group in Python on each call: about 500
    Python calls a step for the 38 tensors of benchmarks/bench_train.py --vs-minimal's model, a third of
    the kernel's own time on that CPU step. Here each group's parameters and state dicts are kept between steps
    (checked, by identity, against the state) and the same kernel gets the same tensors and arguments, so
    the update, the state and state_dict are torch's bit for bit (tests/train/test_train_units.py). Anything
    else takes torch's step: a closure, a GradScaler's scale (it sets grad_scale and found_inf), DTensors
    (FSDP2), a parameter without a gradient or a state yet, tensors of several devices or dtypes, a tensor lr,
    other options.
    """

    _SETTINGS = {"fused": True, "amsgrad": False, "maximize": False, "capturable": False, "differentiable": False,
                 "decoupled_weight_decay": True}
    _held: list | None = None  # per group (its parameters, their state dicts), while they are the state's

    def step(self, closure=None):
        scaled = getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None
        held = None if closure is not None or scaled else self._kernel_groups()
        if held is None:
            return self._torch_step(closure)
        with torch.no_grad():
            for group, (params, states) in zip(self.param_groups, held):
                beta1, beta2 = group["betas"]
                steps = [s["step"] for s in states]
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                                    [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"],
                                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                    maximize=False, grad_scale=None, found_inf=None)
        return None

    def _torch_step(self, closure):
        """torch's step, without running the step hooks a second time: once any torch.optim.AdamW exists,
        torch.optim.AdamW.step is wrapped by the same hook runner that already wraps this class's step."""
        step = torch.optim.AdamW.step
        return (step.__wrapped__ if getattr(step, "hooked", False) else step)(self, closure)

    def _kernel_groups(self) -> list[tuple] | None:
        """Per group (its parameters, their state dicts) for the kernel, or None when this step is torch's.
        Looked up again unless each group still has its options and the state still holds those dicts (a
        load_state_dict replaces them); the moments are read from the dicts at every step."""
        if not (self._held is not None and self._still_held(self._held)):
            self._held = self._hold()
        if self._held is None or not self._ready(self._held):
            return None
        return self._held

    def _kernel_options(self, group: dict) -> bool:
        return all(group.get(name, value) == value for name, value in self._SETTINGS.items())

    def _still_held(self, held: list[tuple]) -> bool:
        return len(held) == len(self.param_groups) and all(
            self._kernel_options(group) and all(map(operator.is_, map(self.state.get, params), states))
            for group, (params, states) in zip(self.param_groups, held))

    def _ready(self, held: list[tuple]) -> bool:
        """Whether this step's gradients and learning rates are the kernel's to take."""
        return all(not isinstance(group["lr"], torch.Tensor) and all(p.grad is not None for p in params)
                   for group, (params, _) in zip(self.param_groups, held))

    def _hold(self) -> list[tuple] | None:
        held, kinds = [], set()
        for group in self.param_groups:
            if not self._kernel_options(group):
                return None
            params = group["params"]
            states = [self.state.get(p) for p in params]
            if not all(type(p) in (torch.Tensor, nn.Parameter) and not p.is_complex() and state is not None
                       and "exp_avg" in state and torch.is_tensor(state.get("step"))
                       for p, state in zip(params, states)):
                return None
            kinds |= {(p.device, p.dtype) for p in params}
            held.append((params, states))
        return held if len(kinds) == 1 else None


def adamw(named: Iterable[tuple[str, nn.Parameter]], optim: OptimSection, device: torch.device) -> torch.optim.AdamW:
    """pytrain's AdamW (torch.optim.AdamW's update) over `named` with the config's settings (fused unless optim.fused
    says)."""
    # One fused kernel per step on CUDA and on the CPU (CPU: 1.0 ms instead of 4.6 ms per step for a 0.86M model;
    # its rounding differs from the per-parameter loop's in the last bit)
    fused = device.type in ("cuda", "cpu") if optim.fused is None else optim.fused
    return AdamW(param_groups(named, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                 fused=fused)


def build(model: nn.Module, optim: OptimSection, device: torch.device) -> torch.optim.AdamW:
    return adamw(((n, p) for n, p in model.named_parameters() if p.requires_grad), optim, device)
