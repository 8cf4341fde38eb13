"""From a model built on the meta device to real weights, in one place for every caller.

    with torch.device("meta"):
        model = build_model(config)          # no memory yet
    materialize(model, device, fill)         # allocate, re-tie, fill each parameter

Used by the trainer (after FSDP2 has sharded the meta model: each rank fills the full value of a
parameter, one at a time, and keeps its own slice), by `load_hf` (weights from a Hugging Face folder)
and by the run directory (allocate, then DCP loads the checkpoint into it). Parameters are handed to
`fill` by their model names, without the prefixes that wrappers (activation checkpointing, compile) add.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

# Wrappers that prefix parameter names; stripped to get the model's own names (as DCP does).
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


@torch.no_grad()
def materialize(model: nn.Module, device, fill: Callable[[str, torch.Tensor], object] | None = None, *,
                dtype: torch.dtype | None = None, fill_device=None) -> None:
    """Allocate `model`'s meta parameters and buffers on `device` (in `dtype`, default unchanged; buffers
    zeroed), tie the LM head to the embedding again where the config ties them (to_empty gives each
    module its own tensor), then call `fill(name, full)` for each parameter with an empty full-size
    tensor (on `fill_device`, default `device`) to write its value into. A sharded (DTensor) parameter
    keeps only this rank's slice of it (`distribute_tensor(src_data_rank=None)` slices locally, no
    traffic), so memory stays bounded by one full parameter at a time. Without `fill` the values are
    left uninitialised (a checkpoint is loaded next).
    """
    model.to_empty(device=device)
    if dtype is not None:
        model.to(dtype)
    for buffer in model.buffers():  # pytrain's only buffers (MoE routers' expert bias) start at zero
        buffer.zero_()
    model.tie_weights()
    if fill is None:
        return
    for name, param in model.named_parameters():
        full = torch.empty(param.shape, dtype=param.dtype, device=fill_device or device)
        fill(canonical_name(name), full)
        if isinstance(param, DTensor):
            full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().copy_(full)
        else:
            param.copy_(full)
