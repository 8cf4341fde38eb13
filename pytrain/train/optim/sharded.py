"""A function of whole tensors applied to tensors that FSDP2 holds in shards: each whole tensor is
assembled on one rank of the shard group, transformed there once, and cut back into the shards.

Muon needs this: Newton-Schulz orthogonalises a whole matrix, while each rank holds a block of its rows.
Gathering every matrix everywhere would do the work W times and hold all matrices on every rank;
instead the tensors are dealt out to the W ranks of the group, W at a time (largest first, so each
round's tensors are of similar size and the ranks finish together):

    round: tensors t_0 .. t_{W-1}, t_j owned by rank j
    all-to-all 1: every rank sends its shard of t_j to rank j     -> rank j holds the whole t_j
    rank j:       f(t_j)
    all-to-all 2: rank j sends shard s of f(t_j) back to rank s   -> every rank holds its shards of f(t)

Per round a rank holds its W outgoing shards (about one tensor's worth), one whole tensor and its
result: never more than a few tensors, never all of them. Each tensor crosses the network twice (in
and out), the same traffic as an all-gather of it, without the W-fold compute. Shards follow
`torch.chunk` along the sharded dimension (FSDP2's and DTensor's Shard(dim)): uneven and empty shards
work. The caller passes the shards in the dtype and on the device the function computes in (bf16 on
CUDA for Newton-Schulz, which converts to bf16 first anyway: the traffic halves and the result is the
same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class Sharded:
    """One tensor to transform: this rank's shard of it and how the whole is cut."""
    local: Tensor                       # this rank's shard (contiguous), or the whole tensor when shard_dim is None
    shape: torch.Size                   # the whole tensor's shape
    shard_dim: int | None               # the dimension cut over the group; None: not sharded, transformed here
    transform: Callable[[Tensor], Tensor]  # whole tensor -> whole tensor of the same shape


def chunk_sizes(length: int, parts: int) -> list[int]:
    """The sizes `torch.chunk(length, parts)` gives, padded with empty chunks to `parts` (FSDP2's sharding)."""
    size = -(-length // parts)
    return [max(0, min(size, length - i * size)) for i in range(parts)]


def transform_sharded(tensors: list[Sharded], group: dist.ProcessGroup | None) -> list[Tensor]:
    """Each tensor's `transform` of the whole, cut back to this rank's shard (every rank of `group` calls
    this with the same tensors in the same order, each with its own shards)."""
    results: list[Tensor | None] = [None] * len(tensors)
    sharded = []
    for i, t in enumerate(tensors):
        if t.shard_dim is None or group is None:
            results[i] = t.transform(t.local)
        else:
            sharded.append(i)
    if sharded:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        order = sorted(sharded, key=lambda i: -math.prod(tensors[i].shape))  # stable: ties keep their order
        for start in range(0, len(order), world):
            batch = order[start:start + world]
            for i, result in zip(batch, _round([tensors[i] for i in batch], group, world, rank)):
                results[i] = result
    return results


def _shard_shapes(t: Sharded, world: int) -> list[list[int]]:
    shapes = []
    for size in chunk_sizes(t.shape[t.shard_dim], world):
        shape = list(t.shape)
        shape[t.shard_dim] = size
        shapes.append(shape)
    return shapes


def _round(batch: list[Sharded], group: dist.ProcessGroup, world: int, rank: int) -> list[Tensor]:
    """One round: batch[j] is owned by rank j (ranks >= len(batch) own nothing this round)."""
    for t, shape in ((t, _shard_shapes(t, world)[rank]) for t in batch):
        if list(t.local.shape) != shape:
            raise RuntimeError(f"a shard of shape {list(t.local.shape)} where torch.chunk of {list(t.shape)} along "
                               f"dim {t.shard_dim} over {world} ranks gives rank {rank} {shape}")
    first = batch[0].local
    outgoing = [t.local.reshape(-1) for t in batch]
    out_sizes = [x.numel() for x in outgoing] + [0] * (world - len(batch))
    own = batch[rank] if rank < len(batch) else None
    shapes = _shard_shapes(own, world) if own is not None else []
    in_sizes = [math.prod(s) for s in shapes] if own is not None else [0] * world

    gathered = first.new_empty(sum(in_sizes))
    dist.all_to_all_single(gathered, torch.cat(outgoing), in_sizes, out_sizes, group=group)
    returning = first.new_empty(0)
    if own is not None:
        pieces = [piece.view(shape) for piece, shape in zip(gathered.split(in_sizes), shapes)]
        whole = own.transform(torch.cat(pieces, dim=own.shard_dim))
        cut = whole.split([s[own.shard_dim] for s in shapes], dim=own.shard_dim)
        returning = torch.cat([piece.reshape(-1) for piece in cut]).to(first.dtype)
    del gathered
    back = first.new_empty(sum(out_sizes))
    dist.all_to_all_single(back, returning, out_sizes, in_sizes, group=group)
    return [piece.view(t.local.shape) for piece, t in zip(back.split(out_sizes), batch)]
