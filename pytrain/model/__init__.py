"""The Llama-style decoder (plain PyTorch), its configuration and size presets, and the Hugging Face format.

`load_hf(folder)` -> (model, config) loads a Hugging Face Llama folder (pytrain.model.hf). `Llama` and
`load_hf` are imported on first use, so the torch-free config (and `pytrain.config`) can be read without torch.
"""

from pytrain.model.config import PRESETS, ModelConfig, preset

__all__ = ["PRESETS", "Llama", "ModelConfig", "load_hf", "preset"]


def __getattr__(name):
    if name == "Llama":
        from pytrain.model.llama import Llama

        return Llama
    if name == "load_hf":
        from pytrain.model.hf import load_hf

        return load_hf
    raise AttributeError(f"module 'pytrain.model' has no attribute {name!r}")
