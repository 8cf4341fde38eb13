"""The qwen2 family (Qwen2, Qwen2.5): Llama's architecture with q/k/v biases (pytrain.model.layers).

    model.py  Qwen2
    hf.py     Qwen2Config <-> ModelConfig (use_sliding_window must be false, as in the Qwen2/2.5 releases)
"""

from pytrain.model.families.family import TINY_SHAPE, Family, llama_like_vector_params, refuse_attention_bias

FAMILY = Family(
    name="qwen2", model="pytrain.model.families.qwen2.model:Qwen2", adapter="pytrain.model.families.qwen2.hf",
    hidden_acts=("silu",),
    presets={"tiny-qwen2": dict(TINY_SHAPE, rms_norm_eps=1e-6, rope_theta=1000000.0)},
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=True, out_bias=False),
    extra_check=refuse_attention_bias("qwen2", "its q/k/v projections always have biases and o_proj none"),
)
