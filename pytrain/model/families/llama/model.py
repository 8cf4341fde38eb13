"""Llama: pre-norm RMSNorm blocks, grouped-KV attention with RoPE, SwiGLU MLP; q/k/v/o biases when
`attention_bias` (Hugging Face's LlamaForCausalLM)."""

from __future__ import annotations

from pytrain.model.layers import Attention, Decoder


class Llama(Decoder):
    def make_attention(self, config, layer_index):
        return Attention(config, layer_index, qkv_bias=config.attention_bias, out_bias=config.attention_bias)
