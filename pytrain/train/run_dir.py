"""A run directory: its layout, its lock, which config made it, and loading its trained model.

    RUN/config.yaml        the resolved config of the latest (re)start
    RUN/run.json           what makes the folder recognisably a run, written first: which config file created
                           the run (a guard against two configs sharing a name) and the data's EOS id
    RUN/tokenizer.json     the training data's tokenizer
    RUN/train.log, RUN/metrics.jsonl, RUN/tensorboard/, RUN/checkpoints/ (pytrain.train.checkpoint)
    RUN/.lock              held (flock) by the process training the run

Training writes only into a run directory pytrain made: a new or empty folder, or one holding run.json
(or, from before run.json, checkpoints). Any other folder (`train.run_dir: .` beside the config, a
project folder) is refused before anything is written, so no file of the user's is ever replaced.

`pytrain generate`, `export`, `demo` and the trainer's samples all load through `RunDir`, so a
checkpoint is always verified against its checksums before its weights are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

from pytrain.errors import PytrainError
from pytrain.fsutil import acquire_lock, atomic_file, atomic_write_text, name_holder
from pytrain.safe_read import read_json

CONFIG = "config.yaml"
ORIGIN = "run.json"
TOKENIZER = "tokenizer.json"
LOCK = ".lock"


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_file = self.path / CONFIG
        self.origin_file = self.path / ORIGIN
        self.tokenizer_file = self.path / TOKENIZER
        self.metrics_file = self.path / "metrics.jsonl"
        self._lock_handle = None

    @property
    def checkpoints(self) -> Path:
        from pytrain.train.checkpoint import CHECKPOINTS

        return self.path / CHECKPOINTS

    def why_not_a_run(self) -> str | None:
        """None when training may write into this folder (absent, empty but for its lock, or a run pytrain
        wrote), else the reason."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        if not self.path.is_dir():
            return "it is not a directory"
        entries = sorted(entry.name for entry in self.path.iterdir() if entry.name != LOCK)
        if not entries or self._is_run_record(self._record()):
            return None
        from pytrain.train.checkpoint import list_checkpoints

        if list_checkpoints(self.checkpoints):  # a run of a pytrain from before run.json
            return None
        return f"it holds {entries[0]}, and no {ORIGIN}: pytrain did not make it a run directory"

    @staticmethod
    def _is_run_record(record: dict) -> bool:
        """run.json as record() writes it: the creating config (or null) and when it was created."""
        return "config" in record and type(record.get("created")) in (int, float)

    def claim(self) -> None:
        """Make a new or empty folder a run directory before training starts (`pytrain demo` writes its data
        into the run's folder first)."""
        self.record(None, None)

    def require(self) -> None:
        if not self.config_file.is_file():
            raise PytrainError(f"{self.path}: not a run directory (no {CONFIG}); pass a folder written by "
                               "`pytrain train` or `pytrain demo`")

    # ------------------------------------------------------------------ which config made the run
    def _record(self) -> dict:
        try:
            record = read_json(self.origin_file)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def origin(self) -> str | None:
        """The config file that created this run, or None (made in Python, or by an older pytrain)."""
        origin = self._record().get("config")
        return origin if isinstance(origin, str) else None

    def record(self, config_source: str | None, eos_id: int | None) -> None:
        """run.json: the creating config (kept from the first start) and the data's EOS id (what generation
        stops at: the pack's, which `--eos-token` may have chosen, not a guess from token names)."""
        record = self._record()
        record.setdefault("config", config_source)
        record.setdefault("created", time.time())
        record["eos_id"] = eos_id
        atomic_write_text(self.origin_file, json.dumps(record) + "\n")

    def check_origin(self, config_source: str | None, allow_other: bool) -> None:
        """Refuse to continue a run created by another config file, unless told to (or it is the run's own
        config.yaml)."""
        origin = self.origin()
        if origin is None or config_source is None or allow_other:
            return
        if Path(config_source) in (Path(origin), self.config_file.resolve()):
            return
        raise PytrainError(f"{self.path} was created by {origin}, not {config_source}: give this config its own "
                           f"train.run_dir, or set checkpoint.resume_other_config=true to continue that run with it")

    def write_run_files(self, resolved_yaml: str, tokenizer_source: Path, config_source: str | None,
                        eos_id: int | None) -> None:
        """Rank 0, once every check of a (re)start has passed: name the lock holder, write run.json (first: it
        is what makes the folder recognisably a run), remove the debris of interrupted saves, write the
        resolved config and the data's tokenizer."""
        from pytrain.train.checkpoint import remove_partial

        self.name_lock_holder()
        self.record(config_source, eos_id)
        remove_partial(self.checkpoints)
        atomic_write_text(self.config_file, resolved_yaml)
        if tokenizer_source.is_file():
            with atomic_file(self.tokenizer_file) as handle:
                handle.write(tokenizer_source.read_bytes())

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def lock(self):
        """Hold the run's lock while training it. flock dies with its process, so a crash never leaves the
        run locked; a second trainer gets a one-line error naming the holder. A folder that is not a run
        (why_not_a_run) is refused before anything is created. If the body raises (a refused start), a lock
        file or run directory this call created is removed again, so nothing changed."""
        reason = self.why_not_a_run()
        if reason:
            raise PytrainError(f"train.run_dir {self.path}: refusing to train there: {reason}; choose a new or "
                               "empty train.run_dir (pytrain never writes over files it did not create)")
        created_dir = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock_file = self.path / LOCK
        created_lock = not lock_file.exists()
        handle = acquire_lock(lock_file, lambda holder: f"{self.path} is being trained by {holder}; wait for it to "
                                                        "finish, or choose another train.run_dir")
        self._lock_handle = handle
        try:
            yield
        except BaseException:
            if created_lock:
                os.unlink(lock_file)
                if created_dir and not any(self.path.iterdir()):
                    os.rmdir(self.path)
            raise
        finally:
            self._lock_handle = None
            handle.close()  # releases the flock

    def name_lock_holder(self) -> None:
        """Write who holds the lock into it (once the start is accepted), for a second trainer's message."""
        name_holder(self._lock_handle, "pytrain train")

    # ------------------------------------------------------------------ the trained model
    def model_config(self):
        from pytrain.config import load_config
        from pytrain.model import ModelConfig

        self.require()
        section = load_config(self.config_file).model
        # None: a field an older pytrain did not record (it keeps ModelConfig's default)
        return ModelConfig(**{k: v for k, v in vars(section).items() if k not in ("preset", "init_from") and v is not None})

    def data_paths(self) -> list[str]:
        """The data this run trains on, as its config.yaml names it: data.path, or each mixture source's path."""
        from pytrain.config import load_config

        self.require()
        data = load_config(self.config_file).data
        return [data.path] if data.path else [entry["path"] for entry in data.mixture or []]

    @contextlib.contextmanager
    def checkpoint(self, step: int | None = None):
        """The latest (or `step`'s) checkpoint, verified against its checksums, and held while the body reads it
        (the trainer's keep_last_k rotation leaves it alone until then: pytrain.train.checkpoint_hold)."""
        from pytrain.train.checkpoint import find_checkpoint, is_legacy, verify_checkpoint
        from pytrain.train.checkpoint_hold import held_for_reading

        self.require()
        with held_for_reading(lambda: find_checkpoint(self.path, step), "this command") as path:
            self._refuse_if_damaged(path, verify_checkpoint(path))
            if is_legacy(path):
                print(f"note: {path} has no checksums.json (saved by an earlier pytrain): loaded without an integrity "
                      "check", file=sys.stderr)
            yield path

    def _refuse_if_damaged(self, path: Path, problems: list[str]) -> None:
        from pytrain.train.checkpoint import summarize

        if problems:
            raise PytrainError(f"refusing checkpoint {path}: {summarize(problems)}; `pytrain verify {self.path}` "
                               "lists the intact checkpoints (pass one with --step)")

    def load_model(self, step: int | None = None, device="cpu"):
        """(model, model_config): the trained model from a verified checkpoint, unsharded, in eval mode.

        Works in a plain process (no process group): DCP reassembles the full weights from however many
        shards were written."""
        with self.checkpoint(step) as path:
            model_config = self._model_config_of(path)
            return self._load_weights(path, model_config, device), model_config

    @staticmethod
    def _load_weights(path: Path, model_config, device):
        import torch
        import torch.distributed as dist

        from pytrain.model.families import build_model
        from pytrain.model.materialize import materialize
        from pytrain.train.checkpoint import load_state

        with torch.device("meta"):
            model = build_model(model_config)
        materialize(model, device)  # DCP fills it below
        with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the intent here
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            load_state(path, {"model": model.state_dict()}, single_process=not dist.is_initialized())
        model.eval()
        return model

    def load_sharded_model(self, d, step: int | None = None, dtype: str = "fp32"):
        """(model, model_config, checkpoint path): the trained model sharded over the process group by FSDP2
        (each rank holds 1/W of the weights, computing in `dtype`), in eval mode; what a model too large for
        one device is evaluated with. Every rank checks its share of the checkpoint's checksums."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        from pytrain.train.checkpoint import find_checkpoint, load_state, verify_checkpoint_everywhere
        from pytrain.train.checkpoint_hold import held_for_reading
        from pytrain.train.parallelize import build_model

        self.require()
        with held_for_reading(lambda: find_checkpoint(self.path, step), "this command") as path:
            self._refuse_if_damaged(path, verify_checkpoint_everywhere(path, d))
            model_config = self._model_config_of(path)
            model = build_model(model_config, d, dtype=dtype)
            state = get_model_state_dict(model)
            load_state(path, {"model": state})
        set_model_state_dict(model, state)
        model.eval()
        return model, model_config, path

    def _model_config_of(self, path: Path):
        """This run's ModelConfig, once checkpoint `path` is known to hold that model."""
        from pytrain.train.checkpoint import model_config_changes, read_train_state

        model_config = self.model_config()
        changed = model_config_changes(read_train_state(path)["model_config"], model_config.to_dict())
        if changed:
            raise PytrainError(f"{self.config_file} describes another model than {path} holds ({changed}); restore "
                               "the run's config.yaml")
        return model_config

    def tokenizer(self):
        from pytrain.tokenizer.files import load_tokenizer

        return load_tokenizer(self.tokenizer_file)

    def eos_id(self, tokenizer) -> int | None:
        """The EOS id the data was packed with (run.json); for runs from before it was recorded, found by name."""
        from pytrain.tokenizer.files import EOS_CANDIDATES, special_token_id

        record = self._record()
        if "eos_id" in record and (record["eos_id"] is None or type(record["eos_id"]) is int):
            return record["eos_id"]
        return special_token_id(tokenizer, None, EOS_CANDIDATES, "EOS", self.tokenizer_file)


def load_model_for_inference(run_dir: str | os.PathLike, step: int | None = None, device="cpu"):
    """(model, model_config, tokenizer path) of a run: the Python entry point the README shows."""
    run = RunDir(run_dir)
    model, model_config = run.load_model(step, device)
    return model, model_config, run.tokenizer_file


def verify_run(path: str | os.PathLike) -> None:
    """`pytrain verify RUN_DIR`: check every checkpoint of a run against its checksums; print one line per
    checkpoint, raise PytrainError listing the corrupt ones."""
    from pytrain.train.checkpoint import is_legacy, list_checkpoints, verify_checkpoint

    run = RunDir(path)
    found = list_checkpoints(run.checkpoints)
    if not found:
        raise PytrainError(f"{run.path}: no complete checkpoint to verify")
    bad = []
    for step, checkpoint in found.items():
        problems = verify_checkpoint(checkpoint)
        state = "OK" if not is_legacy(checkpoint) else "UNVERIFIED (no checksums.json: saved by an earlier pytrain)"
        print(f"{checkpoint}: {state if not problems else 'CORRUPT: ' + '; '.join(problems)}")
        bad += problems
    if bad:
        raise PytrainError(f"{run.path}: {len(bad)} problem(s) in its checkpoints (listed above); resume, "
                           "generate and export use only the intact ones")
