"""Grouped matrix multiply: the rows of `x` sorted by group, each group times its own weight matrix.

    y[r] = x[r] @ w[g].T    for the rows r of group g: offsets[g-1] <= r < offsets[g]  (offsets[-1] := 0)

x [rows, in], w [groups, out, in] (nn.Linear's layout, one matrix per group: a mixture-of-experts layer's
stacked expert weights), offsets [groups] integer, the cumulative end row of each group (non-decreasing;
an empty group ends where the previous one does). Rows at or past offsets[-1] belong to no group: their
output is zero and they get no gradient (a capacity-limited MoE layer puts its dropped tokens there).
The output has x's dtype; the fast paths accumulate in fp32.

Backends (`backend=` or `set_backend`, as for every op): on CUDA, `torch._grouped_mm` (PyTorch's grouped
GEMM) where the device runs it (bf16 on sm90 and newer, row widths a multiple of 8; probed once per
device), else the Triton kernel (pytrain.kernels.grouped_mm); elsewhere the reference, one matmul per
group, which needs the offsets on the host (free on the CPU; the tests' oracle everywhere). The fast
paths keep the offsets on the device: no host sync.
"""

from __future__ import annotations

import torch

from pytrain.errors import PytrainError
from pytrain.ops._backend import get_backend, use_triton
from pytrain.ops._checks import checks_enabled

_TORCH_GROUPED_MM: dict[int, bool] = {}  # CUDA device index -> whether torch._grouped_mm runs there


def _check(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> None:
    if x.dim() != 2 or w.dim() != 3 or w.shape[2] != x.shape[1]:
        raise PytrainError(f"grouped_mm expects x [rows, in] and w [groups, out, in], got {list(x.shape)} and "
                           f"{list(w.shape)}")
    if offsets.dim() != 1 or offsets.shape[0] != w.shape[0] or offsets.is_floating_point():
        raise PytrainError(f"grouped_mm offsets must be integer [{w.shape[0]}] (one end row per group), got "
                           f"{offsets.dtype} {list(offsets.shape)}")
    if x.dtype != w.dtype:
        raise PytrainError(f"grouped_mm: x is {x.dtype} but w is {w.dtype}; cast one of them")


def _check_offsets(ends: list[int], rows: int) -> None:
    previous = 0
    for g, end in enumerate(ends):
        if end < previous or end > rows:
            raise PytrainError(f"grouped_mm offsets[{g}] = {end} must be non-decreasing and at most the {rows} rows "
                               f"(previous end {previous})")
        previous = end


def grouped_mm_reference(x, w, offsets):
    """One matmul per group (the CPU path and the kernels' reference); same contract as `grouped_mm`."""
    _check(x, w, offsets)
    ends = [int(e) for e in offsets.tolist()]
    _check_offsets(ends, x.shape[0])
    used = ends[-1] if ends else 0
    sizes = [end - start for start, end in zip([0, *ends[:-1]], ends)]
    parts = [rows @ weight.T for rows, weight in zip(x[:used].split(sizes), w)]
    parts.append(x.new_zeros(x.shape[0] - used, w.shape[1]))
    return torch.cat(parts)


def torch_grouped_mm_runs(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes these operands here: CUDA bf16 with row widths a multiple of 8
    (16-byte aligned), on a device where a tiny call succeeds (sm90+ today; tried once per device)."""
    if not (x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and x.shape[1] % 8 == 0 and w.shape[1] % 8 == 0):
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _TORCH_GROUPED_MM:
        if torch.compiler.is_compiling():
            return torch.cuda.get_device_capability(index) >= (9, 0)
        try:
            a = torch.zeros(16, 16, dtype=torch.bfloat16, device=x.device)
            b = torch.zeros(2, 16, 16, dtype=torch.bfloat16, device=x.device)
            torch._grouped_mm(a, b.transpose(-2, -1), offs=torch.tensor([8, 16], dtype=torch.int32, device=x.device))
            _TORCH_GROUPED_MM[index] = True
        except RuntimeError:
            _TORCH_GROUPED_MM[index] = False
    return _TORCH_GROUPED_MM[index]


def torch_grouped_mm(x, w, offsets):
    """`torch._grouped_mm` with this op's contract: rows past offsets[-1] are masked to zero on the way in
    (so their gradient is zero) and out (PyTorch leaves them unwritten)."""
    offsets = offsets.to(torch.int32)
    used = torch.arange(x.shape[0], device=x.device)[:, None] < offsets[-1:]
    y = torch._grouped_mm(torch.where(used, x, 0), w.transpose(-2, -1), offs=offsets)
    return torch.where(used, y, 0)


def grouped_mm(x, w, offsets, *, backend=None):
    """`x @ w[g].T` for each group g of rows (the module docstring's contract). `backend`: None (the
    process-wide choice), "auto", "triton" or "torch" (the reference)."""
    if not use_triton(x, backend):
        return grouped_mm_reference(x, w, offsets)
    _check(x, w, offsets)
    if checks_enabled():
        _check_offsets([int(e) for e in offsets.tolist()], x.shape[0])
    if (backend or get_backend()) != "triton" and torch_grouped_mm_runs(x, w):
        return torch_grouped_mm(x, w, offsets)
    from pytrain.kernels.grouped_mm import grouped_mm as grouped_mm_triton

    return grouped_mm_triton(x, w, offsets)
