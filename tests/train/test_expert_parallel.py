"""Expert parallelism on two CPU ranks (gloo, torchrun) against the one-process run of the same micro-batches:
the same losses and router statistics (fp32, 1e-5), and exact resume across rank counts and expert-parallel
sizes (DCP reshards the experts); bad sizes are one-line errors."""

from __future__ import annotations

import json

import pytest

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
        for key in ("loss", "aux_loss", "z_loss", "expert_load", "dropped_tokens"):
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
