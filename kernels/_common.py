"""Launch helpers shared by the kernel modules."""

from __future__ import annotations

import torch


def rows_2d(x: torch.Tensor) -> torch.Tensor:
    """`x` as [rows, last_dim] with a unit column stride, copying only when no such view exists."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 or x2.shape[-1] == 1 else x2.contiguous()


_BLOCKS_PER_SM: dict[tuple, int] = {}


def blocks_per_sm(n_regs: int, num_warps: int, shared_bytes: int, props) -> int:
    """Blocks of a compiled kernel that one SM holds at once, limited by registers (allocated per warp
    in units of 256), threads and shared memory: the CUDA occupancy calculation."""
    threads = num_warps * 32
    regs_per_warp = -(-max(n_regs, 1) * 32 // 256) * 256
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // regs_per_warp // num_warps
    by_threads = getattr(props, "max_threads_per_multi_processor", 2048) // threads
    by_shared = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024) // shared_bytes if shared_bytes \
        else by_threads
    return max(1, min(by_regs, by_threads, by_shared, 32))


def resident_programs(kernel, args: tuple, kwargs: dict, device: torch.device, work_items: int) -> int:
    """Programs for a persistent (grid-stride) launch of `kernel` with these arguments: as many as the
    compiled kernel keeps resident on all SMs at once (from its real register and shared-memory use,
    read once per variant); a few off CUDA (the interpreter, meta tensors)."""
    if device.type != "cuda":
        return max(1, min(4, work_items))
    index = device.index if device.index is not None else torch.cuda.current_device()
    dtypes = tuple(str(a.dtype) for a in args if isinstance(a, torch.Tensor))
    key = (kernel, index, dtypes, tuple(sorted(kwargs.items())))
    if key not in _BLOCKS_PER_SM:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled._init_handles()  # loads the binary: n_regs as the driver reports it
        props = torch.cuda.get_device_properties(index)
        _BLOCKS_PER_SM[key] = blocks_per_sm(compiled.n_regs, compiled.metadata.num_warps, compiled.metadata.shared,
                                            props) * props.multi_processor_count
    return max(1, min(_BLOCKS_PER_SM[key], work_items))
