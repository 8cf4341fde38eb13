"""The Hugging Face format of the mixtral family: MixtralConfig (model_type mixtral, MixtralForCausalLM);
Mistral's keys and tensor names, the experts under block_sparse_moe (experts.E.w1/w3/w2: gate, up, down;
block_sparse_moe.gate the router) as the releases store them, or under mlp in transformers 5's fused
layout (pytrain.model.families.moe_hf). `num_local_experts` is the expert count; a missing
`sliding_window` means none (transformers' default). Refused: router jitter noise."""

from __future__ import annotations

from pathlib import Path

from pytrain.model.families.llama.hf import DEFAULTS, hf_name, llama_like_config_json, read_llama_like
from pytrain.model.families.mistral.hf import MISTRAL_ACCEPTED, MISTRAL_FIELDS
from pytrain.model.families.moe_hf import moe_json, moe_layouts, read_moe

__all__ = ["MODEL_TYPE", "config_json", "hf_layouts", "hf_name", "model_config_values"]

MODEL_TYPE = "mixtral"
_ACCEPTED = {**MISTRAL_ACCEPTED, "router_jitter_noise": (0.0, 0, None)}
MOE_FIELDS = ("num_experts_per_tok", "router_aux_loss_coef")
# transformers' MixtralConfig defaults, for keys a config.json leaves out
MOE_DEFAULTS = {"num_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001}
_HUB_PROJECTIONS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def config_json(model_config) -> dict:
    return llama_like_config_json(model_config, model_type=MODEL_TYPE, architecture="MixtralForCausalLM",
                                  fields=MISTRAL_FIELDS, accepted=_ACCEPTED,
                                  extra=moe_json(model_config, experts_key="num_local_experts", fields=MOE_FIELDS))


def model_config_values(config: dict, path: Path) -> dict:
    values = read_llama_like(config, path, MODEL_TYPE, fields=MISTRAL_FIELDS,
                             defaults={**DEFAULTS, "sliding_window": None}, accepted=_ACCEPTED)
    return {**values, **read_moe(config, path, experts_keys=("num_local_experts", "num_experts"), fields=MOE_FIELDS,
                                 defaults=MOE_DEFAULTS)}


def hf_layouts(name: str, shape: tuple[int, ...]):
    return moe_layouts(name, shape, hub_module="block_sparse_moe", hub_projections=_HUB_PROJECTIONS)
