"""The device meshes of pytrain.train.mesh, built on a fake 8-rank process group in this process: which ranks
each named dimension groups (HSDP replicas of consecutive shard groups; expert groups of consecutive ranks
inside a shard group; each expert shard's FSDP ranks, the ones holding the same experts), written out
here from the ranks' numbers; and the sizes ParallelDims refuses."""

from __future__ import annotations

import pytest

from pytrain.errors import PytrainError
from pytrain.train.mesh import ParallelDims


@pytest.fixture
def fake_world():
    """An 8-rank world with this process as rank 5 (torch's fake backend: meshes are built, nothing is sent)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=5, world_size=8)
    yield 5, 8
    dist.destroy_process_group()


@pytest.mark.parametrize("hsdp,shard,ep", [(False, 8, 1), (False, 8, 4), (True, 4, 2), (True, 2, 2)])
def test_meshes_group_the_ranks_of_each_named_dimension(fake_world, hsdp, shard, ep):
    rank, world = fake_world
    meshes = ParallelDims.of(world, 4, hsdp=hsdp, hsdp_shard_size=shard if hsdp else None,
                             expert_parallel=ep).build("cpu")
    replicas = [list(range(start, start + shard)) for start in range(0, world, shard)]  # consecutive shard groups
    assert meshes.dense.mesh.tolist() == (replicas if hsdp else replicas[0])
    assert meshes.dense.mesh_dim_names == (("replicate", "shard") if hsdp else ("shard",))
    if ep == 1:
        assert meshes.expert is None and meshes.expert_fsdp is None
        return
    assert meshes.expert.mesh.tolist() == [r for r in range(world) if r // ep == rank // ep]  # consecutive ranks
    same_experts = [[r for r in group if r % ep == rank % ep] for group in replicas]
    assert meshes.expert_fsdp.mesh.tolist() == (same_experts if hsdp else same_experts[0])
    assert meshes.expert_fsdp.mesh_dim_names == (("replicate", "expert_shard") if hsdp else ("expert_shard",))


@pytest.mark.parametrize("kwargs,message", [
    (dict(expert_parallel=3), "train.expert_parallel=3 must divide the world size 8"),
    (dict(hsdp=True, hsdp_shard_size=2, expert_parallel=4), "train.expert_parallel=4 must divide the HSDP shard "
                                                             "group size 2"),
    (dict(hsdp=True, hsdp_shard_size=3), "HSDP: world size 8 is not a multiple of the shard group size 3"),
])
def test_sizes_that_do_not_fit_are_one_line_errors(kwargs, message):
    with pytest.raises(PytrainError, match=message):
        ParallelDims.of(8, 4, **kwargs)
