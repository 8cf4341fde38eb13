"""The Hugging Face format of the qwen2 family: Qwen2Config (model_type qwen2, Qwen2ForCausalLM); Llama's
tensor names, with q/k/v biases. Sliding-window attention (`use_sliding_window: true`) is refused: the
Qwen2/2.5 releases do not use it, and pytrain attends over the whole causal prefix."""

from __future__ import annotations

from pathlib import Path

from pytrain.model.families.llama.hf import ACCEPTED, FIELDS, hf_name, llama_like_config_json, read_llama_like

__all__ = ["MODEL_TYPE", "config_json", "hf_name", "model_config_values"]

MODEL_TYPE = "qwen2"
QWEN_FIELDS = tuple(f for f in FIELDS if f != "attention_bias")
QWEN_ACCEPTED = {**{k: v for k, v in ACCEPTED.items() if k not in ("mlp_bias", "pretraining_tp")},
                 "use_sliding_window": (False, None)}


def qwen_extra(model_config) -> dict:
    """The sliding-window keys, written as 'not used' (what the releases say)."""
    return {"sliding_window": None, "max_window_layers": model_config.num_hidden_layers}


def config_json(model_config) -> dict:
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="Qwen2ForCausalLM",
                                  fields=QWEN_FIELDS, accepted=QWEN_ACCEPTED, extra=qwen_extra(model_config))


def model_config_values(config: dict, path: Path) -> dict:
    return read_llama_like(config, path, MODEL_TYPE, fields=QWEN_FIELDS, accepted=QWEN_ACCEPTED,
                           defaults={"tie_word_embeddings": False, "initializer_range": 0.02, "head_dim": None})
