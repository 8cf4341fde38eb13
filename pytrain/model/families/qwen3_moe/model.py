"""Qwen3-MoE: Qwen3's decoder with a mixture of experts (no shared expert) as every layer's MLP."""

from __future__ import annotations

from pytrain.model.families.qwen3.model import Qwen3
from pytrain.model.moe import MoE


class Qwen3Moe(Qwen3):
    @staticmethod
    def make_mlp(config):
        return MoE(config)
