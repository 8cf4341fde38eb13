"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), written atomically.

    RUN/checkpoints/step_N/          one complete checkpoint
        .metadata, __*_*.distcp      DCP: model and optimizer state, sharded, any rank count reads it
        rng_rank{r}.pt               rank r's RNG states (torch CPU, CUDA, python)
        train_state.json             step, tokens, data position, model config, batch shape
    RUN/checkpoints/latest           the name of the newest complete checkpoint, e.g. "step_400"

Every rank writes into `.tmp-step_N/`; once all have finished, rank 0 writes train_state.json, renames
the directory to `step_N` and then rewrites `latest` (each a single atomic rename). A crash at any
moment leaves the previous checkpoint and pointer intact, plus `.tmp-*` debris that the next run
removes. Old checkpoints are renamed away before being deleted, so a half-deleted one is never
mistaken for a complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pytrain.errors import PytrainError
from pytrain.fsutil import atomic_write_text
from pytrain.model.config import ModelConfig
from pytrain.train.distributed import Distributed, barrier

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAIN_STATE = "train_state.json"
TMP_PREFIX = ".tmp-"


def step_name(step: int) -> str:
    return f"step_{step}"


def _is_complete(path: Path) -> bool:
    return (path / TRAIN_STATE).is_file() and (path / ".metadata").is_file()


def list_checkpoints(root: Path) -> dict[int, Path]:
    """Complete checkpoints under a checkpoints directory, by step."""
    found = {}
    if root.is_dir():
        for path in root.iterdir():
            name = path.name
            if name.startswith("step_") and name[5:].isdigit() and _is_complete(path):
                found[int(name[5:])] = path
    return dict(sorted(found.items()))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one when the pointer is missing or stale."""
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if _is_complete(named):
            return named
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
        raise PytrainError(f"{root}: no complete checkpoint to resume from")
    return latest


def remove_partial(root: Path) -> None:
    """Delete the debris of interrupted saves and deletions (rank 0, before anything is written)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(TMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict:
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
    """Write checkpoint `step` (a collective: every rank calls it) and return its directory."""
    tmp = root / f"{TMP_PREFIX}{step_name(step)}"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    torch.save(_rng_state(), tmp / f"rng_rank{d.rank}.pt")
    barrier()
    final = root / step_name(step)
    if d.is_main:
        atomic_write_text(tmp / TRAIN_STATE, json.dumps(train_state, indent=1))
        if final.exists():  # the same step saved again (a resumed run ending where it started)
            _remove(final, root)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, final.name)  # also fsyncs `root`, making the rename durable
        if keep_last_k:
            for old_step in list(list_checkpoints(root))[:-keep_last_k]:
                _remove(root / step_name(old_step), root)
    barrier()
    return final


def _remove(path: Path, root: Path) -> None:
    doomed = root / f"{TMP_PREFIX}delete-{path.name}"
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def read_train_state(path: Path) -> dict:
    return json.loads((path / TRAIN_STATE).read_text())


def load_checkpoint(path: Path, model, optimizer, d: Distributed, model_config: dict) -> dict:
    """Restore model, optimizer and (when the rank exists in the checkpoint) RNG; return the train state."""
    state = read_train_state(path)
    defaults = {f.name: f.default for f in fields(ModelConfig)}  # for fields an older pytrain did not save
    saved = {**defaults, **state["model_config"]}
    if saved != model_config:
        changed = ", ".join(f"{k}: {saved.get(k)} -> {model_config.get(k)}"
                            for k in sorted(set(saved) | set(model_config)) if saved.get(k) != model_config.get(k))
        raise PytrainError(f"{path}: the checkpoint's model differs from this config ({changed})")
    model_state, optim_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    rng = path / f"rng_rank{d.rank}.pt"
    if rng.is_file():  # absent when resuming on more ranks than saved: the caller re-seeds
        _set_rng_state(torch.load(rng, weights_only=True))
        state["rng_restored"] = True
    return state


def load_model_for_inference(run_dir: str | os.PathLike, step: int | None = None, device="cpu"):
    """A trained model from a run directory (latest checkpoint, or `step`), unsharded, in eval mode.

    Returns (model, model_config, tokenizer_path). Works in a plain process (no process group): DCP
    reassembles the full weights from however many shards were written.
    """
    from pytrain.config import load_config
    from pytrain.model import Llama

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise PytrainError(f"{run_dir}: not a run directory (no config.yaml)")
    section = load_config(config_path).model
    recorded = {k: v for k, v in vars(section).items() if k not in ("preset", "init_from") and v is not None}
    model_config = ModelConfig(**recorded)  # fields a run of an older pytrain did not record keep their defaults
    path = find_checkpoint(run_dir, step)
    with torch.device("meta"):
        model = Llama(model_config)
    model.to_empty(device=device)
    if model_config.tie_word_embeddings:  # to_empty gave each module its own tensor: share them again
        model.lm_head.weight = model.embed_tokens.weight
    state = model.state_dict()
    with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the intent here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load({"model": state}, checkpoint_id=path, no_dist=not dist.is_initialized())
    model.eval()
    return model, model_config, run_dir / "tokenizer.json"
