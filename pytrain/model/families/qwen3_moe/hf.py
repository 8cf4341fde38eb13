"""The Hugging Face format of the qwen3_moe family: Qwen3MoeConfig (model_type qwen3_moe,
Qwen3MoeForCausalLM); Qwen3's keys and tensor names plus the MoE ones (pytrain.model.families.moe_hf).
Refused: sliding-window attention (`use_sliding_window: true`) and dense layers among the sparse ones
(`decoder_sparse_step` other than 1, a non-empty `mlp_only_layers`)."""

from __future__ import annotations

from pathlib import Path

from pytrain.model.families.llama.hf import DEFAULTS, hf_name, llama_like_config_json, read_llama_like
from pytrain.model.families.moe_hf import moe_json, moe_layouts, read_moe, refuse_sparse_layer_patterns
from pytrain.model.families.qwen2.hf import QWEN_ACCEPTED, qwen_extra

__all__ = ["MODEL_TYPE", "config_json", "hf_layouts", "hf_name", "model_config_values"]

MODEL_TYPE = "qwen3_moe"
MOE_FIELDS = ("num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "router_aux_loss_coef")
# transformers' Qwen3MoeConfig defaults, for keys a config.json leaves out
MOE_DEFAULTS = {"num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": False,
                "router_aux_loss_coef": 0.001}


def config_json(model_config) -> dict:
    extra = {**qwen_extra(model_config), **moe_json(model_config, experts_key="num_experts", fields=MOE_FIELDS),
             "decoder_sparse_step": 1, "mlp_only_layers": []}
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="Qwen3MoeForCausalLM",
                                  accepted=QWEN_ACCEPTED, extra=extra)


def model_config_values(config: dict, path: Path) -> dict:
    refuse_sparse_layer_patterns(config, path, MODEL_TYPE)
    values = read_llama_like(config, path, MODEL_TYPE, accepted=QWEN_ACCEPTED, defaults={**DEFAULTS, "head_dim": 128})
    return {**values, **read_moe(config, path, experts_keys=("num_experts", "num_local_experts"), fields=MOE_FIELDS,
                                 defaults=MOE_DEFAULTS)}


def hf_layouts(name: str, shape: tuple[int, ...]):
    return moe_layouts(name, shape)
