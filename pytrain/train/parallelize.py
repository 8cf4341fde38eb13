"""Apply expert parallelism, activation checkpointing, `torch.compile` and FSDP2 to a plain model of any
family, then materialise it.

The plan is the same for every family (pytrain.model.families), since they share one decoder trunk:
split the experts over the expert ranks (MoE families with train.expert_parallel > 1), checkpoint-wrap
blocks (`model.layers`), compile blocks, shard the experts and then the blocks, shard the root, in
torchtitan's order; the meshes come from pytrain.train.mesh. The model is built on the meta device, so
no rank ever holds the full weights: pytrain.model.materialize allocates each rank's shards and fills
them from the full initial value of each parameter, which depends only on (seed, parameter name). A run
on any number of ranks (and any expert-parallel size) therefore starts from the very weights a single
process would.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

from pytrain.errors import PytrainError
from pytrain.model.materialize import materialize
from pytrain.train.distributed import Distributed
from pytrain.train.expert_parallel import apply_expert_parallel, check_expert_parallel, expert_modules
from pytrain.train.mesh import Meshes, ParallelDims

# FSDP2's MixedPrecisionPolicy: the sharded parameters stay fp32 (the optimizer's master weights); bf16
# and fp16 are the dtype they are all-gathered and computed in. fp16 also needs loss scaling (pytrain.train.precision).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def apply_activation_checkpointing(model: nn.Module, every: int) -> None:
    """Recompute every k-th block's activations in the backward (k=1: every block; 0: none)."""
    if every <= 0:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        if i % every == 0:
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile each block separately: every block has the same graph, so it compiles once."""
    for block in model.layers:
        block.compile(fullgraph=True)


def apply_fsdp(model: nn.Module, meshes: Meshes, *, param_dtype: torch.dtype, reduce_dtype: torch.dtype,
               cpu_offload: bool) -> None:
    """Shard each expert-parallel experts module (over meshes.expert_fsdp), each block, then the root
    (embedding, final norm, LM head) with FSDP2 (over meshes.dense).

    The root is not resharded after forward: its backward starts right away and would all-gather again.
    Gradients are summed over ranks, not averaged: the trainer already divides each rank's loss by the
    global token count, so the sum is the gradient of the global mean (an expert's gradient holds the
    tokens of its whole expert group already, through the all-to-all's backward).
    """
    policy = dict(mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype))
    if cpu_offload:
        policy["offload_policy"] = CPUOffloadPolicy()
    if meshes.expert is not None:
        for experts in expert_modules(model):
            fully_shard(experts, mesh=meshes.expert_fsdp, **policy)
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        fully_shard(block, mesh=meshes.dense, reshard_after_forward=i < last, **policy)
    fully_shard(model, mesh=meshes.dense, reshard_after_forward=False, **policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: also what gloo supports


def needs_fsdp(world_size: int, param_dtype: str, reduce_dtype: str, cpu_offload: bool) -> bool:
    """Whether FSDP2 does anything for this run. One process computing and reducing in fp32 without offload
    has nothing to shard, cast or move: FSDP2 would only copy each parameter before its use and each
    gradient after, and make the optimizer step on DTensors (a Python loop per parameter), so the model
    stays plain. Its checkpoints are the same (DCP records a plain tensor and a one-rank shard alike), and
    any rank count resumes them; so is every number (tests/train/test_parallelize.py)."""
    return world_size > 1 or cpu_offload or param_dtype != "fp32" or reduce_dtype != "fp32"


def parallelize(model: nn.Module, meshes: Meshes, *, param_dtype: str, reduce_dtype: str, ac_every: int,
                compile: bool, cpu_offload: bool) -> nn.Module:
    if meshes.expert is not None:
        check_expert_parallel(model.config, meshes.expert.size(), compile=compile)
        apply_expert_parallel(model, meshes.expert)
    apply_activation_checkpointing(model, ac_every)
    if compile:
        apply_compile(model)
    if needs_fsdp(meshes.dense.size(), param_dtype, reduce_dtype, cpu_offload):
        apply_fsdp(model, meshes, param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[reduce_dtype],
                   cpu_offload=cpu_offload)
    return model


def build_model(model_config, d: Distributed, *, dtype: str, reduce_dtype: str = "fp32", ac_every: int = 0,
                compile: bool = False, cpu_offload: bool = False, hsdp: bool = False,
                hsdp_shard_size: int | None = None, expert_parallel: int = 1, seed: int = 0,
                initial_weights=None) -> nn.Module:
    """The config's family model built on the meta device, parallelised, then materialised with its initial
    weights (drawn from `seed`, or `initial_weights(name)` -> full tensor, e.g. pytrain.model.hf.HFWeights)."""
    from pytrain.model.families import build_model as build_family_model

    if cpu_offload and d.device.type != "cuda":
        raise PytrainError("train.cpu_offload keeps FSDP2's parameters, gradients and optimizer state in host memory "
                           "while computing on the GPU; it needs CUDA (a CPU run is all in host memory already)")
    meshes = ParallelDims.of(d.world_size, d.local_world_size, hsdp=hsdp, hsdp_shard_size=hsdp_shard_size,
                             expert_parallel=expert_parallel).build(d.device.type)
    with torch.device("meta"):
        model = build_family_model(model_config)
    parallelize(model, meshes, param_dtype=dtype, reduce_dtype=reduce_dtype, ac_every=ac_every, compile=compile,
                cpu_offload=cpu_offload)

    def fill(name, full):
        if initial_weights is None:
            model.init_parameter(name, full, seed)
        else:
            full.copy_(initial_weights(name))

    materialize(model, "cpu" if cpu_offload else d.device, fill, fill_device=d.device)
    return model
