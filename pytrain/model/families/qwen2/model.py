"""Qwen2 / Qwen2.5: Llama's architecture with biases on the q, k and v projections (not on o)."""

from __future__ import annotations

from pytrain.model.layers import Attention, Decoder


class Qwen2(Decoder):
    def make_attention(self, config, layer_index):
        return Attention(config, layer_index, qkv_bias=True, out_bias=False)
