"""The Hugging Face format of the llama family, and the Llama-like adapter the qwen2, qwen3 and mistral
families build theirs from.

    config.json   LlamaConfig (model_type llama, architectures LlamaForCausalLM)
    tensors       model.<pytrain name> (model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight,
                  ..., model.norm.weight), lm_head.weight when untied
"""

from __future__ import annotations

from pathlib import Path

from pytrain.model.hf import read_fields, read_rope, require, rope_json

MODEL_TYPE = "llama"
# ModelConfig fields config.json holds under the same key, and what a missing key means (transformers' default)
FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
          "initializer_range", "head_dim", "attention_bias")
DEFAULTS = {"attention_bias": False, "tie_word_embeddings": False, "initializer_range": 0.02, "head_dim": None}
# config.json keys whose other values the model cannot reproduce -> the accepted values (first: what we write)
ACCEPTED = {"mlp_bias": (False, None), "hidden_act": ("silu", None), "pretraining_tp": (1, None),
            "attention_dropout": (0.0, 0, None)}


def hf_name(name: str) -> str:
    """pytrain parameter name -> Hugging Face tensor name (the decoder lives under `model.`)."""
    return name if name == "lm_head.weight" else f"model.{name}"


def llama_like_config_json(model_config, *, model_type: str, architecture: str, fields=FIELDS,
                           accepted=ACCEPTED, extra: dict | None = None) -> dict:
    """config.json of a Llama-like family: its fields, the RoPE keys, the fixed keys it accepts (written with
    the value pytrain reproduces) and `extra` family keys."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        **{name: getattr(model_config, name) for name in fields},
        "hidden_act": model_config.hidden_act,
        **rope_json(model_config),
        **{key: values[0] for key, values in accepted.items() if key != "hidden_act"},
        **(extra or {}),
    }


def read_llama_like(config: dict, path: Path, family_name: str, *, fields=FIELDS, defaults=DEFAULTS,
                    accepted=ACCEPTED) -> dict:
    """ModelConfig values from a Llama-like config.json, refusing what the family cannot reproduce."""
    require(config, path, accepted, family_name)
    values = read_fields(config, path, fields, {**defaults, "num_key_value_heads": config.get("num_attention_heads")})
    return {**values, **read_rope(config, path)}


def config_json(model_config) -> dict:
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="LlamaForCausalLM")


def model_config_values(config: dict, path: Path) -> dict:
    return read_llama_like(config, path, "llama")
