"""AdamW with weight decay only on the matmul weights (not on norms, biases or embeddings)."""

from __future__ import annotations

import torch
from torch import nn

from pytrain.config import OptimSection
from pytrain.model.materialize import canonical_name


def _decays(name: str, param: nn.Parameter) -> bool:
    # Norm weights and biases are 1-D; the embedding (also the LM head when tied) is a lookup table.
    return param.dim() >= 2 and canonical_name(name) != "embed_tokens.weight"


def build_optimizer(model: nn.Module, optim: OptimSection, device: torch.device) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if _decays(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel per step on CUDA and on the CPU (CPU: 1.0 ms instead of 4.6 ms per step for a 0.86M model;
    # its rounding differs from the per-parameter loop's in the last bit)
    fused = device.type in ("cuda", "cpu") if optim.fused is None else optim.fused
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused)
