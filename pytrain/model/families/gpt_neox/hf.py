"""The Hugging Face format of the gpt_neox family (GPT-NeoX, Pythia).

    config.json   GPTNeoXConfig (model_type gpt_neox, GPTNeoXForCausalLM): rotary_pct / rotary_emb_base
                  (transformers 4) and rope_parameters.partial_rotary_factor / rope_theta (transformers 5)
    tensors       gpt_neox.embed_in, gpt_neox.layers.N.{input_layernorm, post_attention_layernorm,
                  attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h},
                  gpt_neox.final_layer_norm, embed_out

query_key_value is stored as transformers lays it out (per head: that head's q, k, v rows in turn), which
is the layout of pytrain's fused qkv_proj, so the weights are renamed, never re-ordered.
"""

from __future__ import annotations

from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.model.hf import read_fields, read_rope, require, rope_json

MODEL_TYPE = "gpt_neox"
_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "max_position_embeddings", "layer_norm_eps", "initializer_range", "tie_word_embeddings",
           "use_parallel_residual", "attention_bias")
_DEFAULTS = {"layer_norm_eps": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": False,
             "use_parallel_residual": True, "attention_bias": True}
_ACCEPTED = {"hidden_act": ("gelu", None), "attention_dropout": (0.0, 0, None), "hidden_dropout": (0.0, 0, None)}
# pytrain name part -> Hugging Face name part (the first that matches a name's start, or its middle)
_PREFIXES = (("embed_tokens.", "gpt_neox.embed_in."), ("layers.", "gpt_neox.layers."),
             ("norm.", "gpt_neox.final_layer_norm."), ("lm_head.", "embed_out."))
_MODULES = ((".self_attn.qkv_proj.", ".attention.query_key_value."), (".self_attn.o_proj.", ".attention.dense."),
            (".mlp.up_proj.", ".mlp.dense_h_to_4h."), (".mlp.down_proj.", ".mlp.dense_4h_to_h."))


def hf_name(name: str) -> str:
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            name = theirs + name[len(ours):]
            break
    for ours, theirs in _MODULES:
        name = name.replace(ours, theirs)
    return name


def config_json(model_config) -> dict:
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": MODEL_TYPE,
        **{name: getattr(model_config, name) for name in _FIELDS},
        "hidden_act": model_config.hidden_act,
        "rotary_pct": model_config.rotary_pct,
        "rotary_emb_base": model_config.rope_theta,
        **rope_json(model_config, partial_rotary_factor=model_config.rotary_pct),
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
    }


def model_config_values(config: dict, path: Path) -> dict:
    require(config, path, _ACCEPTED, MODEL_TYPE)
    values = read_fields(config, path, _FIELDS, _DEFAULTS)
    values["num_key_value_heads"] = values["num_attention_heads"]
    rope = read_rope(config, path)
    if rope["rope_type"] != "default":
        raise PytrainError(f"{path}: rope scaling {rope['rope_type']!r} is not supported by pytrain's gpt_neox "
                           "(plain RoPE only)")
    parameters = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rotary_emb_base", 10000.0))
    pct = parameters.get("partial_rotary_factor", config.get("rotary_pct", 0.25))
    for key, value in (("rotary_emb_base", theta), ("rotary_pct", pct)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PytrainError(f"{path}: {key} must be a number, got {value!r}")
    return {**values, "rope_type": "default", "rope_theta": float(theta), "rotary_pct": float(pct)}
