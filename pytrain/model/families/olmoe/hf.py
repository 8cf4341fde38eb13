"""The Hugging Face format of the olmoe family: OlmoeConfig (model_type olmoe, OlmoeForCausalLM); Llama's keys
and tensor names (q_norm/k_norm over the whole projections) plus the MoE ones
(pytrain.model.families.moe_hf). Refused: `clip_qkv` (clamping q, k and v)."""

from __future__ import annotations

from pathlib import Path

from pytrain.model.families.llama.hf import ACCEPTED, DEFAULTS, FIELDS, hf_name, llama_like_config_json, read_llama_like
from pytrain.model.families.moe_hf import moe_json, moe_layouts, read_moe

__all__ = ["MODEL_TYPE", "config_json", "hf_layouts", "hf_name", "model_config_values"]

MODEL_TYPE = "olmoe"
_ACCEPTED = {**{k: v for k, v in ACCEPTED.items() if k not in ("mlp_bias", "pretraining_tp")}, "clip_qkv": (None,)}
MOE_FIELDS = ("num_experts_per_tok", "norm_topk_prob", "router_aux_loss_coef")
# transformers' OlmoeConfig defaults, for keys a config.json leaves out
MOE_DEFAULTS = {"num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False, "router_aux_loss_coef": 0.01}


def config_json(model_config) -> dict:
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="OlmoeForCausalLM",
                                  accepted=_ACCEPTED,
                                  extra=moe_json(model_config, experts_key="num_experts", fields=MOE_FIELDS))


def model_config_values(config: dict, path: Path) -> dict:
    values = read_llama_like(config, path, MODEL_TYPE, accepted=_ACCEPTED, defaults=DEFAULTS)
    return {**values, **read_moe(config, path, experts_keys=("num_experts", "num_local_experts"), fields=MOE_FIELDS,
                                 defaults=MOE_DEFAULTS)}


def hf_layouts(name: str, shape: tuple[int, ...]):
    return moe_layouts(name, shape)
