"""The Hugging Face format of the qwen2_moe family: Qwen2MoeConfig (model_type qwen2_moe, Qwen2MoeForCausalLM);
Qwen2's keys and tensor names plus the MoE ones (pytrain.model.families.moe_hf) and the shared expert
(mlp.shared_expert.{gate,up,down}_proj, mlp.shared_expert_gate). Refused: sliding-window attention,
q/k/v without biases (`qkv_bias: false`, transformers 5), dense layers among the sparse ones."""

from __future__ import annotations

from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.model.families.llama.hf import hf_name, llama_like_config_json, read_llama_like
from pytrain.model.families.moe_hf import moe_json, moe_layouts, read_moe, refuse_sparse_layer_patterns
from pytrain.model.families.qwen2.hf import QWEN_ACCEPTED, QWEN_FIELDS, qwen_extra

__all__ = ["MODEL_TYPE", "config_json", "hf_layouts", "hf_name", "model_config_values"]

MODEL_TYPE = "qwen2_moe"
_ACCEPTED = {**QWEN_ACCEPTED, "qkv_bias": (True, None)}
MOE_FIELDS = ("num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size", "norm_topk_prob",
              "router_aux_loss_coef")
# transformers' Qwen2MoeConfig defaults, for keys a config.json leaves out
MOE_DEFAULTS = {"num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
                "shared_expert_intermediate_size": 5632, "norm_topk_prob": False, "router_aux_loss_coef": 0.001}


def config_json(model_config) -> dict:
    extra = {**qwen_extra(model_config), **moe_json(model_config, experts_key="num_experts", fields=MOE_FIELDS),
             "decoder_sparse_step": 1, "mlp_only_layers": []}
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="Qwen2MoeForCausalLM",
                                  fields=QWEN_FIELDS, accepted=_ACCEPTED, extra=extra)


def model_config_values(config: dict, path: Path) -> dict:
    refuse_sparse_layer_patterns(config, path, MODEL_TYPE)
    layer_types = config.get("layer_types") or []
    if any(kind != "full_attention" for kind in layer_types):
        raise PytrainError(f"{path}: layer_types={layer_types!r} is not supported by pytrain's {MODEL_TYPE} (full "
                           "attention in every layer)")
    values = read_llama_like(config, path, MODEL_TYPE, fields=QWEN_FIELDS, accepted=_ACCEPTED,
                             defaults={"tie_word_embeddings": False, "initializer_range": 0.02, "head_dim": None})
    return {**values, **read_moe(config, path, experts_keys=("num_experts",), fields=MOE_FIELDS,
                                 defaults=MOE_DEFAULTS)}


def hf_layouts(name: str, shape: tuple[int, ...]):
    return moe_layouts(name, shape)
