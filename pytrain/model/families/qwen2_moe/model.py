"""Qwen2-MoE: Qwen2's decoder with a mixture of experts plus a sigmoid-gated shared expert as every layer's MLP."""

from __future__ import annotations

from pytrain.model.families.qwen2.model import Qwen2
from pytrain.model.layers import SwiGLU
from pytrain.model.moe import MoE


class Qwen2Moe(Qwen2):
    @staticmethod
    def make_mlp(config):
        return MoE(config, shared_mlp=SwiGLU(config, config.shared_expert_intermediate_size))
