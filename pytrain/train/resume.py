"""Resume policy: which checkpoint a run continues from, whether it may, and what changed since.

    checkpoint.resume=auto    this run's newest intact checkpoint (corrupt newer ones are skipped, with a
                              note); a fresh start when the run has none
    checkpoint.resume=none    a fresh start; refused when the run directory already has checkpoints
    checkpoint.resume=DIR     that run's (or checkpoint's) checkpoint; with resume_step, that step's

An explicitly chosen checkpoint that fails its checks is refused; a checkpoint of another model, a run
whose data was packed with another tokenizer, data re-packed with other documents since the checkpoint
(its packs' checksums, recorded per source, differ; checkpoint.resume_other_data=true continues anyway,
with a note), and model.init_from on a run directory whose checkpoints started from other weights (they
would be ignored) are refused before any file is written. Settings that may change on resume but make
the run something else than the saved run's continuation (the batch size, the learning-rate schedule:
train.steps, warmup, peak) are named in the "resumed from" line.
"""

from __future__ import annotations

from pathlib import Path

from pytrain.config import RunConfig
from pytrain.errors import PytrainError
from pytrain.fsutil import file_sha256
from pytrain.train import checkpoint as ckpt
from pytrain.train.distributed import Distributed, on_main
from pytrain.train.run_dir import RunDir
from pytrain.train.schedule import Schedule


def choose_checkpoint(config: RunConfig, d: Distributed, rundir: RunDir, config_source: str | None,
                      notes: list[str]) -> Path | None:
    """The checkpoint to resume from, verified on every rank (each checks its share of the files), or None
    for a fresh start. Checkpoints skipped or used without checksums are described in `notes`."""
    spec, step = config.checkpoint.resume, config.checkpoint.resume_step
    candidates = [Path(p) for p in on_main(d, lambda: _candidates(config, rundir, config_source))]
    explicit = spec != "auto" or step is not None
    for path in candidates:
        problems = ckpt.verify_checkpoint_everywhere(path, d)
        if not problems:
            if ckpt.is_legacy(path):
                notes.append(f"checkpoint {path.name} has no checksums.json (saved by an earlier pytrain): "
                             "resuming from it without an integrity check")
            return path
        if explicit:
            raise PytrainError(f"refusing to resume from {path}: {ckpt.summarize(problems)}")
        notes.append(f"skipped checkpoint {path.name}: {problems[0]}")
    if candidates:
        raise PytrainError(f"{rundir.checkpoints}: no intact checkpoint to resume from ({'; '.join(notes)}); "
                           "`pytrain verify` lists the problems, or train in another train.run_dir")
    return None


def _candidates(config: RunConfig, rundir: RunDir, config_source: str | None) -> list[str]:
    """Rank 0 (it sees the files): checkpoints to try, best first."""
    spec, step = config.checkpoint.resume, config.checkpoint.resume_step
    existing = ckpt.list_checkpoints(rundir.checkpoints)
    if existing and spec != "none":
        rundir.check_origin(config_source, config.checkpoint.resume_other_config)
        if spec == "auto":
            _check_init_from(config.model.init_from, rundir, existing)
    if spec == "none":
        if existing:
            raise PytrainError(f"{rundir.path} already has checkpoints (steps {', '.join(map(str, existing))}); "
                               "resume with checkpoint.resume=auto, or choose another train.run_dir")
        return []
    if spec == "auto":
        if step is not None:
            if not existing:
                raise PytrainError(f"checkpoint.resume_step={step}: {rundir.path} has no checkpoints")
            return [str(ckpt.find_checkpoint(rundir.path, step))]
        return [str(path) for _, path in sorted(existing.items(), reverse=True)]  # newest first
    return [str(ckpt.find_checkpoint(spec, step))]


def _check_init_from(init_from: str | None, rundir: RunDir, existing: dict[int, Path]) -> None:
    """model.init_from gives a new run its first weights; a run directory with checkpoints resumes from them, so an
    init_from other than the one the run started from would be silently ignored: refused. (Leaving it out when
    resuming a run that started from one ignores nothing.)"""
    from pytrain.config import load_config

    if init_from is None:
        return
    started_from = load_config(rundir.config_file).model.init_from if rundir.config_file.is_file() else None
    if started_from is not None and Path(started_from).resolve() == Path(init_from).resolve():
        return
    steps = ", ".join(map(str, existing))
    began = f"model.init_from={started_from}" if started_from else "fresh weights (no model.init_from)"
    raise PytrainError(f"model.init_from={init_from}: {rundir.path} already has checkpoints (steps {steps}) of a run "
                       f"that started from {began}, and resumes from them; to start a new run from {init_from}, "
                       "choose another train.run_dir")


def check_compatible(path: Path, model_config: dict, rundir: RunDir, data, allow_other_data: bool) -> list[str]:
    """Rank 0, before anything is written: the checkpoint's model and the run's tokenizer must match, and the
    data must be what the checkpoint trained on (else, with `allow_other_data`, a note). Returns the notes."""
    state = ckpt.read_train_state(path)
    changed = ckpt.model_config_changes(state["model_config"], model_config)
    if changed:
        raise PytrainError(f"cannot resume {path}: its model differs from this config ({changed}); "
                           "restore those settings, or train in another train.run_dir")
    run_tokenizer = rundir.tokenizer_file
    data_tokenizer_sha = data.manifest.get("tokenizer", {}).get("sha256")
    if run_tokenizer.is_file() and file_sha256(run_tokenizer) != data_tokenizer_sha:
        raise PytrainError(f"cannot resume {rundir.path}: the data ({data.pack_dir}) was packed with "
                           f"another tokenizer than the run's {run_tokenizer}; token ids would change meaning: "
                           "pack the data with that tokenizer, or train in another train.run_dir")
    changed = data_changes(state, data)
    if changed and not allow_other_data:
        raise PytrainError(f"cannot resume {path}: {changed[0]}; re-pack the data it trained on, set "
                           "checkpoint.resume_other_data=true to continue on this data anyway, or train in another "
                           "train.run_dir")
    return [f"resuming on other data than {path.name} trained on (checkpoint.resume_other_data=true): {change}"
            for change in changed]


def data_changes(state: dict, data) -> list[str]:
    """Each source whose training split differs from the one the checkpoint recorded (by the packs' checksums), one
    phrase each. Checkpoints from before the checksums were recorded have nothing to compare."""
    saved = state["data"].get("checksums")
    if not isinstance(saved, dict):
        return []
    changes = []
    for source in data.mixture.sources:
        if source.name in saved and saved[source.name] != source.checksum("train"):
            where = source.shards[0].path if len(source.shards) == 1 else source.shards[0].path.parent
            changes.append(f"{source.label} ({where}) holds other training data than the checkpoint was trained on "
                           "(its packs' checksums differ: re-packed since?)")
    return changes


def changes_since_saved(state: dict, batch_size: int, schedule: Schedule) -> list[str]:
    """What makes this resumed run differ from the saved run's own continuation, one phrase each."""
    changes = []
    if state["batch_size"] != batch_size:
        changes.append(f"train.batch_size changed from {state['batch_size']} to {batch_size}, so this is not the "
                       "original run's continuation")
    saved = state.get("schedule")  # absent from checkpoints of earlier pytrains: nothing to compare
    if isinstance(saved, dict) and saved != schedule.to_dict():
        what = ", ".join(f"{_SCHEDULE_NAMES[key]} {saved.get(key)} -> {value}"
                         for key, value in schedule.to_dict().items() if saved.get(key) != value)
        step = state["step"] + 1
        try:
            before = f"{Schedule(**saved).lr(step):.3g}"
        except (TypeError, ValueError):
            before = "?"
        changes.append(f"the learning-rate schedule changed ({what}): it is re-stretched over the new steps, so "
                       f"step {step} trains at lr {schedule.lr(step):.3g} where the saved run's schedule had "
                       f"{before}")
    return changes


_SCHEDULE_NAMES = {"peak": "optim.lr", "total": "train.steps", "warmup": "warmup steps", "name": "schedule.name",
                   "min_ratio": "schedule.min_lr_ratio", "decay_fraction": "schedule.decay_fraction"}
