"""Two-process FSDP2 runs (gloo, CPU) launched with torchrun, against the single-process base run:
same losses from the same initial weights, exact-data resume across a change of rank count, and a
preempted 2-rank run that stops at one step on both ranks and resumes exactly."""

from __future__ import annotations

import json
import os
import signal

import pytest

from _train_fixtures import (SLOWED, base_config, base_run, end_run, logged_steps, losses,  # noqa: F401
                             packed_data, start_run, torchrun, train, train_command, val_losses, worker_pid)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, base_config):
    """The base run on 2 ranks, with activation checkpointing on every block (and an MFU peak to report)."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    torchrun(base_config, f"train.run_dir={run_dir}", "train.activation_checkpointing=full", "logging.peak_tflops=0.002")
    return run_dir


def assert_close(got: dict, expected: dict, steps) -> None:
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5), (step, got, expected)


def test_fsdp_matches_single_process(fsdp_run, base_run):
    assert_close(losses(fsdp_run), losses(base_run), range(1, 9))
    assert_close(val_losses(fsdp_run), val_losses(base_run), [4, 8])
    shards = sorted(p.name for p in (fsdp_run / "checkpoints" / "step_8").glob("*.distcp"))
    assert len(shards) == 2  # each rank wrote its own shard
    log = (fsdp_run / "train.log").read_text()
    assert "2 rank(s) on CPU" in log and "2 rank(s) x 4 sequences x 1 micro-batch(es)" in log


def test_resume_on_one_rank_from_two(fsdp_run, base_config, tmp_path):
    run_dir = tmp_path / "one_rank"
    train(base_config, f"train.run_dir={run_dir}", f"checkpoint.resume={fsdp_run}", "checkpoint.resume_step=4")
    assert_close(losses(run_dir), losses(fsdp_run), range(5, 9))
    assert "saved by 2 ranks" in (run_dir / "train.log").read_text()


def test_resume_on_two_hsdp_ranks_from_one(base_run, base_config, tmp_path):
    """HSDP with shard groups of 1 (pure replication over 2 ranks), resumed from the 1-rank checkpoint."""
    run_dir = tmp_path / "hsdp"
    torchrun(base_config, f"train.run_dir={run_dir}", f"checkpoint.resume={base_run}", "checkpoint.resume_step=4",
             "train.hsdp=true", "train.hsdp_shard_size=1", "logging.sample_every=0")
    assert_close(losses(run_dir), losses(base_run), range(5, 9))
    state = json.loads((run_dir / "checkpoints" / "step_8" / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["data"]["consumed"] == 8 * 8


def test_mfu_counts_tokens_per_device(fsdp_run):
    """tokens_per_s is the whole job's; MFU divides it by the 2 ranks before comparing with one device's peak."""
    flops_per_token = 881_664  # tiny preset, vocab 600, seq 64: see test_train.test_mfu_uses_logging_peak_tflops
    rows = [json.loads(line) for line in (fsdp_run / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "loss" in row]
    assert len(rows) == 8
    for row in rows:
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] / 2 * flops_per_token / 0.002e12, rel=1e-9)
    assert "MFU peak per device: 0.002 TFLOPS (logging.peak_tflops)" in (fsdp_run / "train.log").read_text()


def test_sigterm_to_one_rank_stops_both_at_one_step_with_an_async_checkpoint(fsdp_run, base_config, tmp_path):
    """SIGTERM reaches rank 1 only: rank 0 learns it from the step's all-reduce, both ranks stop after the same
    step and save (checkpoint.async, each write held back while training goes on). The run and its resume on
    2 ranks match the uninterrupted synchronous 2-rank run bit for bit."""
    overrides = ["train.activation_checkpointing=full", "logging.peak_tflops=0.002", "checkpoint.async=true"]
    run_dir = tmp_path / "preempted"
    command = train_command(base_config, f"train.run_dir={run_dir}", *overrides, "checkpoint.every=2", nproc=2,
                            script=SLOWED)
    proc, seen = start_run(command, run_dir, after_step=3, SLOW_STEP_S="0.5", SLOW_WRITE_S="0.5")
    os.kill(worker_pid(proc.pid, rank=1), signal.SIGTERM)
    err = end_run(proc, timeout=120)
    assert proc.returncode != 0  # the workers stopped with 143
    stopped = max(logged_steps(run_dir))
    assert seen < stopped < 8, err
    assert f"pytrain train: stopped by SIGTERM at step {stopped} of 8 after saving checkpoint step_{stopped}" in err
    checkpoint = run_dir / "checkpoints" / f"step_{stopped}"
    assert (run_dir / "checkpoints" / "latest").read_text() == checkpoint.name
    assert len(list(checkpoint.glob("*.distcp"))) == 2
    torchrun(base_config, f"train.run_dir={run_dir}", *overrides)
    assert f"resumed from {checkpoint} at step {stopped}" in (run_dir / "train.log").read_text()
    assert losses(run_dir) == losses(fsdp_run)  # steps 1..8

