"""Crash-safe outputs: write under a temporary name, rename into place when complete.

A reader never sees a half-written file or directory under its final name: a crash
leaves only hidden `.NAME.tmp-*` debris, which every reader refuses (delete it by hand).
Temporary names get the permissions the final ones would have had (umask applied), not
the owner-only modes `tempfile` uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "wb"):
    """Open a temporary sibling of `final` for writing; rename it over `final` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_file(final, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False, replaceable=lambda path: not any(path.iterdir())):
    """Yield a temporary directory next to `final`; rename it to `final` on success.

    With `overwrite`, an existing `final` directory for which `replaceable(final)` holds (by
    default: it is empty) is replaced, and only once the new one is complete; anything else is
    refused, so a mistyped --out never deletes a user's folder.
    """
    from pytrain.errors import PytrainError

    final = Path(final)
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise PytrainError(f"{final}: already exists; choose another --out or pass --overwrite")
        if not final.is_dir() or not replaceable(final):
            raise PytrainError(f"{final}: exists and is not an output of this command; refusing to replace it even with --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, streamed in 1 MiB blocks (hashlib releases the GIL on each block)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(paths: list[Path], threads: int | None = None) -> dict[Path, str]:
    """sha256 of several files at once, one thread per file up to the usable cores (I/O and hashing overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    if not paths:
        return {}
    workers = max(1, min(len(paths), threads or len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(paths, pool.map(file_sha256, paths)))
