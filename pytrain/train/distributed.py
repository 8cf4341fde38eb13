"""Process group and device setup, for one process (`pytrain train`) or many (`torchrun ... -m pytrain train`).

A single process still gets a (one-rank) process group, so the trainer has one code path: FSDP2,
mixed precision and sharded checkpoints behave the same whatever the rank count. Backend: NCCL for
CUDA tensors with gloo for CPU ones (CPU offload, object collectives); gloo alone on CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pytrain.errors import PytrainError


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None else int(value)


def pick_device(requested: str = "auto", option: str = "train.device") -> str:
    """The one device rule: auto is CUDA when available, else the CPU; cuda without a GPU is an error naming
    the `option` that asked for it."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise PytrainError(f"{option} is cuda but no CUDA device is available; set {option} to cpu or auto")
    return requested


def init_distributed(device: str = "auto") -> Distributed:
    """Join the torchrun process group (or make a one-rank one) and pick this rank's device."""
    device = pick_device(device)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (_env_int("RANK", 0), _env_int("WORLD_SIZE", 1)) if launched else (0, 1)
    local_rank = _env_int("LOCAL_RANK", 0) if launched else 0
    local_world = _env_int("LOCAL_WORLD_SIZE", world) if launched else 1
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PytrainError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                               "launch at most one process per GPU")
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
        backend = "cuda:nccl,cpu:gloo"
    else:
        torch_device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend, device_id=torch_device if device == "cuda" else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Distributed(rank, world, local_rank, local_world, torch_device)


def shutdown() -> None:
    """Destroy the process group now, while the interpreter is alive, gloo's worker and transport threads with it.

    destroy_process_group only forgets the group: the C++ group (and its threads) lives while anything holds it.
    A DeviceMesh does (its `_pg_registry`, torch >= 2.9), kept alive by DTensor's sharding caches until the
    interpreter shuts down; a gloo worker thread that then drops the last reference to a finished collective's
    tensors needs the GIL, which a finalizing interpreter refuses by ending the thread inside a noexcept
    destructor: "terminate called without an active exception", SIGABRT, after a run that succeeded (seen in
    2-rank runs under load). So every mesh still alive lets go of its groups (whoever built it: the groups are all
    destroyed here), and the run's reference cycles (FSDP2's state holds the group too) are collected, for the
    group's destructor to join its threads now.
    """
    from torch.distributed.device_mesh import DeviceMesh

    if dist.is_initialized():
        dist.destroy_process_group()
    for mesh in [obj for obj in gc.get_objects() if DeviceMesh in type(obj).__mro__]:  # no isinstance hooks run
        getattr(mesh, "_pg_registry", {}).clear()  # submeshes share their root's registry
    gc.collect()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place and return it (one rank: unchanged, without a call into the backend)."""
    if dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0, group=None):
    """Rank `src`'s `obj` on every rank (used for decisions only rank 0 can make, e.g. what is on disk).

    `group`: another process group than the default one (the background checkpoint writer has its own)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def barrier(group=None) -> None:
    dist.barrier(group=group)


def all_gather_object(obj, group=None) -> list:
    """Every rank's `obj`, in rank order, on every rank (a collective)."""
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def on_main(d: Distributed, fn):
    """Run `fn` on rank 0 only and give every rank its result, or raise its PytrainError on every rank."""
    outcome = None
    if d.is_main:
        try:
            outcome = ("ok", fn())
        except PytrainError as error:
            outcome = ("error", str(error))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise PytrainError(value)
    return value
