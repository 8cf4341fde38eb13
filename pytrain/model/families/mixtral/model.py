"""Mixtral: Llama's (Mistral's) decoder with a mixture of experts as every layer's MLP."""

from __future__ import annotations

from pytrain.model.families.llama.model import Llama
from pytrain.model.moe import MoE


class Mixtral(Llama):
    @staticmethod
    def make_mlp(config):
        return MoE(config)
