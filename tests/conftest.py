"""Shared fixtures: a real-text corpus, a small trained tokenizer, and a CLI runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pytrain
from pytrain.data.corpus import stdlib_documents

# Subprocesses (the CLI, torchrun workers, helper scripts run by path) import the same pytrain as these
# tests: the source checkout when the tests run from it (`python -m pytest tests`), else the installed one.
if pytrain._source_tree.is_source_checkout():
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pytrain._source_tree.ROOT),
                                                             os.environ.get("PYTHONPATH")]))

# A suite started where SIGINT is ignored (a script's `cmd &`, some CI runners) would pass that on to every
# process it starts, and the Ctrl-C tests would see pytrain ignore Ctrl-C. A Python handler here is reset to
# the default action in the processes the tests start, so they get Ctrl-C as a terminal delivers it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_cli(*args, check=True, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m pytrain ARGS...` and return the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pytrain", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"pytrain {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def snapshot(root) -> dict:
    """Every entry under `root` (hidden ones included) with its bytes or link target: equal before and after a
    refused command means it changed nothing there."""
    entries = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        entries[rel] = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return entries


def one_line_refusal(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused command printed (exit code 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


STALL_SCRIPT = Path(__file__).resolve().parent / "_stall_before_rename.py"


def check_second_writer_refused(args, final: Path, stall_at: Path, root: Path, finish: bool = True) -> None:
    """Two real `pytrain ARGS` processes writing `final`: the first holds it mid-write (stalled just before the
    rename of `stall_at`), the second must be refused in one line naming the first and change nothing under
    `root`; then (`finish`) the first completes as if alone and leaves no lock file."""
    from pytrain.fsutil import lock_file_of

    first = subprocess.Popen([sys.executable, str(STALL_SCRIPT), *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "STALL_AT": str(stall_at)})
    try:
        deadline = time.time() + 120
        while not Path(f"{stall_at}.stalled").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1]
            time.sleep(0.02)
        before = snapshot(root)
        line = one_line_refusal(run_cli(*args, check=False))
        assert f"{final}: another command is writing it (pid {first.pid} " in line, line
        assert f"(pytrain {args[0]}" in line, line
        assert snapshot(root) == before
        if not finish:
            return
        Path(f"{stall_at}.go").touch()
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        first.kill()
        first.wait()
    assert not lock_file_of(final).exists()


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return stdlib_documents(max_files=40)


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory, documents):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for doc in documents:
            handle.write(json.dumps({"text": doc}) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory, corpus_jsonl):
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", 600, "--out", out)
    return out
