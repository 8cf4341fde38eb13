"""Launch helpers shared by the kernel modules."""

from __future__ import annotations

import functools

import torch


def rows_2d(x: torch.Tensor) -> torch.Tensor:
    """`x` as [rows, last_dim] with a unit column stride, copying only when no such view exists."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 or x2.shape[-1] == 1 else x2.contiguous()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(device: torch.device, work_items: int) -> int:
    """Programs for a persistent (grid-stride) launch: two per SM on CUDA, a few under the interpreter."""
    slots = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    return max(1, min(slots, work_items))
