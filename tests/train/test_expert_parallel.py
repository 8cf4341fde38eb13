"""Expert parallelism on two CPU ranks (gloo): one MoE layer's all-to-all dispatch and combine against the plain
token-by-token layer (outputs and every gradient); training (torchrun) against the one-process run of the
same micro-batches: the same losses, gradient norms and router statistics (fp32, 1e-5), and exact resume
across rank counts and expert-parallel sizes (DCP reshards the experts); bad sizes are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from _train_fixtures import base_config, losses, packed_data, torchrun, train  # noqa: F401

# tiny-moe (8 experts, top-2) with every router option that changes what crosses the all-to-all: a capacity
# (dropped rows are never sent), the z-loss and the aux-loss-free bias; 4 sequences per forward on every run
MOE = ("model.preset=tiny-moe", "model.moe_capacity_factor=1.25", "model.router_z_loss_coef=0.001",
       "model.router_bias_update_rate=0.01", "train.micro_batch_size=4", "logging.sample_every=0", "train.steps=6",
       "checkpoint.every=3", "train.eval_every=3")


def rows(run_dir) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in row}


def assert_same_steps(got, expected, steps) -> None:
    got, expected = rows(got), rows(expected)
    for step in steps:
        for key in ("loss", "grad_norm", "aux_loss", "z_loss", "expert_load", "dropped_tokens"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-6), (step, key)


@pytest.fixture(scope="module")
def moe_base(tmp_path_factory, base_config):
    run_dir = tmp_path_factory.mktemp("moe_base") / "run"
    train(base_config, f"train.run_dir={run_dir}", *MOE)
    return run_dir


@pytest.fixture(scope="module")
def ep_run(tmp_path_factory, base_config):
    """2 ranks, the experts split over both (EP=2, expert FSDP over 1), activation checkpointing (the
    recomputation runs the all-to-alls again)."""
    run_dir = tmp_path_factory.mktemp("ep") / "run"
    torchrun(base_config, f"train.run_dir={run_dir}", *MOE, "train.expert_parallel=2",
             "train.activation_checkpointing=full")
    return run_dir


def test_expert_parallel_matches_one_process(ep_run, moe_base):
    assert_same_steps(ep_run, moe_base, range(1, 7))
    assert all(row["dropped_tokens"] > 0 for row in rows(moe_base).values())  # the capacity bites
    log = (ep_run / "train.log").read_text()
    assert "2 rank(s) on CPU" in log
    assert "expert parallel: each layer's 8 experts split over 2 ranks (4 each)" in log
    assert "expert parallel" not in (moe_base / "train.log").read_text()


def test_resume_on_one_rank_from_expert_parallel(ep_run, base_config, tmp_path, capsys):
    run_dir = tmp_path / "one"
    train(base_config, f"train.run_dir={run_dir}", *MOE, f"checkpoint.resume={ep_run}", "checkpoint.resume_step=3")
    assert_same_steps(run_dir, ep_run, range(4, 7))
    from pytrain.cli import main

    capsys.readouterr()  # the expert bias steers routing: no Hugging Face format can hold it
    assert main(["export", "--run", str(ep_run), "--out", str(tmp_path / "hf")]) == 2
    assert "model.router_bias_update_rate=0.01: the expert bias" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_resume_expert_parallel_from_one_rank(moe_base, base_config, tmp_path):
    run_dir = tmp_path / "ep"
    torchrun(base_config, f"train.run_dir={run_dir}", *MOE, "train.expert_parallel=2", f"checkpoint.resume={moe_base}",
             "checkpoint.resume_step=3")
    assert_same_steps(run_dir, moe_base, range(4, 7))


@pytest.mark.parametrize("overrides,message", [
    (("model.preset=tiny-moe", "train.expert_parallel=2"), "train.expert_parallel=2 must divide the world size 1"),
    (("model.preset=tiny", "train.expert_parallel=0"), "train.expert_parallel must be positive"),
])
def test_bad_expert_parallel_sizes_are_one_line_errors(base_config, tmp_path, capsys, overrides, message):
    capsys.readouterr()
    assert train(base_config, f"train.run_dir={tmp_path / 'run'}", *overrides, check=False) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "run").exists()


def test_expert_parallel_must_divide_the_experts_and_needs_experts():
    from pytrain.config import RunConfig
    from pytrain.errors import PytrainError
    from pytrain.train.resolve import resolve_run

    config = RunConfig()
    config.data.path, config.data.seq_len = "unused", 64
    config.train.batch_size, config.train.expert_parallel = 8, 2
    config.model.preset, config.model.num_experts = "tiny-moe", 7
    with pytest.raises(PytrainError, match=r"train.expert_parallel=2 must divide model.num_experts \(7\)"):
        resolve_run(config, 512, 2, "cpu")
    config.model.preset, config.model.num_experts = "tiny", None
    with pytest.raises(PytrainError, match="train.expert_parallel=2 needs a mixture-of-experts model"):
        resolve_run(config, 512, 2, "cpu")
    config.model.preset, config.train.compile = "tiny-moe", True
    with pytest.raises(PytrainError, match="train.compile with train.expert_parallel=2 is not supported"):
        resolve_run(config, 512, 2, "cpu")


def test_expert_major_order_is_the_plain_regrouping():
    """Rows arrive grouped by source rank, then by local expert; the order puts them by local expert, then
    source rank (written out here row by row)."""
    from pytrain.train.expert_parallel import expert_major_order

    received = torch.tensor([[2, 0, 3], [1, 4, 0]])  # [source rank, local expert] rows
    segments, row = {}, 0
    for r in range(2):
        for j in range(3):
            segments[r, j] = list(range(row, row + int(received[r, j])))
            row += int(received[r, j])
    expected = [i for j in range(3) for r in range(2) for i in segments[r, j]]
    assert expert_major_order(received, row).tolist() == expected


def _expert_parallel_layer_rank(rank: int, world: int, init_file: str) -> None:
    """One of 2 gloo ranks: the experts of one MoE layer split over both, each rank routing its own tokens;
    outputs and gradients against the plain token-by-token layer on each rank's tokens, dropless and with
    a capacity."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for capacity_factor in (None, 0.75):
            _check_expert_parallel_layer(rank, world, capacity_factor)
    finally:
        dist.destroy_process_group()


def _check_expert_parallel_layer(rank: int, world: int, capacity_factor) -> None:
    import copy
    import math

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from _moe_reference import plain_moe
    from pytrain.model import preset
    from pytrain.model.moe import MoE
    from pytrain.train.expert_parallel import apply_expert_parallel

    moe = MoE(preset("tiny-moe", moe_capacity_factor=capacity_factor))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in moe.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    plain = copy.deepcopy(moe)
    apply_expert_parallel(moe, init_device_mesh("cpu", (world,), mesh_dim_names=("expert",)))
    xs = [torch.randn(2, 12, 64, generator=generator).requires_grad_() for _ in range(world)]
    grads_out = [torch.randn(2, 12, 64, generator=generator) for _ in range(world)]

    ours = moe(xs[rank])
    (ours * grads_out[rank]).sum().backward()
    capacity = None if capacity_factor is None else math.ceil(capacity_factor * 24 * 2 / 8)
    plain_xs = [x.detach().clone().requires_grad_() for x in xs]
    expected = [plain_moe(plain, x, capacity) for x in plain_xs]  # every rank's tokens, one process
    sum((out * g).sum() for (out, _), g in zip(expected, grads_out)).backward()

    def close(got, want, what):  # fp32, summed in other orders: within 1e-5 of the largest entry
        torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5,
                                   msg=f"{what} (capacity factor {capacity_factor})")

    close(ours, expected[rank][0], "output")
    close(xs[rank].grad, plain_xs[rank].grad, "input gradient")
    dist.all_reduce(moe.gate.weight.grad)  # each rank's router saw its own tokens only
    close(moe.gate.weight.grad, plain.gate.weight.grad, "router gradient")
    local = slice(rank * 4, (rank + 1) * 4)  # this rank's 4 experts hold every rank's tokens' gradient
    for name in ("gate_proj", "up_proj", "down_proj"):
        close(getattr(moe.experts, name).grad.to_local(), getattr(plain.experts, name).grad[local], name)
    if capacity_factor is not None:
        assert 0 < moe.routing.dropped.item() == expected[rank][1]


def test_expert_parallel_layer_is_the_plain_layer(tmp_path):
    """The all-to-all dispatch and combine (and their backward) on 2 gloo ranks: each rank's output and input
    gradient, the router gradient summed over ranks and each rank's shard of the expert gradients are those
    of the plain layer on both ranks' tokens, dropless and with a capacity (dropped assignments stay home)."""
    import torch.multiprocessing as mp

    mp.spawn(_expert_parallel_layer_rank, args=(2, str(tmp_path / "pg")), nprocs=2, join=True)
