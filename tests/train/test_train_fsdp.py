"""Two-process FSDP2 runs (gloo, CPU) launched with torchrun, against the single-process base run:
same losses from the same initial weights, and exact-data resume across a change of rank count."""

from __future__ import annotations

import json

import pytest

from _train_fixtures import base_config, base_run, losses, packed_data, torchrun, train, val_losses  # noqa: F401


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
