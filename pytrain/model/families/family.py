"""What a model family is to the rest of pytrain: a small, torch-free description registered by name.

Each family is one folder under pytrain/model/families/: `model.py` (the architecture in plain PyTorch,
assembled from pytrain.model.layers), `hf.py` (its Hugging Face adapter: config.json mapping and weight
names) and `__init__.py` (this description: presets, defaults, the options it accepts). The model and
the adapter are imported on first use, so reading a run configuration never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

# The tiny presets' shape (Llama's "tiny"; the other families' tiny presets start from it): seconds-long CPU runs
TINY_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
# ModelConfig fields that only some families have; every other family requires them null.
MOE_OPTIONS = ("num_experts", "num_experts_per_tok", "norm_topk_prob", "router_aux_loss_coef", "router_z_loss_coef",
               "router_bias_update_rate", "moe_capacity_factor")
FAMILY_OPTIONS = ("sliding_window", "rotary_pct", "use_parallel_residual", "layer_norm_eps", "moe_intermediate_size",
                  "shared_expert_intermediate_size", *MOE_OPTIONS)


@dataclass(frozen=True)
class Family:
    name: str                   # the `model.family` value
    model: str                  # "module:Class" of the nn.Module
    adapter: str                # module of the Hugging Face adapter (torch-free)
    hidden_acts: tuple          # the MLP activations the architecture has; the first is the default
    options: tuple = ()         # which FAMILY_OPTIONS it reads
    option_defaults: dict = field(default_factory=dict)   # their values when left null (or config -> value)
    presets: dict = field(default_factory=dict)           # preset name -> ModelConfig fields
    mlp_matrices: int = 3       # SwiGLU: gate, up, down; a plain MLP: up, down
    vector_params: Callable | None = None                 # config -> norm/bias parameters per layer
    extra_check: Callable | None = None                   # config -> raise PytrainError if unsupported

    def defaults(self, config) -> dict:
        """Values for the fields `config` leaves null."""
        return {"hidden_act": self.hidden_acts[0],
                **{name: value(config) if callable(value) else value for name, value in self.option_defaults.items()}}

    def check(self, config) -> None:
        from pytrain.errors import PytrainError

        for name in FAMILY_OPTIONS:
            if name not in self.options and getattr(config, name) is not None:
                raise PytrainError(f"model.{name} is not an option of family {self.name}; remove it (or set "
                                   "model.family to a family that has it)")
        if config.hidden_act not in self.hidden_acts:
            raise PytrainError(f"model.hidden_act {config.hidden_act!r} is not supported by family {self.name} "
                               f"(supported: {', '.join(self.hidden_acts)})")
        if self.extra_check is not None:
            self.extra_check(config)

    def model_class(self):
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)

    def hf_adapter(self):
        return importlib.import_module(self.adapter)


def llama_like_vector_params(config, *, qkv_bias: bool, out_bias: bool, qk_norm: str | None = None) -> int:
    """Norm weights and biases per layer of a pre-norm RMSNorm block: two norms, optional q/k/v (and o)
    biases, optional q/k norms per head ("head") or over the whole projection ("width")."""
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    norms = {None: 0, "head": 2 * config.head_dim, "width": q + kv}[qk_norm]
    return 2 * config.hidden_size + (q + 2 * kv if qkv_bias else 0) + (config.hidden_size if out_bias else 0) + norms


def refuse_attention_bias(family_name: str, why: str) -> Callable:
    """An `extra_check` for families whose attention biases are fixed by the architecture (`why`)."""
    def check(config) -> None:
        if config.attention_bias:
            from pytrain.errors import PytrainError

            raise PytrainError(f"model.attention_bias is not an option of family {family_name} ({why}); remove it")
    return check
