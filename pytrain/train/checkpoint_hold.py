"""Reading a checkpoint while its run trains on: a shared flock on the step directory that rotation respects.

A reader (`generate`, `export`, the demo's samples) takes a shared `flock` on the step directory it chose
and then checks the directory still has its name; the trainer's rotation (checkpoint.keep_last_k) takes
the exclusive lock without waiting before renaming an old checkpoint away, and leaves one that is being
read for a later save to remove. So a reader never sees its checkpoint vanish mid-read, and training
never waits for a reader. A checkpoint rotated away between a reader's choice and its lock is simply
chosen again (the newest one then). Where the file system has no flock, reading is unprotected, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable

from pytrain.errors import PytrainError

ATTEMPTS = 20  # choices in a row a reader may lose to rotation (each needs a whole checkpoint save)


def _same_directory(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _hold(path: Path) -> int | None:
    """An open descriptor of directory `path` holding its shared lock, or None when it was removed or renamed
    before the lock was taken."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with contextlib.suppress(OSError):  # no flock on this file system: read unprotected
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits at most for one rename by the rotation
    if _same_directory(fd, path):
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def held_for_reading(choose: Callable[[], Path], what: str):
    """Yield the checkpoint `choose()` names, protected from rotation until the body ends. When rotation removes
    the chosen one before it is held, `choose` is asked again (it names the newest); `what` says what the
    caller reads, for the one-line error if that keeps happening."""
    for _ in range(ATTEMPTS):
        path = choose()
        fd = _hold(path)
        if fd is not None:
            break
    else:
        raise PytrainError(f"{path}: removed by the training run's checkpoint rotation {ATTEMPTS} times in a row "
                           f"while {what} opened it; retry, or pass --step of a checkpoint the run keeps")
    try:
        yield path
    finally:
        os.close(fd)


def rename_unless_read(path: Path, target: Path) -> bool:
    """Rename checkpoint directory `path` to `target` unless a reader holds it (then leave it and return False)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            pass  # no flock on this file system
        os.replace(path, target)
        return True
    finally:
        os.close(fd)
