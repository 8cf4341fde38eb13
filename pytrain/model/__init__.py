"""The decoder families (plain PyTorch), their configuration and presets, and the Hugging Face format.

`build_model(config)` builds the config's family model (pytrain.model.families); `load_hf(folder)` ->
(model, config) loads a Hugging Face folder of any supported family (pytrain.model.hf). They and `Llama`
are imported on first use, so the torch-free config (and `pytrain.config`) can be read without torch.
"""

from pytrain.model.config import PRESETS, ModelConfig, preset

__all__ = ["PRESETS", "Llama", "ModelConfig", "build_model", "load_hf", "preset"]


def __getattr__(name):
    if name == "Llama":
        from pytrain.model.families.llama.model import Llama

        return Llama
    if name == "build_model":
        from pytrain.model.families import build_model

        return build_model
    if name == "load_hf":
        from pytrain.model.hf import load_hf

        return load_hf
    raise AttributeError(f"module 'pytrain.model' has no attribute {name!r}")
