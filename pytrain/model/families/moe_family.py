"""What the mixture-of-experts families (qwen2_moe, qwen3_moe, mixtral, olmoe) share in their descriptions:
the MoE options, their defaults and checks, and the tiny shape. Torch-free, like every family description.

The MoE layer itself is pytrain.model.moe; each family's Hugging Face adapter builds on
pytrain.model.families.moe_hf.
"""

from __future__ import annotations

from typing import Callable

from pytrain.errors import PytrainError
from pytrain.model.families.family import TINY_SHAPE

# The tiny MoE shape: 8 experts of width 32, 2 per token (TINY_SHAPE's trunk); seconds on a CPU.
TINY_MOE = dict(TINY_SHAPE, num_experts=8, num_experts_per_tok=2)


def moe_defaults(*, aux_loss_coef: float, norm_topk_prob: bool) -> dict:
    """Option defaults of a MoE family: transformers' router_aux_loss_coef and norm_topk_prob for it, no
    z-loss, no aux-loss-free bias; dropless (moe_capacity_factor stays null)."""
    return {"router_aux_loss_coef": aux_loss_coef, "norm_topk_prob": norm_topk_prob, "router_z_loss_coef": 0.0,
            "router_bias_update_rate": 0.0}


def moe_check(family_name: str, *, also: Callable | None = None) -> Callable:
    """An `extra_check` for a MoE family: experts and top-k set and consistent, then the family's own `also`."""
    def check(config) -> None:
        for name in ("num_experts", "num_experts_per_tok"):
            if getattr(config, name) is None:
                raise PytrainError(f"model.{name} is required by family {family_name} (a mixture of experts)")
        if config.num_experts_per_tok > config.num_experts:
            raise PytrainError(f"model.num_experts_per_tok ({config.num_experts_per_tok}) exceeds model.num_experts "
                               f"({config.num_experts})")
        if also is not None:
            also(config)
    return check

