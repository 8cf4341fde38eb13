"""The gpt_neox family (GPT-NeoX, Pythia): parallel residual, LayerNorm with bias, partial rotary, GELU MLP.

    model.py  GPTNeoX (pytrain.model.layers: LayerNorm, fused q/k/v Attention, GeluMLP, parallel Block)
    hf.py     GPTNeoXConfig <-> ModelConfig, the gpt_neox.* / embed_out weight names
"""

from pytrain.errors import PytrainError
from pytrain.model.families.family import TINY_SHAPE, Family


def _check(config) -> None:
    if config.num_key_value_heads != config.num_attention_heads:
        raise PytrainError(f"model.num_key_value_heads ({config.num_key_value_heads}) must equal "
                           f"model.num_attention_heads ({config.num_attention_heads}) in family gpt_neox (no grouped "
                           "KV heads in its fused query_key_value)")
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise PytrainError(f"model.head_dim ({config.head_dim}) must be hidden_size / num_attention_heads in family "
                           "gpt_neox; remove it")
    if config.rope_type != "default":
        raise PytrainError(f"model.rope_type {config.rope_type} is not supported by family gpt_neox (default only)")
    if not 0 < config.rotary_pct <= 1:
        raise PytrainError(f"model.rotary_pct must be in (0, 1], got {config.rotary_pct}")


def _vector_params(config) -> int:
    h, inner = config.hidden_size, config.intermediate_size
    attention_bias = 4 * h if config.attention_bias else 0  # query_key_value (3h) and dense (h)
    return 4 * h + attention_bias + inner + h  # two LayerNorms (weight, bias), MLP biases


FAMILY = Family(
    name="gpt_neox", model="pytrain.model.families.gpt_neox.model:GPTNeoX",
    adapter="pytrain.model.families.gpt_neox.hf", hidden_acts=("gelu",),
    options=("rotary_pct", "use_parallel_residual", "layer_norm_eps"),
    option_defaults={"rotary_pct": 0.25, "use_parallel_residual": True, "layer_norm_eps": 1e-5},
    presets={"tiny-gpt_neox": dict(TINY_SHAPE, intermediate_size=256, num_key_value_heads=4, rotary_pct=0.25,
                                   attention_bias=True, tie_word_embeddings=False)},
    mlp_matrices=2, vector_params=_vector_params, extra_check=_check,
)
