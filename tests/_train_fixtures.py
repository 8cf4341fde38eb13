"""Shared by the training tests: data packed by `pytrain pack`, a tiny base run, and run helpers.

The base run (tiny model, 8 steps of 8 x 64 tokens, checkpoints at 4 and 8) is the reference the other
runs are compared with: resumed, accumulated, killed, and 2-process FSDP2 runs. Single-process runs go
through `pytrain.cli.main` in the test process (a subprocess would spend seconds importing torch); runs
that must be killed or use torchrun are subprocesses. Everything runs on one intra-op thread, so
in-process and subprocess runs do the same arithmetic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SLOWED = str(Path(__file__).parent / "_train_slowed.py")  # `pytrain train`, slowed where a test needs time to act

BASE = {
    "model": {"preset": "tiny"},
    "data": {"seq_len": 64},
    "optim": {"lr": 1e-2},
    "schedule": {"warmup_steps": 2},
    "train": {"steps": 8, "batch_size": 8, "eval_every": 4, "eval_max_batches": 2},
    "checkpoint": {"every": 4, "keep_last_k": 0},
    "logging": {"every": 1, "progress": "lines", "tensorboard": False, "sample_every": 8,
                "sample_prompts": ["def "], "sample_max_tokens": 8},
}


@pytest.fixture(scope="session")
def packed_data(tmp_path_factory, corpus_jsonl, tokenizer_path) -> Path:
    out = tmp_path_factory.mktemp("train_data") / "data"
    subprocess.run([sys.executable, "-m", "pytrain", "pack", str(corpus_jsonl), "--tokenizer", str(tokenizer_path),
                    "--out", str(out), "--val-docs", "20"], check=True, capture_output=True, env=ENV)
    return out


@pytest.fixture(scope="session")
def base_config(tmp_path_factory, packed_data) -> Path:
    config = json.loads(json.dumps(BASE))
    config["data"]["path"] = str(packed_data)
    path = tmp_path_factory.mktemp("train_config") / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, base_config) -> Path:
    run_dir = tmp_path_factory.mktemp("base_run") / "run"
    train(base_config, f"train.run_dir={run_dir}")
    return run_dir


def train_command(config: Path, *overrides: str, nproc: int = 1, script: str | None = None) -> list[str]:
    if nproc == 1:
        launcher = [sys.executable, script] if script else [sys.executable, "-m", "pytrain"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    *([script] if script else ["-m", "pytrain"])]
    return [*launcher, "train", "--config", str(config), *overrides]


def train(config: Path, *overrides: str, check: bool = True) -> int:
    """`pytrain train --config CONFIG OVERRIDES...` in this process; returns the exit status."""
    import torch

    from pytrain.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = main(["train", "--config", str(config), *overrides])
    finally:
        torch.set_num_threads(threads)
    if check and status != 0:
        raise AssertionError(f"pytrain train {' '.join(overrides)} exited with {status}")
    return status


def torchrun(config: Path, *overrides: str, nproc: int = 2) -> None:
    command = train_command(config, *overrides, nproc=nproc)
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-5000:]}")


def logged_steps(run_dir: Path) -> list[int]:
    try:
        rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(row)["step"] for row in rows if row.endswith("}") and '"loss"' in row]


def start_run(command: list[str], run_dir: Path, after_step: int, **env) -> tuple[subprocess.Popen, int]:
    """Start `command` and wait until it has logged `after_step`; return the process and the last step logged."""
    proc = subprocess.Popen(command, env={**ENV, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not logged_steps(run_dir) or max(logged_steps(run_dir)) < after_step:
        if proc.poll() is not None or time.monotonic() > deadline:
            end_run(proc, timeout=1)
            raise AssertionError(f"step {after_step} was never logged:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    return proc, max(logged_steps(run_dir))


def wait_for_file(proc: subprocess.Popen, path: Path, timeout: float = 180) -> None:
    """Wait until `path` exists while `proc` (of start_run or Popen) still runs; fail the test if it ends or
    `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            end_run(proc, timeout=1)
            raise AssertionError(f"{path} never appeared:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)


def end_run(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a run of start_run to end; its stderr. One that is still running after `timeout` seconds is
    killed with its descendants (torchrun's workers) and fails the test."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"still running after {timeout} s:\n{proc.communicate()[1][-3000:]}") from None


def worker_pid(launcher: int, rank: int) -> int:
    """The pid of the worker process of `rank` under the torchrun process `launcher`."""
    for pid in _descendants(launcher):
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return pid
    raise AssertionError(f"no worker of rank {rank} under torchrun (pid {launcher})")


def _descendants(pid: int) -> list[int]:
    try:
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [p for child in children for p in (child, *_descendants(child))]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss, from metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def val_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["val_loss"] for row in rows if "val_loss" in row}
