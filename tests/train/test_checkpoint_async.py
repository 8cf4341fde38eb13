"""checkpoint.async: saves written in the background while training goes on, with the synchronous save's
guarantees: the same losses, every file hashed and listed, `latest` moved only by a complete save (a kill
in the middle leaves the previous one), and a bit-exact resume."""

from __future__ import annotations

import json
import signal
import time

import pytest
from _train_fixtures import (SLOWED, base_config, base_run, end_run, losses, packed_data, start_run,  # noqa: F401
                             train, train_command, wait_for_file)

from pytrain.train.checkpoint import read_checksums, verify_checkpoint


@pytest.fixture(scope="module")
def async_run(tmp_path_factory, base_config):
    """The base run with checkpoint.async, each background write held back for half a second while training
    goes on (a copy that still changed with training would be caught by the resume below)."""
    import torch.distributed.checkpoint.state_dict_saver as saver

    run_dir = tmp_path_factory.mktemp("async") / "run"
    save = saver.save

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return save(*args, **kwargs)

    saver.save = slow  # async_save's background thread calls it; the test's process is the trainer
    try:
        train(base_config, f"train.run_dir={run_dir}", "checkpoint.async=true")
    finally:
        saver.save = save
    return run_dir


def test_async_saves_change_nothing_and_are_complete(async_run, base_run):
    assert losses(async_run) == losses(base_run)  # bit for bit
    checkpoints = async_run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_4", "step_8"]
    assert (checkpoints / "latest").read_text() == "step_8"
    for step in ("step_4", "step_8"):
        path = checkpoints / step
        assert sorted(read_checksums(path)) == sorted(p.name for p in path.iterdir() if p.name != "checksums.json")
        assert verify_checkpoint(path) == []
        assert json.loads((path / "train_state.json").read_text())["integrity"] == "checksums.json"
    log = (async_run / "train.log").read_text()
    assert f"saved checkpoint {checkpoints / 'step_4'} (training paused" in log and "written in the background" in log
    # the run's summary names the last checkpoint, after its background save completed
    assert log.index(f"saved checkpoint {checkpoints / 'step_8'}") < log.index(f"checkpoint: {checkpoints / 'step_8'}")


def test_resume_from_an_async_checkpoint_is_exact(async_run, base_run, base_config, tmp_path):
    resumed = tmp_path / "resumed"
    train(base_config, f"train.run_dir={resumed}", f"checkpoint.resume={async_run}", "checkpoint.resume_step=4")
    expected = losses(base_run)
    assert losses(resumed) == {step: expected[step] for step in range(5, 9)}


def test_kill_during_an_async_save_keeps_the_last_checkpoint(base_config, base_run, tmp_path):
    """Step 4's background save stalls after its files are written; training goes on to step 6 meanwhile,
    whose save waits for it; SIGKILL then. `latest` stays at step 2 and the same command resumes exactly."""
    run_dir = tmp_path / "killed"
    command = train_command(base_config, f"train.run_dir={run_dir}", "checkpoint.async=true", "checkpoint.every=2",
                            script=SLOWED)
    proc, _ = start_run(command, run_dir, after_step=6, STALL_STEP="4")  # trained on past the stalled save
    checkpoints = run_dir / "checkpoints"
    wait_for_file(proc, checkpoints / ".tmp-step_4" / ".metadata")  # the background write may still be running
    assert not (checkpoints / "step_4").exists()
    proc.send_signal(signal.SIGKILL)
    end_run(proc, timeout=60)
    assert (checkpoints / "latest").read_text() == "step_2"
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == ["latest", "step_2"]
    train(base_config, f"train.run_dir={run_dir}", "checkpoint.async=true", "checkpoint.every=2")
    assert losses(run_dir) == losses(base_run)
    assert "resumed from" in (run_dir / "train.log").read_text()

