"""SIGTERM/SIGINT to a real run: a checkpoint at the next step boundary, exit 128 + signal, an exact resume;
a second signal stops at once. The runs' steps are slowed (tests/_train_slowed.py) so that a signal sent
after step k lands in the middle of the run."""

from __future__ import annotations

import signal
import time

from _train_fixtures import (SLOWED, base_config, base_run, end_run, logged_steps, losses,  # noqa: F401
                             packed_data, start_run, train, train_command)


def test_sigterm_saves_at_the_next_step_and_the_resume_is_exact(base_config, base_run, tmp_path):
    run_dir = tmp_path / "preempted"
    command = train_command(base_config, f"train.run_dir={run_dir}", "checkpoint.every=0", script=SLOWED)
    proc, seen = start_run(command, run_dir, after_step=2, SLOW_STEP_S="0.5")
    said = _signal(proc, signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # delivered again at once (SLURM and torchrun both signal): the same request
    err = said + end_run(proc, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = max(logged_steps(run_dir))
    assert seen < stopped <= seen + 2 < 8  # the step in progress, at most one more: nothing trained is lost
    lines = err.strip().splitlines()
    assert sum("SIGTERM received: saving a checkpoint after the next step" in line for line in lines) == 1, err
    assert lines[-1].startswith(f"pytrain train: stopped by SIGTERM at step {stopped} of 8 after saving checkpoint "
                                f"step_{stopped}; resume from the latest checkpoint with the same command: "), err
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == f"step_{stopped}"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", f"step_{stopped}"]  # every=0: only this one
    train(base_config, f"train.run_dir={run_dir}", "checkpoint.every=0")
    assert losses(run_dir) == losses(base_run)  # bit for bit, steps 1..8


def test_a_second_signal_stops_at_once(base_config, tmp_path):
    run_dir = tmp_path / "interrupted"
    command = train_command(base_config, f"train.run_dir={run_dir}", "checkpoint.every=0", script=SLOWED)
    proc, seen = start_run(command, run_dir, after_step=1, SLOW_STEP_S="4")
    said = _signal(proc, signal.SIGINT)
    time.sleep(1.5)  # later than a duplicate delivery of the first
    proc.send_signal(signal.SIGINT)
    err = said + end_run(proc, timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("pytrain train: interrupted; resume from the latest checkpoint"), err
    assert max(logged_steps(run_dir)) == seen  # the slow step in progress was not finished
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


def _signal(proc, signum: int) -> str:
    """Send `signum` and read the run's stderr until it says it got it (the handler has run); what it read."""
    proc.send_signal(signum)
    said = [proc.stderr.readline()]
    while said[-1] and f"{signal.Signals(signum).name} received" not in said[-1]:
        said.append(proc.stderr.readline())
    return "".join(said)
