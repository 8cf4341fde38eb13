"""The qwen3_moe family (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (per-head q/k RMSNorm, a free
head_dim) with a mixture of experts in every layer (softmax router, top-k, `norm_topk_prob`).

    model.py  Qwen3Moe (pytrain.model.layers + pytrain.model.moe)
    hf.py     Qwen3MoeConfig <-> ModelConfig, expert tensors (pytrain.model.families.moe_hf)
"""

from pytrain.model.families.family import MOE_OPTIONS, Family, llama_like_vector_params
from pytrain.model.families.moe_family import TINY_MOE, moe_check, moe_defaults

TINY = dict(TINY_MOE, head_dim=32, moe_intermediate_size=32, rms_norm_eps=1e-6, rope_theta=1000000.0,
            norm_topk_prob=True)

FAMILY = Family(
    name="qwen3_moe", model="pytrain.model.families.qwen3_moe.model:Qwen3Moe",
    adapter="pytrain.model.families.qwen3_moe.hf", hidden_acts=("silu",),
    options=("moe_intermediate_size", *MOE_OPTIONS),
    option_defaults={**moe_defaults(aux_loss_coef=0.001, norm_topk_prob=False),
                     "moe_intermediate_size": lambda c: c.intermediate_size},
    presets={
        "tiny-moe": TINY, "tiny-qwen3_moe": TINY,
        # Qwen3-30B-A3B's shape (3.3B of its 30.5B parameters active per token), at 4096 positions
        "30b-a3b-qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                                  num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                                  max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                  tie_word_embeddings=False, num_experts=128, num_experts_per_tok=8,
                                  moe_intermediate_size=768, norm_topk_prob=True, router_aux_loss_coef=0.001),
    },
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=c.attention_bias, out_bias=c.attention_bias,
                                                     qk_norm="head"),
    extra_check=moe_check("qwen3_moe"),
)
