"""GPT-NeoX / Pythia: LayerNorm (with bias) pre-norm blocks, parallel residual (or sequential when
`use_parallel_residual` is false), fused q/k/v projection, RoPE over the first `rotary_pct` of each
head, GELU MLP with biases, attention biases when `attention_bias`, an untied LM head by default."""

from __future__ import annotations

from pytrain.model.layers import Attention, Decoder, GeluMLP, LayerNorm


class GPTNeoX(Decoder):
    def make_attention(self, config, layer_index):
        return Attention(config, layer_index, qkv_bias=config.attention_bias, out_bias=config.attention_bias,
                         fused_qkv=True)

    @staticmethod
    def make_mlp(config):
        return GeluMLP(config)

    @staticmethod
    def make_norm(config, dim):
        return LayerNorm(dim, config.layer_norm_eps)
