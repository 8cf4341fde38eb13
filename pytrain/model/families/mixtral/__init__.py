"""The mixtral family (Mixtral 8x7B, 8x22B): Mistral's decoder with a mixture of experts as every layer's MLP;
the router keeps the top-k logits and softmaxes over them, which is the top-k of the softmax renormalised
(norm_topk_prob, always on). Each expert's width is intermediate_size.

    model.py  Mixtral (pytrain.model.layers + pytrain.model.moe)
    hf.py     MixtralConfig <-> ModelConfig, block_sparse_moe tensors (pytrain.model.families.moe_hf)

As for mistral, pytrain attends over the whole causal prefix: training refuses a data.seq_len above
`sliding_window`.
"""

from pytrain.errors import PytrainError
from pytrain.model.families.family import MOE_OPTIONS, Family, llama_like_vector_params, refuse_attention_bias
from pytrain.model.families.moe_family import TINY_MOE, moe_check, moe_defaults


def _check(config) -> None:
    if not config.norm_topk_prob:
        raise PytrainError("model.norm_topk_prob is always true in family mixtral (its router softmaxes over the "
                           "top-k logits); remove it")
    refuse_attention_bias("mixtral", "its projections have no biases")(config)


TINY = dict(TINY_MOE, intermediate_size=32, rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False)

FAMILY = Family(
    name="mixtral", model="pytrain.model.families.mixtral.model:Mixtral", adapter="pytrain.model.families.mixtral.hf",
    hidden_acts=("silu",), options=("sliding_window", *MOE_OPTIONS),
    option_defaults=moe_defaults(aux_loss_coef=0.001, norm_topk_prob=True),
    presets={
        "tiny-mixtral": TINY,
        # Mixtral-8x7B's shape (12.9B of its 46.7B parameters active per token), at 4096 positions
        "8x7b-mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                             rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False, num_experts=8,
                             num_experts_per_tok=2, router_aux_loss_coef=0.02),
    },
    vector_params=lambda c: llama_like_vector_params(c, qkv_bias=False, out_bias=False),
    extra_check=moe_check("mixtral", also=_check),
)
