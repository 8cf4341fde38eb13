"""Rotary position embeddings, half-split (Llama/NeoX) layout.

For each head vector split into halves (x1, x2) and angles a = pos * theta**(-2i/head_dim):
`rot(x) = (x1*cos a - x2*sin a, x2*cos a + x1*sin a)`, computed in fp32 and cast back to x's dtype.
`scaling` (Hugging Face's `rope_scaling` dict) changes the frequencies: "linear" divides them all by
`factor`; "llama3" divides the low ones (wavelength above original_max_position_embeddings /
low_freq_factor) by `factor`, keeps the high ones (below ... / high_freq_factor) and interpolates between.
The cos/sin tables are computed once per (length, head_dim, theta, scaling, device) and cached.
"""

from __future__ import annotations

import math

import torch

from pytrain.errors import PytrainError
from pytrain.ops import cpu_kernels
from pytrain.ops._backend import use_cpu_kernel, use_triton
from pytrain.ops._checks import check_range

_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_MAX_TABLES = 16


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None, device=None) -> torch.Tensor:
    """The fp64 inverse frequencies [head_dim // 2] of plain or scaled RoPE (the module docstring's rules)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type != "llama3":
        raise PytrainError(f"RoPE scaling {rope_type!r} is not supported (default, linear, llama3)")
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    smooth = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)  # 0: low band, 1: high band
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def _make_table(length: int, head_dim: int, theta: float, device, scaling=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = rope_frequencies(head_dim, theta, scaling, device)
    angles = torch.arange(length, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return angles.cos().float().contiguous(), angles.sin().float().contiguous()


def rope_table(length: int, head_dim: int, theta: float, device,
               scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (cos, sin), each [length, head_dim // 2], angles computed in fp64; cached per key."""
    if torch.compiler.is_compiling():  # let the compiler see (and fold) the computation
        return _make_table(length, head_dim, theta, device, scaling)
    key = (length, head_dim, float(theta), tuple(sorted((scaling or {}).items())), torch.device(device))
    if key not in _TABLES:
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = _make_table(length, head_dim, theta, device, scaling)
    return _TABLES[key]


def _check(q: torch.Tensor, k: torch.Tensor, position_ids) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise PytrainError(f"apply_rope expects q, k as [batch, seq, heads, head_dim], got {list(q.shape)}, "
                           f"{list(k.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3] or q.shape[3] % 2:
        raise PytrainError(f"apply_rope: q {list(q.shape)} and k {list(k.shape)} must share batch, seq and an "
                           "even head_dim")
    if position_ids is not None and tuple(position_ids.shape) != tuple(q.shape[:2]):
        raise PytrainError(f"apply_rope: position_ids must be [batch, seq] = {list(q.shape[:2])}, "
                           f"got {list(position_ids.shape)}")
    if position_ids is not None and (position_ids.dtype == torch.bool or position_ids.is_floating_point()
                                     or position_ids.is_complex()):
        raise PytrainError(f"apply_rope: position_ids must hold integers, got {position_ids.dtype}")


def _check_positions(position_ids, table_len: int) -> None:
    if position_ids is not None:
        check_range(position_ids, table_len, "apply_rope: position",
                    "pass max_position when positions can reach the sequence length or beyond")


def _tables_for(q, theta, max_position, scaling):
    seq, head_dim = q.shape[1], q.shape[3]
    return rope_table(max(seq, max_position or 0), head_dim, theta, q.device, scaling)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)  # fp32, or fp64 for fp64 input
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def _positioned_tables(q, k, position_ids, theta, max_position, scaling) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked inputs' (cos, sin) of each token: [seq, head_dim/2], or [batch, seq, head_dim/2] with positions."""
    _check(q, k, position_ids)
    cos, sin = _tables_for(q, theta, max_position, scaling)
    _check_positions(position_ids, cos.shape[0])
    if position_ids is None:
        return cos[: q.shape[1]], sin[: q.shape[1]]
    return cos[position_ids], sin[position_ids]


def apply_rope_reference(q, k, position_ids=None, *, theta=10000.0, max_position=None, scaling=None):
    """Pure-PyTorch RoPE (the definition the kernels are tested against); same contract as `apply_rope`."""
    cos, sin = _positioned_tables(q, k, position_ids, theta, max_position, scaling)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def apply_rope(q, k, position_ids=None, *, theta=10000.0, max_position=None, scaling=None, rotary_dim=None,
               backend=None):
    """Rotate q [batch, seq, n_q_heads, head_dim] and k [batch, seq, n_kv_heads, head_dim].

    This is the layout straight out of the projections' `.view`, before any transpose; the head
    counts may differ (GQA). `position_ids` [batch, seq] int64 gives each token's position (packed
    sequences restart at 0); None means `arange(seq)`. Positions must be < max(seq, max_position):
    pass `max_position` when they can exceed the sequence length (decoding with a KV cache).
    `scaling`: Hugging Face's rope_scaling dict (rope_type linear or llama3), None for plain RoPE.
    Returns `(q_rot, k_rot)`; the inputs are not modified. The backward is the inverse rotation. The
    kernel turns a token with an out-of-range position into NaN; `set_checks(True)` names the position.
    `rotary_dim` < head_dim (GPT-NeoX's partial rotary): only the first `rotary_dim` dimensions of each head
    are rotated, with frequencies of a `rotary_dim`-wide RoPE, the rest pass through; this runs the
    PyTorch reference on every device (the kernel rotates whole, contiguous heads).
    """
    if rotary_dim is not None and rotary_dim < q.shape[-1]:
        q_rot, k_rot = apply_rope_reference(q[..., :rotary_dim], k[..., :rotary_dim], position_ids, theta=theta,
                                            max_position=max_position, scaling=scaling)
        return torch.cat((q_rot, q[..., rotary_dim:]), dim=-1), torch.cat((k_rot, k[..., rotary_dim:]), dim=-1)
    if not use_triton(q, backend):
        if use_cpu_kernel(q, backend) and cpu_kernels.usable(q, k):
            return cpu_kernels.Rope.apply(q, k, *_positioned_tables(q, k, position_ids, theta, max_position, scaling))
        return apply_rope_reference(q, k, position_ids, theta=theta, max_position=max_position, scaling=scaling)
    _check(q, k, position_ids)
    from pytrain.kernels.rope import rope as rope_triton

    cos, sin = _tables_for(q, theta, max_position, scaling)
    _check_positions(position_ids, cos.shape[0])
    return rope_triton(q, k, cos, sin, position_ids)
