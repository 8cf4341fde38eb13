"""The qwen2_moe family (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases) with a mixture of
experts in every layer plus a shared expert, a SwiGLU every token goes through, scaled by a sigmoid gate.

    model.py  Qwen2Moe (pytrain.model.layers + pytrain.model.moe)
    hf.py     Qwen2MoeConfig <-> ModelConfig, expert tensors (pytrain.model.families.moe_hf)
"""

from pytrain.errors import PytrainError
from pytrain.model.families.family import MOE_OPTIONS, Family, llama_like_vector_params, refuse_attention_bias
from pytrain.model.families.moe_family import TINY_MOE, moe_check, moe_defaults


def _check(config) -> None:
    if config.shared_expert_intermediate_size is None:
        raise PytrainError("model.shared_expert_intermediate_size is required by family qwen2_moe (its shared expert's "
                           "width)")
    refuse_attention_bias("qwen2_moe", "its q/k/v projections always have biases and o_proj none")(config)


TINY = dict(TINY_MOE, moe_intermediate_size=32, shared_expert_intermediate_size=64, rms_norm_eps=1e-6,
            rope_theta=1000000.0)

FAMILY = Family(
    name="qwen2_moe", model="pytrain.model.families.qwen2_moe.model:Qwen2Moe",
    adapter="pytrain.model.families.qwen2_moe.hf", hidden_acts=("silu",),
    options=("moe_intermediate_size", "shared_expert_intermediate_size", *MOE_OPTIONS),
    option_defaults={**moe_defaults(aux_loss_coef=0.001, norm_topk_prob=False),
                     "moe_intermediate_size": lambda c: c.intermediate_size},
    presets={
        "tiny-qwen2_moe": TINY,
        # Qwen1.5-MoE-A2.7B's shape (60 experts of 1408, 4 per token, a shared expert of 5632), at 4096 positions
        "a2.7b-qwen2_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                                num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
                                rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, num_experts=60,
                                num_experts_per_tok=4, moe_intermediate_size=1408,
                                shared_expert_intermediate_size=5632, router_aux_loss_coef=0.001),
    },
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=True, out_bias=False),
    extra_check=moe_check("qwen2_moe", also=_check),
)
