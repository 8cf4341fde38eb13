"""The olmoe family (OLMoE-1B-7B): Llama's decoder with RMSNorm over the whole q and k projections (not per
head) and a mixture of experts (no shared expert) in every layer; each expert's width is intermediate_size.

    model.py  Olmoe (pytrain.model.layers + pytrain.model.moe)
    hf.py     OlmoeConfig <-> ModelConfig, expert tensors (pytrain.model.families.moe_hf)
"""

from pytrain.errors import PytrainError
from pytrain.model.families.family import MOE_OPTIONS, Family, llama_like_vector_params
from pytrain.model.families.moe_family import TINY_MOE, moe_check, moe_defaults


def _check(config) -> None:
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise PytrainError(f"model.head_dim ({config.head_dim}) must be hidden_size / num_attention_heads in family "
                           "olmoe (its q/k norms span hidden_size); remove it")


TINY = dict(TINY_MOE, intermediate_size=32, tie_word_embeddings=False)

FAMILY = Family(
    name="olmoe", model="pytrain.model.families.olmoe.model:Olmoe", adapter="pytrain.model.families.olmoe.hf",
    hidden_acts=("silu",), options=MOE_OPTIONS,
    option_defaults=moe_defaults(aux_loss_coef=0.01, norm_topk_prob=False),
    presets={
        "tiny-olmoe": TINY,
        # OLMoE-1B-7B's shape (1.3B of its 6.9B parameters active per token)
        "1b-7b-olmoe": dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                            num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
                            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, num_experts=64,
                            num_experts_per_tok=8, router_aux_loss_coef=0.01),
    },
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=c.attention_bias, out_bias=c.attention_bias,
                                                     qk_norm="width"),
    extra_check=moe_check("olmoe", also=_check),
)
