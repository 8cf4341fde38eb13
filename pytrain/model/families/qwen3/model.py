"""Qwen3: Llama's architecture with an RMSNorm over each head of q and k (before RoPE), a head_dim
that need not be hidden_size / heads, and q/k/v/o biases only when `attention_bias`."""

from __future__ import annotations

from pytrain.model.layers import Attention, Decoder


class Qwen3(Decoder):
    def make_attention(self, config, layer_index):
        return Attention(config, layer_index, qkv_bias=config.attention_bias, out_bias=config.attention_bias,
                         qk_norm="head")
