"""The qwen3 family (Qwen3 dense models): Llama's architecture with per-head q/k RMSNorm and a free head_dim.

    model.py  Qwen3
    hf.py     Qwen3Config <-> ModelConfig (use_sliding_window must be false, as in the Qwen3 releases)
"""

from pytrain.model.families.family import TINY_SHAPE, Family, llama_like_vector_params

FAMILY = Family(
    name="qwen3", model="pytrain.model.families.qwen3.model:Qwen3", adapter="pytrain.model.families.qwen3.hf",
    hidden_acts=("silu",),
    # head_dim 32 with hidden 64 / 4 heads: the q/o projections are wider than hidden, as in Qwen3-0.6B
    presets={"tiny-qwen3": dict(TINY_SHAPE, head_dim=32, rms_norm_eps=1e-6, rope_theta=1000000.0)},
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=c.attention_bias, out_bias=c.attention_bias,
                                                     qk_norm="head"),
)
