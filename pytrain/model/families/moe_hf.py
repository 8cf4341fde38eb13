"""The Hugging Face format of the mixture-of-experts families: their config.json keys and expert tensors.

    config.json   the routed experts' count (num_experts; Mixtral and transformers 5's qwen3_moe write
                  num_local_experts), num_experts_per_tok, norm_topk_prob, router_aux_loss_coef and the
                  family's widths; pytrain's training-only options (router_z_loss_coef, the capacity factor,
                  aux-loss-free balancing) have no key and take their defaults when read
    tensors       the router model.layers.N.mlp.gate.weight [E, H]; the experts one tensor per expert and
                  projection, model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight (Mixtral:
                  block_sparse_moe.experts.E.{w1,w3,w2}.weight and block_sparse_moe.gate.weight)

The per-expert layout is what the releases hold, what transformers 4 reads and what transformers 5's
save_pretrained writes (it converts back from its in-memory layout), so exports write it. Folders in
transformers 5's in-memory layout (mlp.experts.gate_up_proj [E, 2I, H] with gate_proj's rows first, and
mlp.experts.down_proj [E, H, I], e.g. a raw state_dict saved with safetensors) are read too: pytrain
takes, per tensor, the first layout the folder holds completely (pytrain.model.hf.Layout).
"""

from __future__ import annotations

import re
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.model.families.llama.hf import hf_name
from pytrain.model.hf import Layout, read_fields

_EXPERT_WEIGHT = re.compile(r"layers\.(\d+)\.mlp\.experts\.(gate_proj|up_proj|down_proj)")


def moe_layouts(name: str, shape: tuple[int, ...], *, hub_module: str = "mlp",
                hub_projections: dict | None = None) -> list[Layout]:
    """The layouts of parameter `name`: per-expert tensors under `hub_module` (with projections renamed by
    `hub_projections`) or transformers 5's fused ones for an expert weight; the same name under
    `hub_module` (when it is not "mlp"), then under "mlp", for the others."""
    match = _EXPERT_WEIGHT.fullmatch(name)
    if match is None:
        plain = hf_name(name)
        if hub_module != "mlp" and ".mlp." in plain:
            return [Layout("same", (plain.replace(".mlp.", f".{hub_module}."),)), Layout("same", (plain,))]
        return [Layout("same", (plain,))]
    layer, projection = match.groups()
    stored = (hub_projections or {}).get(projection, projection)
    per_expert = tuple(f"model.layers.{layer}.{hub_module}.experts.{e}.{stored}.weight" for e in range(shape[0]))
    fused = f"model.layers.{layer}.mlp.experts."
    if projection == "down_proj":
        return [Layout("stack", per_expert), Layout("same", (fused + "down_proj",))]
    return [Layout("stack", per_expert), Layout("half", (fused + "gate_up_proj",), int(projection == "up_proj"))]


def moe_json(model_config, *, experts_key: str, fields: tuple[str, ...]) -> dict:
    """The MoE keys of config.json: the expert count under `experts_key`, then `fields` under their names.
    A model trained with aux-loss-free balancing is refused: its expert bias steers the routing and the
    family's format has no place for it (transformers would route differently)."""
    if model_config.router_bias_update_rate:
        raise PytrainError(f"model.router_bias_update_rate={model_config.router_bias_update_rate}: the expert bias of "
                           f"aux-loss-free balancing steers the routing, and {model_config.family}'s Hugging Face "
                           "format has no place for it (transformers would route without it); export a model "
                           "trained without it")
    return {experts_key: model_config.num_experts, **{name: getattr(model_config, name) for name in fields},
            "output_router_logits": False}


def read_moe(config: dict, path: Path, *, experts_keys: tuple[str, ...], fields: tuple[str, ...],
             defaults: dict) -> dict:
    """The MoE fields of a config.json: the expert count from the first of `experts_keys` present (else
    defaults["num_experts"]), and `fields` (a missing one takes `defaults`: transformers' value)."""
    key = next((k for k in experts_keys if config.get(k) is not None), None)
    experts = read_fields({"num_experts": config[key]} if key else {}, path, ("num_experts",), defaults)
    return {**experts, **read_fields(config, path, fields, defaults)}


def refuse_sparse_layer_patterns(config: dict, path: Path, family_name: str) -> None:
    """qwen MoE configs can make some layers dense (`decoder_sparse_step`, `mlp_only_layers`); pytrain's
    have experts in every layer, as every Qwen MoE release does."""
    step, dense = config.get("decoder_sparse_step", 1), config.get("mlp_only_layers") or []
    if step != 1:
        raise PytrainError(f"{path}: decoder_sparse_step={step!r} is not supported by pytrain's {family_name} (every "
                           "layer is a mixture of experts: needs 1)")
    if dense:
        raise PytrainError(f"{path}: mlp_only_layers={dense!r} is not supported by pytrain's {family_name} (every "
                           "layer is a mixture of experts: needs [])")
