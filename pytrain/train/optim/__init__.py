"""Optimizers behind one seam: `optim.name` picks a builder; the training step sees a torch.optim.Optimizer.

    adamw   torch.optim.AdamW, weight decay on the matmul weights only             (optim/adamw.py)
    muon    Muon on the blocks' weight matrices, AdamW on embeddings, head, norms,  (optim/muon.py)
            biases; distributed under FSDP2 (optim/sharded.py), Newton-Schulz in optim/newton_schulz.py

A builder takes (model, OptimSection, device) and returns one optimizer whose groups all follow
`optim.lr` (the training step sets every group's "lr" from the schedule each step) and whose state DCP
checkpoints (DTensor-sharded like the parameters, so it reshards on resume). Another optimizer is a
module with such a `build` plus its name here and in pytrain.config's choices; the loop, the training
step and the checkpoints do not change.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pytrain.config import OptimSection
from pytrain.model.materialize import canonical_name
from pytrain.train.optim import adamw, muon

BUILDERS = {"adamw": adamw.build, "muon": muon.build}

# What each algorithm's groups report at start-up: the group keys that set its update (another
# optimizer's groups report every setting they hold).
_SETTINGS = {"adamw": ("weight_decay", "betas", "eps", "fused"),
             "muon": ("weight_decay", "momentum", "nesterov", "ns_steps", "ns_coefficients")}
_NOT_SETTINGS = ("params", "lr", "initial_lr", "algorithm")


def build_optimizer(model: nn.Module, optim: OptimSection, device: torch.device) -> torch.optim.Optimizer:
    return BUILDERS[optim.name](model, optim, device)


def describe_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """One line per parameter group for the start-up log: algorithm, size, parameters, settings."""
    names = {id(p): canonical_name(n) for n, p in model.named_parameters()}
    lines = []
    for group in optimizer.param_groups:
        algorithm = group.get("algorithm", type(optimizer).__name__.lower())
        params = group["params"]
        keys = _SETTINGS.get(algorithm) or [key for key in group if key not in _NOT_SETTINGS]
        settings = ", ".join(f"{key} {_show(group[key])}" for key in keys if key in group)
        if algorithm == "muon":
            settings += (f", Newton-Schulz in {str(getattr(optimizer, 'ns_dtype', '')).replace('torch.', '')}, "
                         f"lr x {muon.MATCH_ADAMW_RMS} sqrt(max(out, in))")
        count = sum(p.numel() for p in params)
        lines.append(f"optimizer group {algorithm}: {len(params)} tensors, {count / 1e6:.2f}M parameters "
                     f"({_summarize(names.get(id(p), '?') for p in params)}); {settings}")
    return lines


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _summarize(names, shown: int = 6) -> str:
    """Parameter names with the block index written as *, each once, the first `shown` of them."""
    unique = list(dict.fromkeys(re.sub(r"(^|\.)layers\.\d+\.", r"\1layers.*.", name) for name in names))
    more = f", and {len(unique) - shown} more" if len(unique) > shown else ""
    return ", ".join(unique[:shown]) + more
