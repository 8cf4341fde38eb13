"""The Hugging Face format of the mistral family: MistralConfig (model_type mistral, MistralForCausalLM);
Llama's tensor names. `sliding_window` is kept (null: none; missing: transformers' default, 4096)."""

from __future__ import annotations

from pathlib import Path

from pytrain.model.families.llama.hf import ACCEPTED, DEFAULTS, FIELDS, hf_name, llama_like_config_json, read_llama_like

__all__ = ["MODEL_TYPE", "config_json", "hf_name", "model_config_values"]

MODEL_TYPE = "mistral"
MISTRAL_FIELDS = tuple(f for f in FIELDS if f != "attention_bias") + ("sliding_window",)
MISTRAL_ACCEPTED = {**{k: v for k, v in ACCEPTED.items() if k not in ("mlp_bias", "pretraining_tp")},
             "attention_bias": (False, None)}


def config_json(model_config) -> dict:
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="MistralForCausalLM",
                                  fields=MISTRAL_FIELDS, accepted=MISTRAL_ACCEPTED)


def model_config_values(config: dict, path: Path) -> dict:
    values = read_llama_like(config, path, MODEL_TYPE, fields=MISTRAL_FIELDS,
                             defaults={**DEFAULTS, "sliding_window": 4096}, accepted=MISTRAL_ACCEPTED)
    if "sliding_window" in config and config["sliding_window"] is None:
        values["sliding_window"] = None  # an explicit null: no window (Mistral v0.2+)
    return values
