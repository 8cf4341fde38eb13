"""The device meshes of a run, built in one place from named parallel dimensions (as torchtitan's ParallelDims).

    dims = ParallelDims.of(world_size, local_world_size, hsdp=..., hsdp_shard_size=..., expert_parallel=...)
    meshes = dims.build(device_type)
    meshes.dense        FSDP2's mesh for every parameter outside the experts: ("shard",), or with HSDP
                        ("replicate", "shard")
    meshes.expert       the expert-parallel group ("expert",): the ranks a MoE layer's experts are split over
                        (None without expert parallelism)
    meshes.expert_fsdp  FSDP2's mesh for each rank's share of the experts: ("expert_shard",), or with HSDP
                        ("replicate", "expert_shard") (None without expert parallelism)

Every rank is a data-parallel rank: it reads its own micro-batches. The dimensions say how the parameters
are spread over the ranks: world = replicate x shard (HSDP: replicate across groups of `shard` ranks,
shard within them; plain FSDP: replicate = 1). Expert parallelism splits the shard dimension, as in
torchtitan: shard = expert_shard x expert with `expert` innermost, so an expert group is consecutive
ranks (one node): a layer's experts are split over the `expert` ranks, and each rank's share is sharded
by FSDP2 over the `expert_shard` ranks holding the same experts (and replicated over `replicate`).
Both expert meshes are slices of one parent mesh, which FSDP2 requires of a parameter that is already a
DTensor on another mesh. Tensor and context parallelism would be further named dimensions carved out of
`shard` here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from pytrain.errors import PytrainError


@dataclass(frozen=True)
class Meshes:
    dense: DeviceMesh
    expert: DeviceMesh | None
    expert_fsdp: DeviceMesh | None


@dataclass(frozen=True)
class ParallelDims:
    world: int
    replicate: int      # HSDP replica groups (1: plain FSDP)
    shard: int          # ranks each replica is sharded over
    expert: int = 1     # ranks each MoE layer's experts are split over (divides `shard`)
    hsdp: bool = False

    @classmethod
    def of(cls, world_size: int, local_world_size: int, *, hsdp: bool = False, hsdp_shard_size: int | None = None,
           expert_parallel: int = 1) -> ParallelDims:
        """The dimensions a run asks for, or a one-line error naming the option that does not fit."""
        shard = world_size
        if hsdp:
            shard = hsdp_shard_size or local_world_size
            if world_size % shard:
                raise PytrainError(f"HSDP: world size {world_size} is not a multiple of the shard group size {shard} "
                                   "(train.hsdp_shard_size, default: processes per node)")
        if expert_parallel < 1 or shard % expert_parallel:
            group = f"the HSDP shard group size {shard}" if hsdp else f"the world size {world_size}"
            raise PytrainError(f"train.expert_parallel={expert_parallel} must divide {group} (the ranks the experts "
                               "are split over are taken from them)")
        return cls(world_size, world_size // shard, shard, expert_parallel, hsdp)

    def build(self, device_type: str) -> Meshes:
        if self.hsdp:
            dense = init_device_mesh(device_type, (self.replicate, self.shard), mesh_dim_names=("replicate", "shard"))
        else:
            dense = init_device_mesh(device_type, (self.world,), mesh_dim_names=("shard",))
        if self.expert == 1:
            return Meshes(dense, None, None)
        sparse = init_device_mesh(device_type, (self.replicate, self.shard // self.expert, self.expert),
                                  mesh_dim_names=("replicate", "expert_shard", "expert"))
        fsdp = sparse["replicate", "expert_shard"] if self.hsdp else sparse["expert_shard"]
        return Meshes(dense, sparse["expert"], fsdp)
