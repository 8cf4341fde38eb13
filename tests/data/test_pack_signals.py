"""Ctrl-C and SIGTERM stop `pytrain pack` within moments even while its main thread is inside one long native
call (csrc/interrupt.h): one line, the right exit status, nothing left on disk."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

_DOCUMENTS, _DOCUMENT_BYTES = 24, 1 << 20


@pytest.fixture(scope="module")
def long_words(tmp_path_factory) -> Path:
    """Documents that are each one 1 MB word of random letters: the BPE merges of each take a fraction of a second
    in native code, and --batch-mb 64 hands all of them to the encoder in one call (seconds, single-threaded)."""
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    path = tmp_path_factory.mktemp("words") / "words.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(_DOCUMENTS):
            handle.write(json.dumps({"text": letters[rng.integers(0, 26, _DOCUMENT_BYTES)].tobytes().decode()}) + "\n")
    return path


def _main_thread_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _wait_until_encoding(proc: subprocess.Popen, tmp_path: Path) -> None:
    """Until the output folder exists (imports and checks done) and then the main thread has been running, not
    waiting for the reader, for a while: it is inside the native encoder's one call over the whole batch."""
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    running = 0
    while running < 15 and time.time() < deadline and proc.poll() is None:
        running = running + 1 if _main_thread_state(proc.pid) == "R" else 0
        time.sleep(0.02)
    assert proc.poll() is None and time.time() < deadline, "the pack ended before it could be interrupted"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread states from /proc (Linux)")
@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_stops_a_long_native_encode_promptly(tmp_path, tokenizer_path, long_words, sig, status, word):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pytrain", "pack", str(long_words), "--tokenizer", str(tokenizer_path),
                             "--out", str(out), "--encoder", "fast", "--threads", "1", "--batch-mb", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_encoding(proc, tmp_path)
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert word in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # The whole batch takes seconds more to encode; a poll every 20 ms notices the signal at once.
    assert waited < 3, f"took {waited:.1f} s to stop after the signal"
    assert not out.exists() and list(tmp_path.iterdir()) == []
