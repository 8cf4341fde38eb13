"""Run by test_muon_sharded.py under torchrun with 4 ranks (gloo, CPU); exits non-zero on a mismatch.

1. transform_sharded on a 1-D mesh of 4: tensors with uneven and empty row shards, a batch of matrices
   cut along a matrix dimension, more tensors than ranks: each rank's result is its shard of the function
   of the whole tensor, and each whole tensor was transformed exactly once, at most ceil(n / 4) per rank.
2. pytrain's Muon on a module sharded by FSDP2 over a 2 x 2 HSDP mesh (replicate x shard) equals
   torch.optim.Muon + torch.optim.AdamW on an unsharded copy, step by step.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard, distribute_tensor

from pytrain.config import OptimSection
from pytrain.train.optim import build_optimizer
from pytrain.train.optim.newton_schulz import orthogonalize
from pytrain.train.optim.sharded import Sharded, transform_sharded

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def check_transform_sharded(rank: int, world: int) -> None:
    cases = [((10, 7), 0), ((3, 9), 0), ((1, 5), 0), ((16, 16), 0), ((7, 12), 0), ((2, 7, 5), 1), ((13, 4), 0)]
    generator = torch.Generator().manual_seed(0)  # the same whole tensors on every rank
    wholes = [torch.randn(shape, generator=generator) for shape, _ in cases]
    calls = []

    def transform(whole):
        calls.append(list(whole.shape))
        return orthogonalize(whole, 5, COEFFICIENTS, torch.float32)

    tensors = []
    for whole, (shape, dim) in zip(wholes, cases):
        shards = list(whole.chunk(world, dim=dim))
        shards += [whole.narrow(dim, 0, 0)] * (world - len(shards))
        tensors.append(Sharded(shards[rank].contiguous(), whole.shape, dim, transform))
    results = transform_sharded(tensors, dist.group.WORLD)
    for whole, result, tensor in zip(wholes, results, tensors):
        expected = list(orthogonalize(whole, 5, COEFFICIENTS, torch.float32).chunk(world, dim=tensor.shard_dim))
        expected += [expected[0].narrow(tensor.shard_dim, 0, 0)] * (world - len(expected))
        assert torch.equal(result, expected[rank]), (rank, list(whole.shape))
    everyone = [None] * world
    dist.all_gather_object(everyone, calls)
    done = sorted(tuple(shape) for rank_calls in everyone for shape in rank_calls)
    assert done == sorted(tuple(shape) for shape, _ in cases), everyone  # each whole tensor once
    assert max(len(c) for c in everyone) <= math.ceil(len(cases) / world), everyone  # spread over the ranks


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.tall = nn.Parameter(torch.randn(9, 7))           # uneven row shards: 5 and 4
        self.short = nn.Parameter(torch.randn(1, 9))          # an empty shard
        self.experts = nn.Parameter(torch.randn(5, 6, 4))     # Shard(0): whole experts on each rank
        self.wide_experts = nn.Parameter(torch.randn(3, 8, 5))  # Shard(1): each expert cut, gathered whole
        self.bias = nn.Parameter(torch.randn(7))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(11, 7)
        self.layers = nn.ModuleList([Block()])


def reference_step(model: Model, optimizers, grads: dict) -> None:
    """torch.optim.Muon on each matrix (each expert alone), torch.optim.AdamW on the embedding and bias."""
    muon, adamw, slices = optimizers
    for name, param in model.named_parameters():
        param.grad = grads[name].clone()
    for (param, index), piece in slices:
        piece.grad = param.grad[index].clone()
    muon.step()
    adamw.step()
    with torch.no_grad():
        for (param, index), piece in slices:
            param[index] = piece


def check_muon_under_hsdp(rank: int) -> None:
    torch.manual_seed(0)
    model = Model()
    reference = copy.deepcopy(model)
    block = reference.layers[0]
    slices = [((p, i), nn.Parameter(p[i].detach().clone())) for p in (block.experts, block.wide_experts)
              for i in range(p.shape[0])]
    settings = dict(lr=0.05, weight_decay=0.1)
    optimizers = (torch.optim.Muon([block.tall, block.short] + [s for _, s in slices], momentum=0.95,
                                   adjust_lr_fn="match_rms_adamw", **settings),
                  torch.optim.AdamW([{"params": [reference.embed_tokens.weight, block.bias], "weight_decay": 0.0}],
                                    betas=(0.9, 0.95), eps=1e-8, **settings),
                  slices)

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    fully_shard(model.layers[0], mesh=mesh, shard_placement_fn=lambda p: Shard(1) if p.shape == (3, 8, 5) else None)
    fully_shard(model, mesh=mesh)
    optimizer = build_optimizer(model, OptimSection(name="muon", **settings), torch.device("cpu"))
    optimizer.ns_dtype = torch.bfloat16  # torch.optim.Muon's dtype
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = {name: torch.randn(p.shape, generator=generator) for name, p in reference.named_parameters()}
        for name, param in model.named_parameters():
            param.grad = distribute_tensor(grads[name], param.device_mesh, param.placements, src_data_rank=None)
        optimizer.step()
        reference_step(reference, optimizers, grads)
    for (name, param), expected in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(param.full_tensor(), expected), (rank, name)
        if name.startswith("layers.") and param.dim() >= 2:
            buffer = optimizer.state[param]["momentum_buffer"]
            assert buffer.placements == param.placements, (name, buffer.placements)  # DCP reshards it


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    check_transform_sharded(rank, world)
    check_muon_under_hsdp(rank)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
