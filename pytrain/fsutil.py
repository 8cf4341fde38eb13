"""Crash-safe outputs: write under a temporary name, rename into place when complete.

A reader never sees a half-written file or directory under its final name: a crash
leaves only hidden `.NAME.tmp-*` debris, which every reader refuses (delete it by hand).
Temporary names get the permissions the final ones would have had (umask applied), not
the owner-only modes `tempfile` uses, and so does every file in an output directory, whichever
library wrote it.

Every output directory ends with `.pytrain-output.json`, written last: which command made it
and the name and size of every file in it. `--overwrite` replaces a directory only when that
marker is valid and the folder holds exactly those files (so a foreign file inside, or a
folder pytrain never wrote, is refused), and never a folder that is, holds or lies inside one
of the command's inputs. An output file (a tokenizer) gets the same record beside it, in
`.NAME.pytrain-output.json`, and is replaced only while that record matches its bytes.

One writer per output: every command holds an advisory lock (`flock` on `.NAME.lock` beside the
output) from before its checks until the output is renamed into place, so a second command writing
the same output is refused in one line naming the first, instead of both reporting success and the
last one silently winning. The lock dies with its process; the lock file is removed on release.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import socket
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from pytrain.errors import PytrainError
from pytrain.safe_read import read_json

OUTPUT_MARKER = ".pytrain-output.json"
MARKER_FORMAT = "pytrain-output"
MARKER_VERSION = 1
_HASHED_BELOW = 1 << 20  # small files (manifests, configs) also get a sha256 in the marker


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(root: Path) -> None:
    """Give every file and folder under `root` the mode a plain open()/mkdir() would have made.

    Libraries that write our outputs do not all follow the umask (safetensors' save_file writes
    0600 files), and colleagues on a shared machine must be able to read an export or a pack."""
    mask = _umask()
    for folder, dirs, names in os.walk(root):
        base = Path(folder)
        for name, mode in [(d, 0o777) for d in dirs] + [(n, 0o666) for n in names]:
            path = base / name
            if not path.is_symlink():
                os.chmod(path, mode & ~mask)


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



# ----------------------------------------------------------------------------- one writer at a time
def acquire_lock(lock_file: Path, busy: Callable[[str], str]):
    """The open `lock_file` (created if absent), holding its exclusive flock; else PytrainError(busy(holder)),
    `holder` being what the holder wrote into it (see name_holder).

    A previous holder may remove the file between our open and our flock (output_lock does on release);
    the lock is then on a file nobody else will open, so the open is retried until the locked file is
    the one under the name."""
    while True:
        handle = open(lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = " ".join(handle.read(500).split()) or "another process"
            handle.close()
            raise PytrainError(busy(holder)) from None
        try:
            named, held = os.stat(lock_file), os.fstat(handle.fileno())
            if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def name_holder(handle, what: str) -> None:
    """Write who holds the lock into it, for the message of the command it refuses."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({what}) since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()


def lock_file_of(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.parent / f".{final.name}.lock"


_held_outputs: dict[Path, int] = {}  # outputs this process holds (output_lock is reentrant)


@contextlib.contextmanager
def output_lock(final: str | os.PathLike, command: str):
    """Be the only writer of `final` (a file or directory) while the body runs; refuse in one line otherwise.

    Parent folders are created for the lock file, and removed again when they are still empty at the
    end (a refused command leaves nothing behind). The lock file is removed on release."""
    final = Path(final)
    key = final.absolute()
    if key in _held_outputs:
        _held_outputs[key] += 1
        try:
            yield
        finally:
            _held_outputs[key] -= 1
        return
    created = [parent for parent in [final.parent, *final.parent.parents] if not parent.exists()]
    lock_file = lock_file_of(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        handle = acquire_lock(lock_file, lambda holder: f"{final}: another command is writing it ({holder}); wait "
                                                        "for it to finish, or choose another output")
    except OSError as error:
        _remove_empty(created)
        raise PytrainError(f"{final}: cannot write there ({error.strerror or error})") from None
    except BaseException:
        _remove_empty(created)
        raise
    _held_outputs[key] = 1
    try:
        name_holder(handle, f"pytrain {command}")
        yield
    finally:
        del _held_outputs[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file)  # while holding it: a waiting opener then retries on a fresh file
        handle.close()
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


# ----------------------------------------------------------------------------- output marker
def _listing(root: Path) -> tuple[dict[str, int], list[str]]:
    """Regular files under `root` (relative POSIX path -> size), and every entry that is neither a
    regular file nor a folder (symlinks, sockets, ...): those are foreign."""
    files, odd = {}, []
    for folder, dirs, names in os.walk(root):
        base = Path(folder)
        for name in dirs:
            if (base / name).is_symlink():
                odd.append((base / name).relative_to(root).as_posix())
        for name in names:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file():
                odd.append(rel)
            else:
                files[rel] = path.stat().st_size
    return files, odd


def _marker_text(command: str, entries: list[dict]) -> str:
    from pytrain import __version__

    return json.dumps({"format": MARKER_FORMAT, "version": MARKER_VERSION, "command": command,
                       "pytrain_version": __version__, "files": entries}, indent=1) + "\n"


def write_output_marker(root: str | os.PathLike, command: str) -> None:
    """Record (last) that pytrain's `command` wrote `root` and exactly which files it holds."""
    root = Path(root)
    files, odd = _listing(root)
    files.pop(OUTPUT_MARKER, None)
    entries = []
    for rel, size in sorted(files.items()):
        entry = {"path": rel, "size": size}
        if size < _HASHED_BELOW:
            entry["sha256"] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        entries.append(entry)
    atomic_write_text(root / OUTPUT_MARKER, _marker_text(command, entries))


def _read_marker(where: Path) -> dict | None:
    try:
        marker = read_json(where)
    except (OSError, ValueError):  # UnreadableInput is a ValueError
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or not isinstance(marker.get("files"), list):
        return None
    for entry in marker["files"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and type(entry.get("size")) is int):
            return None
    return marker


def read_output_marker(root: str | os.PathLike) -> dict | None:
    """The marker's content when it is well formed, else None (absent, unreadable, foreign)."""
    return _read_marker(Path(root) / OUTPUT_MARKER)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _input_conflict(final: Path, inputs: Iterable) -> str | None:
    target = final.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if _inside(source, target):
            return f"it holds this command's input {given}"
        if _inside(target, source):
            return f"it lies inside this command's input {given}"
    return None


def why_not_replaceable(final: str | os.PathLike, command: str, inputs: Iterable = (),
                        legacy_files: Callable[[Path], set[str] | None] | None = None) -> str | None:
    """None when --overwrite may replace the directory `final`, else the reason it may not.

    Replaceable: an empty folder, or one whose valid output marker, written by the same
    `command`, lists exactly the files it holds, with their sizes. `legacy_files(final)` may recognise an
    output written before markers existed and return the exact set of files it must hold.
    Never a folder that is, holds or lies inside one of `inputs`.
    """
    final = Path(final)
    if final.is_symlink() or not final.is_dir():
        return "it is not a directory"
    conflict = _input_conflict(final, inputs)
    if conflict:
        return conflict
    files, odd = _listing(final)
    if odd:
        return f"it holds {odd[0]}, which pytrain does not write"
    if not files:
        return None
    marker = read_output_marker(final)
    if marker is not None:
        if marker.get("command") != command:
            return f"it is the output of `pytrain {marker.get('command')}`, not of `pytrain {command}`"
        expected = {entry["path"]: entry["size"] for entry in marker["files"]}
        files.pop(OUTPUT_MARKER, None)
    else:
        names = legacy_files(final) if legacy_files else None
        if names is None:
            return f"it has no valid {OUTPUT_MARKER}, so pytrain did not write it"
        expected = {name: files.get(name) for name in names}
    foreign = sorted(set(files) - set(expected))
    if foreign:
        return f"it holds {foreign[0]}, which pytrain did not write there"
    for name, size in sorted(expected.items()):
        if name not in files:
            return f"{name} is missing from it, so it is not the output pytrain wrote"
        if size != files[name]:
            return f"{name} changed size since pytrain wrote it"
    return None


# ----------------------------------------------------------------------------- an output file
def file_marker_of(final: str | os.PathLike) -> Path:
    """Where the record of an output file lies: `.NAME.pytrain-output.json` beside it."""
    final = Path(final)
    return final.parent / f".{final.name}{OUTPUT_MARKER}"


def why_file_not_replaceable(final: str | os.PathLike, command: str, inputs: Iterable = ()) -> str | None:
    """None when --overwrite may replace the file `final`, else the reason: only a regular file whose record
    beside it says `command` wrote it, with the size and sha256 it has now, and never one of `inputs`."""
    final = Path(final)
    if final.is_symlink() or not final.is_file():
        return "it is not a regular file"
    if any(final.resolve() == Path(given).resolve() for given in inputs):
        return "it is one of this command's inputs"
    record = file_marker_of(final)
    marker = _read_marker(record)
    if marker is None:
        return (f"it has no valid {record.name} beside it, so it is not known as `pytrain {command}`'s output "
                "(delete it yourself if it is yours to replace)")
    if marker.get("command") != command:
        return f"it is the output of `pytrain {marker.get('command')}`, not of `pytrain {command}`"
    entry = marker["files"][0] if len(marker["files"]) == 1 else {}
    if (entry.get("path") != final.name or entry.get("size") != final.stat().st_size
            or entry.get("sha256") != file_sha256(final)):
        return "it changed since pytrain wrote it"
    return None


def refuse_existing_file(final: str | os.PathLike, overwrite: bool, command: str, inputs: Iterable = ()) -> None:
    """Before a command works: a one-line refusal if it may not write (or replace) the file `final`."""
    final = Path(final)
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise PytrainError(f"{final}: already exists; choose another --out or pass --overwrite")
        reason = why_file_not_replaceable(final, command, inputs)
        if reason:
            raise PytrainError(f"{final}: refusing to replace it even with --overwrite: {reason}")


def write_output_file(final: str | os.PathLike, data: str | bytes, command: str) -> None:
    """Write `command`'s output file atomically, then its record beside it (what a later --overwrite checks)."""
    final = Path(final)
    with atomic_file(final) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    size = final.stat().st_size
    atomic_write_text(file_marker_of(final), _marker_text(command, [{"path": final.name, "size": size,
                                                                     "sha256": file_sha256(final)}]))


# ----------------------------------------------------------------------------- atomic directory
def _renameat2_exchange():
    """libc's renameat2(..., RENAME_EXCHANGE) (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories; False where the system cannot (then the caller renames twice)."""
    function = _renameat2_exchange()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        return False
    raise OSError(error, os.strerror(error), str(b))


def _old_name(final: Path, pid: int) -> Path:
    return final.with_name(f".{final.name}.old-{pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def recover_interrupted_replace(final: str | os.PathLike) -> None:
    """Undo an --overwrite swap killed between its two renames.

    Without an atomic exchange, replacing `final` moves it to `.NAME.old-PID` and then the new
    directory into place; a kill between the two leaves `final` missing. The next pytrain
    command that writes or reads `final` calls this: the old directory is renamed back (it
    was complete), or the error says exactly where it is.
    """
    final = Path(final)
    if final.exists() or final.is_symlink() or not final.parent.is_dir():
        return
    stale = []
    for candidate in final.parent.glob(f".{final.name}.old-*"):
        pid = candidate.name.rsplit("-", 1)[-1]
        if pid.isdigit() and candidate.is_dir() and not _pid_alive(int(pid)):
            stale.append(candidate)
    if not stale:
        return
    if len(stale) > 1:
        raise PytrainError(f"{final}: missing, and interrupted --overwrite runs left {', '.join(map(str, sorted(stale)))}; "
                           f"rename the one to keep to {final}")
    try:
        os.replace(stale[0], final)
    except OSError as error:
        raise PytrainError(f"{final}: missing after an interrupted --overwrite; the previous output is in {stale[0]} "
                           f"(could not rename it back: {error.strerror}); rename it to {final}") from None
    _fsync_dir(final.parent)
    print(f"pytrain: restored {final} from {stale[0].name}, left by an --overwrite that was killed mid-swap",
          file=sys.stderr)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False, *, command: str, inputs: Iterable = (),
                     legacy_files: Callable[[Path], set[str] | None] | None = None):
    """Yield a temporary directory next to `final`; mark it as `command`'s output and rename it
    to `final` on success, holding `final`'s output_lock throughout.

    An existing `final` is replaced only with `overwrite` and only if `why_not_replaceable`
    accepts it (checked before any work starts), and only once the new one is complete: by an
    atomic exchange where the system has one, else by two renames that
    `recover_interrupted_replace` can undo. Anything else is a one-line refusal that changes nothing.
    """
    final = Path(final)
    inputs = list(inputs)
    with output_lock(final, command):
        recover_interrupted_replace(final)
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise PytrainError(f"{final}: already exists; choose another --out or pass --overwrite")
            reason = why_not_replaceable(final, command, inputs, legacy_files)
            if reason:
                raise PytrainError(f"{final}: refusing to replace it even with --overwrite: {reason}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        old = _old_name(final, os.getpid())
        try:
            yield tmp
            _follow_umask(tmp)
            write_output_marker(tmp, command)
            if final.exists():
                # Checked again: the folder may have changed while this command worked.
                reason = why_not_replaceable(final, command, inputs, legacy_files)
                if reason:
                    raise PytrainError(f"{final}: refusing to replace it even with --overwrite: {reason}")
                if _exchange(tmp, final):
                    shutil.rmtree(tmp, ignore_errors=True)  # now the old output
                else:
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not final.exists():  # interrupted between the two renames
                os.replace(old, final)
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
