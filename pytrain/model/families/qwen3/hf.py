"""The Hugging Face format of the qwen3 family: Qwen3Config (model_type qwen3, Qwen3ForCausalLM); Llama's
tensor names plus model.layers.N.self_attn.{q,k}_norm.weight. A missing head_dim is transformers' default
(128), not hidden_size / heads; `use_sliding_window: true` is refused as for qwen2."""

from __future__ import annotations

from pathlib import Path

from pytrain.model.families.llama.hf import DEFAULTS, hf_name, llama_like_config_json, read_llama_like
from pytrain.model.families.qwen2.hf import QWEN_ACCEPTED, qwen_extra

__all__ = ["MODEL_TYPE", "config_json", "hf_name", "model_config_values"]

MODEL_TYPE = "qwen3"


def config_json(model_config) -> dict:
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="Qwen3ForCausalLM",
                                  accepted=QWEN_ACCEPTED, extra=qwen_extra(model_config))


def model_config_values(config: dict, path: Path) -> dict:
    return read_llama_like(config, path, MODEL_TYPE, accepted=QWEN_ACCEPTED, defaults={**DEFAULTS, "head_dim": 128})
