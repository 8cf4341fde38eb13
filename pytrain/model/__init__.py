"""The Llama-style decoder (plain PyTorch) and its configuration and size presets.

`Llama` is imported on first use, so the torch-free config (and `pytrain.config`) can be read without torch.
"""

from pytrain.model.config import PRESETS, ModelConfig, preset

__all__ = ["PRESETS", "Llama", "ModelConfig", "preset"]


def __getattr__(name):
    if name == "Llama":
        from pytrain.model.llama import Llama

        return Llama
    raise AttributeError(f"module 'pytrain.model' has no attribute {name!r}")
