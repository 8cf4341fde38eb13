"""Debug checks of the ops' integer inputs (labels, RoPE positions): off by default.

On the fast path nothing is checked on the host (that would cost a device sync per call): the Triton
kernels turn a label outside the vocabulary (other than ignore_index) into a NaN loss, and a position
outside the cos/sin table into NaN outputs, and the trainer's one host sync per step stops on a
non-finite loss. To find the value itself, switch the checks on: `PYTRAIN_CHECK_INPUTS=1` in the
environment or `pytrain.ops.set_checks(True)`; every call then validates its labels or positions (one
sync each) and raises a PytrainError naming the first bad value. Under torch.compile the check is an
asynchronous device assertion instead (no graph break). Data packed by `pytrain pack` holds only
token ids below the vocabulary size, and `pytrain verify` proves it.
"""

from __future__ import annotations

import os

import torch

from pytrain.errors import PytrainError

_enabled = os.environ.get("PYTRAIN_CHECK_INPUTS", "0") == "1"


def set_checks(enabled: bool) -> None:
    """Validate labels and RoPE positions on every call (slow: one host sync per call), or stop."""
    global _enabled
    _enabled = bool(enabled)


def checks_enabled() -> bool:
    return _enabled


def check_range(values: torch.Tensor, high: int, what: str, hint: str, *, allowed: int | None = None) -> None:
    """When checks are on, raise a PytrainError naming the first element of `values` outside [0, high)
    (an element equal to `allowed`, e.g. ignore_index, is fine), ending with `hint` (what to do)."""
    if not _enabled:
        return
    bad = (values < 0) | (values >= high)
    if allowed is not None:
        bad &= values != allowed
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), f"{what} outside [0, {high}) (PYTRAIN_CHECK_INPUTS)")
        return
    flat = bad.flatten()
    if flat.any():
        index = int(flat.nonzero()[0])
        value = int(values.flatten()[index])
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(index), values.shape))
        raise PytrainError(f"{what} {value} at index {list(where)} is outside [0, {high})"
                           + (f" and is not the ignore index {allowed}" if allowed is not None else "")
                           + f"; {hint}")
