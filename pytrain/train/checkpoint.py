"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP): written atomically, checksummed, loaded safely.

    RUN/checkpoints/step_N/          one complete checkpoint
        .metadata, __*_*.distcp      DCP: model and optimizer state, sharded, any rank count reads it
        rng_rank{r}.pt               rank r's RNG states (torch CPU, CUDA, python)
        train_state.json             step, tokens, data position, model config, batch shape, the data's
                                     checksums, and "integrity": "checksums.json"
        checksums.json               size and sha256 of every file above, written last
    RUN/checkpoints/latest           the name of the newest complete checkpoint, e.g. "step_400"

Every rank writes into `.tmp-step_N/` and hashes the files it wrote (while they are in the page cache);
rank 0 gathers the hashes, writes train_state.json and checksums.json, renames the directory to `step_N`
and then rewrites `latest` (each a single atomic rename). A crash at any moment leaves the previous
checkpoint and pointer intact, plus `.tmp-*` debris that the next run removes. Old checkpoints are
renamed away before being deleted, so a half-deleted one is never mistaken for a complete one.

Before a checkpoint is used its files are checked against checksums.json (on several ranks, each
checks its share of the files), and DCP's pickled parts are read through pytrain.train.dcp_safe,
so a corrupt or crafted checkpoint is refused with a one-line error instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pytrain.errors import PytrainError
from pytrain.fsutil import atomic_write_text, files_sha256
from pytrain.model.config import ModelConfig
from pytrain.safe_read import read_json
from pytrain.train.checkpoint_files import check_train_state, parse_step_name
from pytrain.train.checkpoint_hold import rename_unless_read
from pytrain.train.dcp_safe import SafeLoadPlanner, SafeReader, read_metadata
from pytrain.train.distributed import Distributed, all_gather_object, barrier, broadcast_object

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAIN_STATE = "train_state.json"
CHECKSUMS = "checksums.json"
CHECKSUMS_FORMAT = "pytrain-checkpoint-checksums"
INTEGRITY = "integrity"  # train_state.json's mark that checksums.json was written: deleting that file is no opt-out
TMP_PREFIX = ".tmp-"


def step_name(step: int) -> str:
    return f"step_{step}"


def _is_complete(path: Path) -> bool:
    """A renamed step directory: rank 0 writes train_state.json (and checksums.json) before the rename."""
    return all((path / name).is_file() for name in (TRAIN_STATE, ".metadata"))


def is_legacy(path: Path) -> bool:
    """Saved by a pytrain that did not record checksums: it loads (through the safe reader), unverified. A
    checkpoint whose train_state.json carries the integrity mark never is, with or without checksums.json."""
    if (path / CHECKSUMS).exists():
        return False
    try:
        state = read_json(path / TRAIN_STATE)
    except (OSError, ValueError):  # UnreadableInput is a ValueError
        return True  # verify_checkpoint reports what is wrong with train_state.json
    return not (isinstance(state, dict) and state.get(INTEGRITY) == CHECKSUMS)


def list_checkpoints(root: Path) -> dict[int, Path]:
    """Complete checkpoints under a checkpoints directory, by step."""
    found = {}
    if root.is_dir():
        for path in root.iterdir():
            step = parse_step_name(path.name)
            if step is not None and _is_complete(path):
                found[step] = path
    return dict(sorted(found.items()))


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint. (`latest` names it too, for people; a kill between a save's rename
    and the pointer's update leaves the pointer one behind, so it is not what decides.)"""
    found = list_checkpoints(root)
    return found[max(found)] if found else None


def find_checkpoint(path: str | os.PathLike, step: int | None = None) -> Path:
    """Resolve a run directory, a checkpoints directory or a step directory (+ optional step) to a checkpoint."""
    path = Path(path)
    if _is_complete(path):
        if step is not None and path.name != step_name(step):
            raise PytrainError(f"{path} is the checkpoint of {path.name}, not step {step}")
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    if not root.is_dir():
        raise PytrainError(f"{path}: no such run or checkpoint directory")
    found = list_checkpoints(root)
    if step is not None:
        if step not in found:
            have = ", ".join(map(str, found)) or "none"
            raise PytrainError(f"{root}: no complete checkpoint for step {step} (have: {have})")
        return found[step]
    latest = latest_checkpoint(root)
    if latest is None:
        raise PytrainError(f"{root}: no complete checkpoint")
    return latest


def remove_partial(root: Path) -> None:
    """Delete the debris of interrupted saves and deletions (rank 0, before anything is written)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(TMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(f".{LATEST}.tmp-"):  # an interrupted pointer update (fsutil.atomic_file)
                path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- integrity
def read_checksums(path: Path) -> dict[str, dict]:
    """checksums.json of checkpoint `path` as {file name: {"size", "sha256"}}, checked for shape."""
    where = path / CHECKSUMS
    try:
        record = read_json(where)
    except FileNotFoundError:
        raise PytrainError(f"{where}: missing, though this checkpoint was saved with it (its {TRAIN_STATE} says so); "
                           "a checkpoint that lost its checksums is not used unverified") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != CHECKSUMS_FORMAT or not isinstance(files, dict):
        raise PytrainError(f"{where}: not a pytrain checkpoint checksum list")
    for name, entry in files.items():
        if (Path(name).name != name or not isinstance(entry, dict) or not isinstance(entry.get("size"), int)
                or not isinstance(entry.get("sha256"), str)):
            raise PytrainError(f"{where}: malformed entry {name!r}")
    for required in (".metadata", TRAIN_STATE):
        if required not in files:
            raise PytrainError(f"{where}: does not list {required}")
    return files


def verify_checkpoint(path: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """Problems found in checkpoint `path` (empty when intact): sizes first, then sha256 of this rank's
    share of the files (every `world_size`-th file from `rank`), hashed in parallel."""
    if is_legacy(path):
        files = {}
    else:
        try:
            files = read_checksums(path)
        except PytrainError as error:
            return [str(error)]
    problems, to_hash = [], []
    for i, (name, entry) in enumerate(sorted(files.items())):
        if i % world_size != rank:
            continue
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            problems.append(f"{file}: missing")
            continue
        if size != entry["size"]:
            problems.append(f"{file}: {size} bytes, {entry['size']} when saved (truncated or replaced)")
        else:
            to_hash.append(file)
    for file, digest in files_sha256(to_hash).items():
        if digest != files[file.name]["sha256"]:
            problems.append(f"{file}: sha256 differs from the one recorded at save time (the file is corrupt)")
    if not problems and rank == 0:  # what loading will parse: refused here already, not only at load
        for check in (lambda: read_metadata(path / ".metadata"), lambda: read_train_state(path)):
            try:
                check()
            except PytrainError as error:
                problems.append(str(error))
    return problems


def summarize(problems: list[str]) -> str:
    """The first problem, and how many more there are (the whole list is `pytrain verify`'s)."""
    return problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")


def verify_checkpoint_everywhere(path: Path, d: Distributed) -> list[str]:
    """verify_checkpoint with the files split over the ranks; every rank gets every problem (a collective)."""
    mine = verify_checkpoint(path, d.rank, d.world_size)
    return sorted({problem for found in all_gather_object(mine) for problem in found})


def _own_files(tmp: Path, d: Distributed) -> list[Path]:
    """The files of a checkpoint this rank wrote: its DCP shards, its RNG state, and (rank 0) .metadata."""
    own = [p for p in tmp.iterdir() if p.name.startswith(f"__{d.rank}_") and p.suffix == ".distcp"]
    own.append(tmp / f"rng_rank{d.rank}.pt")
    if d.is_main:
        own.append(tmp / ".metadata")
    return own


def _describe(error: BaseException) -> str:
    failures = getattr(error, "failures", None)  # DCP's CheckpointException: {rank: (exception, traceback)}
    if isinstance(failures, dict) and failures:
        rank, cause = min(failures.items(), key=lambda item: item[0])
        return f"rank {rank}: {_describe(cause[0] if isinstance(cause, tuple) else cause)}"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}{f' ({error.filename})' if error.filename else ''}"
    return " ".join(str(error).split())[:300] or type(error).__name__


# ----------------------------------------------------------------------------- save
def rng_state() -> dict:
    """This rank's RNG states (torch CPU, CUDA, python) as a checkpoint records them: a copy, taken now."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(root: Path, step: int, model, optimizer, train_state: dict, d: Distributed,
                    keep_last_k: int) -> Path:
    """Write checkpoint `step` (a collective: every rank calls it) and return its directory.

    A failure on any rank (a full disk, a vanished mount) raises the same one-line PytrainError on every
    rank, after removing the partial directory; the previous checkpoint and `latest` stay as they were.
    """
    tmp = begin_save(root, step, d)
    model_state, optim_state = get_state_dict(model, optimizer)
    return complete_save(root, step, d, train_state, keep_last_k, rng_state(),
                         write=lambda: dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp))


def begin_save(root: Path, step: int, d: Distributed, group=None) -> Path:
    """The temporary directory checkpoint `step` is written into, empty and made by rank 0 (a collective)."""
    tmp = root / f"{TMP_PREFIX}{step_name(step)}"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    barrier(group)
    return tmp


def complete_save(root: Path, step: int, d: Distributed, train_state: dict, keep_last_k: int, rng: dict,
                  write, group=None) -> Path:
    """The rest of a save after begin_save (a collective over `group`): `write()` the DCP files (or wait for
    their background write), add this rank's RNG states `rng`, hash this rank's files, then rank 0 commits:
    train_state.json, checksums.json, the rename, `latest`, rotation. A failure on any rank is the same
    PytrainError on every rank, and leaves the previous checkpoint and `latest` as they were."""
    tmp = root / f"{TMP_PREFIX}{step_name(step)}"
    outcome: dict | str
    try:
        write()
        torch.save(rng, tmp / f"rng_rank{d.rank}.pt")
        own = _own_files(tmp, d)
        outcome = {p.name: {"size": p.stat().st_size, "sha256": digest} for p, digest in files_sha256(own).items()}
    except (Exception, CheckpointException) as error:  # a full disk, ...: reported on every rank below
        outcome = _describe(error)
    outcomes = all_gather_object(outcome, group)
    failed = [(rank, o) for rank, o in enumerate(outcomes) if isinstance(o, str)]
    if failed:
        if d.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _save_failed(step, root, failed[0][1])
    final = root / step_name(step)
    committed = None
    if d.is_main:
        try:
            _commit(tmp, final, root, outcomes, train_state, keep_last_k)
        except OSError as error:  # a full disk while writing the last small files: the same one line everywhere
            shutil.rmtree(tmp, ignore_errors=True)
            committed = _describe(error)
    committed = broadcast_object(committed, group=group)
    if committed is not None:
        raise _save_failed(step, root, committed)
    barrier(group)
    return final


def _save_failed(step: int, root: Path, reason: str) -> PytrainError:
    latest = latest_checkpoint(root)
    return PytrainError(f"saving checkpoint {step_name(step)} in {root} failed ({reason}); "
                        f"{f'the last complete checkpoint is {latest}' if latest else 'no checkpoint was kept'}")


def _commit(tmp: Path, final: Path, root: Path, outcomes: list, train_state: dict, keep_last_k: int) -> None:
    """Rank 0: train_state.json and checksums.json into the finished directory, rename it, point `latest` at
    it, drop checkpoints beyond keep_last_k."""
    files = {name: entry for o in outcomes for name, entry in o.items()}
    state_text = json.dumps({**train_state, INTEGRITY: CHECKSUMS}, indent=1)
    atomic_write_text(tmp / TRAIN_STATE, state_text)
    state_bytes = state_text.encode()
    files[TRAIN_STATE] = {"size": len(state_bytes), "sha256": hashlib.sha256(state_bytes).hexdigest()}
    atomic_write_text(tmp / CHECKSUMS, json.dumps({"format": CHECKSUMS_FORMAT, "version": 1,
                                                   "files": dict(sorted(files.items()))}, indent=1))
    if final.exists():  # the same step saved again (a resumed run ending where it started)
        _remove(final, root)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, final.name)  # also fsyncs `root`, making the rename durable
    if keep_last_k:
        for old_step in list(list_checkpoints(root))[:-keep_last_k]:
            _remove(root / step_name(old_step), root, unless_read=True)


def _remove(path: Path, root: Path, unless_read: bool = False) -> None:
    """Rename a checkpoint away, then delete it; with `unless_read`, one that `generate`/`export` is reading is left
    for a later save to remove (pytrain.train.checkpoint_hold)."""
    doomed = root / f"{TMP_PREFIX}delete-{path.name}"
    if not unless_read:
        os.replace(path, doomed)
    elif not rename_unless_read(path, doomed):
        return
    shutil.rmtree(doomed, ignore_errors=True)


# ----------------------------------------------------------------------------- load
def read_train_state(path: Path) -> dict:
    """train_state.json of checkpoint `path`, checked for the keys and types a resume needs."""
    where = path / TRAIN_STATE
    try:
        state = read_json(where)
    except OSError as error:
        raise PytrainError(f"{where}: unreadable ({error.strerror})") from None
    return check_train_state(state, str(where), parse_step_name(path.name))


def model_config_changes(saved: dict, current: dict) -> str:
    """'' when equal, else 'key: saved -> current, ...'. Fields an older pytrain did not save take their defaults."""
    names = {f.name for f in fields(ModelConfig)}
    saved = ModelConfig(**{k: v for k, v in saved.items() if k in names and v is not None}).to_dict()
    return ", ".join(f"{k}: {saved.get(k)} -> {current.get(k)}"
                     for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k))


def load_state(path: Path, state: dict, *, single_process: bool = False) -> None:
    """Fill `state` (a DCP state dict) from checkpoint `path` through the safe reader and planner."""
    read_metadata(path / ".metadata")  # its own one-line errors, before DCP wraps them in its own
    try:
        dcp.load(state, checkpoint_id=path, storage_reader=SafeReader(path), planner=SafeLoadPlanner(),
                 no_dist=single_process)
    except PytrainError:
        raise
    except (Exception, CheckpointException) as error:  # e.g. a value dcp_safe refused, a shape mismatch
        raise PytrainError(f"refusing checkpoint {path}: {_describe(error)}") from None


def _check_optimizer_state(path: Path, optim_state: dict) -> None:
    """A checkpoint saved with another optimizer (optim.name) lacks this optimizer's state: say so."""
    saved = read_metadata(path / ".metadata").state_dict_metadata
    for fqn, state in optim_state["state"].items():
        prefix = f"optim.state.{fqn}."
        if any(prefix + key not in saved for key in state):
            held = sorted(key[len(prefix):] for key in saved if key.startswith(prefix))
            raise PytrainError(f"cannot resume from {path}: it was saved with another optimizer (its state of {fqn} "
                               f"holds {', '.join(held) or 'nothing'}, this run's optim.name needs "
                               f"{', '.join(state)}); resume with the optim.name it was trained with")


def load_checkpoint(path: Path, model, optimizer, d: Distributed, model_config: dict) -> dict:
    """Restore model, optimizer and (when the rank exists in the checkpoint) RNG; return the train state.

    The caller has verified the checkpoint's files (verify_checkpoint_everywhere)."""
    state = read_train_state(path)
    changed = model_config_changes(state["model_config"], model_config)
    if changed:
        raise PytrainError(f"{path}: the checkpoint's model differs from this config ({changed})")
    model_state, optim_state = get_state_dict(model, optimizer)
    _check_optimizer_state(path, optim_state)
    loaded = {"model": model_state, "optim": optim_state}
    load_state(path, loaded)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    rng = path / f"rng_rank{d.rank}.pt"
    if rng.is_file():  # absent when resuming on more ranks than saved: the caller re-seeds
        try:
            _set_rng_state(torch.load(rng, weights_only=True))
        except Exception as error:
            raise PytrainError(f"{rng}: unreadable RNG state ({_describe(error)})") from None
        state["rng_restored"] = True
    return state
