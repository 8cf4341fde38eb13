"""OLMoE: Llama's decoder with RMSNorm over the whole q and k projections before RoPE, q/k/v/o biases when
`attention_bias`, and a mixture of experts as every layer's MLP."""

from __future__ import annotations

from pytrain.model.layers import Attention, Decoder
from pytrain.model.moe import MoE


class Olmoe(Decoder):
    def make_attention(self, config, layer_index):
        return Attention(config, layer_index, qkv_bias=config.attention_bias, out_bias=config.attention_bias,
                         qk_norm="width")

    @staticmethod
    def make_mlp(config):
        return MoE(config)
