"""The model families pytrain trains, by name (`model.family`) and by Hugging Face `model_type`.

    from pytrain.model.families import family, build_model
    model = build_model(config)            # the family's nn.Module for a ModelConfig (plain, unmaterialised)
    family("qwen3").hf_adapter()           # its config.json mapping and weight names
"""

from __future__ import annotations

from pytrain.errors import PytrainError, did_you_mean
from pytrain.model.families.family import Family
from pytrain.model.families.gpt_neox import FAMILY as GPT_NEOX
from pytrain.model.families.llama import FAMILY as LLAMA
from pytrain.model.families.mistral import FAMILY as MISTRAL
from pytrain.model.families.mixtral import FAMILY as MIXTRAL
from pytrain.model.families.olmoe import FAMILY as OLMOE
from pytrain.model.families.qwen2 import FAMILY as QWEN2
from pytrain.model.families.qwen2_moe import FAMILY as QWEN2_MOE
from pytrain.model.families.qwen3 import FAMILY as QWEN3
from pytrain.model.families.qwen3_moe import FAMILY as QWEN3_MOE

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAMA, QWEN2, QWEN3, MISTRAL, GPT_NEOX, QWEN2_MOE, QWEN3_MOE,
                                                   MIXTRAL, OLMOE)}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise PytrainError(f'model.family "{name}" is not supported{did_you_mean(name, FAMILIES)}; '
                           f"choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def build_model(config):
    """The plain PyTorch model of `config`'s family (built on the current default device: use
    `torch.device("meta")` and pytrain.model.materialize to allocate it later)."""
    return family(config.family).model_class()(config)
