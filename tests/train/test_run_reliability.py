"""Runs and checkpoints under accidents and attacks: nothing runs from a file, nothing corrupt is used,
a refused command changes no file, one trainer per run directory, one line instead of a traceback."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from _train_fixtures import (BASE, ENV, base_config, base_run, losses, packed_data, train,  # noqa: F401
                             train_command)
from conftest import one_line_refusal as _one_line_error
from conftest import check_second_writer_refused, run_cli, snapshot

from pytrain.errors import PytrainError


def _copy_run(base_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rewrite_checksum(checkpoint: Path, name: str) -> None:
    """What an attacker who can write the checkpoint does: make checksums.json agree with a crafted file."""
    record = json.loads((checkpoint / "checksums.json").read_text())
    data = (checkpoint / name).read_bytes()
    record["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "checksums.json").write_text(json.dumps(record))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- code execution
@pytest.mark.parametrize("attack", ["metadata", "bytes value"])
def test_a_crafted_checkpoint_runs_no_code(base_run, base_config, tmp_path, attack):
    run = _copy_run(base_run, tmp_path)
    step8 = run / "checkpoints" / "step_8"
    marker = tmp_path / "pwned"
    if attack == "metadata":
        (step8 / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
        _rewrite_checksum(step8, ".metadata")
    else:  # a non-tensor value (an optimizer hyper-parameter) pickled inside a .distcp shard
        import dataclasses
        import io

        import torch

        from pytrain.train.dcp_safe import read_metadata

        metadata = read_metadata(step8 / ".metadata")
        index, info = next((i, s) for i, s in metadata.storage_data.items() if i.fqn.endswith(".lr"))
        buffer = io.BytesIO()
        torch.save(_RunsCode(marker), buffer)
        shard = step8 / info.relative_path
        offset = shard.stat().st_size
        with open(shard, "ab") as handle:
            handle.write(buffer.getvalue())
        metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(buffer.getvalue()))
        (step8 / ".metadata").write_bytes(pickle.dumps(metadata))
        _rewrite_checksum(step8, info.relative_path)
        _rewrite_checksum(step8, ".metadata")
    if attack == "bytes value":  # inference loads only the model: the optimizer's values are read on resume
        _check_resume_refused(base_config, run, marker)
        return
    for args in (["generate", "--run", run, "--prompt", "x", "--max-new-tokens", "2"],
                 ["export", "--run", run, "--out", tmp_path / "hf"]):
        line = _one_line_error(run_cli(*args, check=False))
        assert "refus" in line and str(step8) in line, line
        assert not marker.exists()
    assert not (tmp_path / "hf").exists()
    _check_resume_refused(base_config, run, marker)


def _check_resume_refused(base_config: Path, run: Path, marker: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytrain", "train", "--config", str(base_config),
                           f"train.run_dir={run}", "train.steps=9", "checkpoint.resume_step=8"],
                          capture_output=True, text=True, env=ENV)
    assert "refus" in _one_line_error(proc)
    assert not marker.exists()


# ----------------------------------------------------------------------------- corrupt checkpoints
def test_a_flipped_byte_is_caught_everywhere(base_run, base_config, tmp_path, capsys):
    run = _copy_run(base_run, tmp_path)
    step8 = run / "checkpoints" / "step_8"
    shard = next(step8.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40  # one exponent-ish bit in the middle of the weights
    shard.write_bytes(bytes(data))

    line = _one_line_error(run_cli("generate", "--run", run, "--prompt", "x", check=False))
    assert str(shard) in line and "sha256" in line
    proc = run_cli("verify", run, check=False)
    assert proc.returncode == 2 and f"{step8}: CORRUPT" in proc.stdout and "step_4: OK" in proc.stdout
    # resume: auto skips the corrupt newest checkpoint, says so, and continues exactly from step 4
    train(base_config, f"train.run_dir={run}")
    log = (run / "train.log").read_text()
    assert "skipped checkpoint step_8" in log and "resumed from" in log and "step_4 at step 4" in log
    assert losses(run) == losses(base_run)
    assert run_cli("verify", run).returncode == 0  # step 8 was saved again, intact


@pytest.mark.parametrize("victim, damage", [
    ("train_state.json", b'{"step": 8, "tok'),
    ("train_state.json", b'[1, 2]'),
    (".metadata", b"\x80\x04garbage"),
    ("rng_rank0.pt", b"not a zip file"),
])
def test_a_damaged_checkpoint_file_is_one_line(base_run, tmp_path, victim, damage):
    run = _copy_run(base_run, tmp_path)
    step8 = run / "checkpoints" / "step_8"
    (step8 / victim).write_bytes(damage)
    line = _one_line_error(run_cli("export", "--run", run, "--out", tmp_path / "hf", check=False))
    assert str(step8 / victim) in line
    _rewrite_checksum(step8, victim)  # even when the checksums were made to agree
    if victim == ".metadata":  # the only one of these inference reads (train state and RNG: on resume)
        line = _one_line_error(run_cli("export", "--run", run, "--out", tmp_path / "hf", check=False))
        assert str(step8) in line
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- run directory rules
def test_a_refused_resume_changes_no_file(base_run, base_config, tmp_path, corpus_jsonl):
    run = _copy_run(base_run, tmp_path)
    before = _snapshot(run)
    with pytest.raises(PytrainError, match="its model differs from this config .*hidden_size"):
        _train_raising(base_config, f"train.run_dir={run}", "train.steps=9", "model.hidden_size=128")
    assert _snapshot(run) == before
    # another data.path packed with another tokenizer: the run's tokenizer is never swapped
    other_tok = tmp_path / "other_tok.json"
    run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", 300, "--out", other_tok)
    other_data = tmp_path / "other_data"
    run_cli("pack", corpus_jsonl, "--tokenizer", other_tok, "--out", other_data, "--val-docs", 20)
    with pytest.raises(PytrainError, match="another tokenizer than the run's"):
        _train_raising(base_config, f"train.run_dir={run}", "train.steps=9", f"data.path={other_data}",
                       "model.vocab_size=600")
    assert _snapshot(run) == before


def _train_raising(config: Path, *overrides: str) -> None:
    """Run the trainer in-process and let its PytrainError through (the CLI would print it)."""
    import torch

    from pytrain.config import load_config
    from pytrain.train import train as train_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(load_config(config, list(overrides)), config_source=str(Path(config).resolve()))
    finally:
        torch.set_num_threads(threads)


def test_a_locked_run_is_refused_and_a_crashed_holder_does_not_block(base_run, base_config, tmp_path):
    run = _copy_run(base_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pytrain.train.run_dir import RunDir
        run = RunDir({str(run)!r})
        with run.lock():
            run.name_lock_holder()
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        proc = subprocess.run([sys.executable, "-m", "pytrain", "train", "--config", str(base_config),
                               f"train.run_dir={run}", "train.steps=9"], capture_output=True, text=True, env=ENV)
        line = _one_line_error(proc)
        assert "is being trained by pid" in line and str(holder.pid) in line
        assert _snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with open(run / ".lock", "a") as handle:  # the killed holder's lock died with it
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_two_configs_with_one_name_do_not_share_a_run(packed_data, tmp_path):
    config = json.loads(json.dumps(BASE))
    config["data"]["path"] = str(packed_data)
    config["train"]["steps"] = 2
    config["checkpoint"]["every"] = 2
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "run.yaml").write_text(yaml.safe_dump(config))
    first = run_cli("train", "--config", "a/run.yaml", cwd=tmp_path)
    assert first.returncode == 0
    before = _snapshot(tmp_path / "runs" / "run")
    second = run_cli("train", "--config", "b/run.yaml", "train.steps=3", cwd=tmp_path, check=False)
    line = _one_line_error(second)
    assert f"was created by {tmp_path / 'a' / 'run.yaml'}" in line and "checkpoint.resume_other_config" in line
    assert _snapshot(tmp_path / "runs" / "run") == before
    # the run's own resolved config continues it, and so does the explicit switch
    run_cli("train", "--config", "runs/run/config.yaml", "train.steps=3", cwd=tmp_path)
    run_cli("train", "--config", "b/run.yaml", "train.steps=4", "checkpoint.resume_other_config=true", cwd=tmp_path)
    assert max(losses(tmp_path / "runs" / "run")) == 4


def test_training_never_writes_into_a_folder_pytrain_did_not_make(packed_data, tmp_path, monkeypatch):
    """`train.run_dir: .` beside the config (or any folder of the user's) is refused before anything is written;
    a new or empty folder becomes a run, and a run continues."""
    from pytrain.train.run_dir import RunDir

    project = tmp_path / "project"
    project.mkdir()
    config = json.loads(json.dumps(BASE))
    config["data"]["path"] = str(packed_data)
    config["train"].update(steps=1, run_dir=".", eval_every=0)
    config["schedule"]["warmup_steps"] = 0
    config["logging"]["sample_every"] = 0
    (project / "config.yaml").write_text("# my notes on this experiment\n" + yaml.safe_dump(config))
    (project / "train.log").write_text("my own log\n")
    before = snapshot(project)
    line = _one_line_error(run_cli("train", "--config", "config.yaml", cwd=project, check=False))
    assert "train.run_dir .: refusing to train there: it holds config.yaml, and no run.json" in line, line
    assert snapshot(project) == before
    (project / "empty").mkdir()
    monkeypatch.chdir(project)
    train(project / "config.yaml", "train.run_dir=empty")
    train(project / "config.yaml", "train.run_dir=empty", "train.steps=2")
    assert max(losses(project / "empty")) == 2
    shutil.rmtree(project / "empty" / "checkpoints")  # a run killed before its first checkpoint: still a run
    assert RunDir(project / "empty").why_not_a_run() is None
    assert snapshot(project) == {**before, **{k: v for k, v in snapshot(project).items() if k.startswith("empty")}}


def _repacked(packed_data: Path, corpus_jsonl: Path, tokenizer_path: Path, out: Path) -> Path:
    """The same documents in another order (the 20 validation documents, packed last, kept): same tokenizer, same
    sizes, other training data."""
    lines = corpus_jsonl.read_text().splitlines(keepends=True)
    corpus = out.parent / "reordered.jsonl"
    corpus.write_text("".join(lines[:-20][::-1] + lines[-20:]))
    run_cli("pack", corpus, "--tokenizer", tokenizer_path, "--out", out, "--val-docs", 20)
    saved, now = (json.loads((d / "manifest.json").read_text())["splits"] for d in (packed_data, out))
    assert saved["train"]["tokens"] == now["train"]["tokens"] and saved["val"] == now["val"]
    assert saved["train"]["tokens_sha256"] != now["train"]["tokens_sha256"]
    return out


def test_resume_on_repacked_data_is_refused_unless_asked(base_run, base_config, packed_data, corpus_jsonl,
                                                         tokenizer_path, tmp_path):
    run = _copy_run(base_run, tmp_path)
    other = _repacked(packed_data, corpus_jsonl, tokenizer_path, tmp_path / "other")
    before = _snapshot(run)
    proc = subprocess.run([sys.executable, "-m", "pytrain", "train", "--config", str(base_config), f"train.run_dir={run}",
                           "train.steps=9", f"data.path={other}"], capture_output=True, text=True, env=ENV)
    line = _one_line_error(proc)
    assert f"cannot resume {run / 'checkpoints' / 'step_8'}: data.path ({other}) holds other training data" in line
    assert "checkpoint.resume_other_data=true" in line
    assert _snapshot(run) == before
    train(base_config, f"train.run_dir={run}", "train.steps=9", f"data.path={other}", "checkpoint.resume_other_data=true")
    log = (run / "train.log").read_text()
    assert f"note: resuming on other data than step_8 trained on (checkpoint.resume_other_data=true): data.path ({other})" in log
    assert max(losses(run)) == 9
    train(base_config, f"train.run_dir={run}", "train.steps=10", f"data.path={other}")  # step_9 trained on it: no note
    assert (run / "train.log").read_text().count("resuming on other data") == 1


def test_init_from_is_refused_on_a_run_that_has_checkpoints(base_run, base_config, tmp_path):
    """model.init_from would be ignored by a run that resumes from its checkpoints: refused, saying what to do; a
    run started from init_from still resumes with the same setting."""
    from pytrain.export import export_run

    run = _copy_run(base_run, tmp_path)
    hf = export_run(base_run, tmp_path / "hf")
    before = _snapshot(run)
    proc = subprocess.run([sys.executable, "-m", "pytrain", "train", "--config", str(base_config), f"train.run_dir={run}",
                           f"model.init_from={hf}"], capture_output=True, text=True, env=ENV)
    line = _one_line_error(proc)
    assert f"model.init_from={hf}: {run} already has checkpoints (steps 4, 8) of a run that started from fresh " \
           "weights" in line and "choose another train.run_dir" in line, line
    assert _snapshot(run) == before
    tuned = tmp_path / "tuned"
    short = ("checkpoint.every=1", "schedule.warmup_steps=0", "train.eval_every=0", "logging.sample_every=0")
    train(base_config, f"train.run_dir={tuned}", f"model.init_from={hf}", "train.steps=1", *short)
    train(base_config, f"train.run_dir={tuned}", f"model.init_from={hf}", "train.steps=2", *short)
    train(base_config, f"train.run_dir={tuned}", "train.steps=3", *short)  # without it: nothing is ignored either
    assert (tuned / "train.log").read_text().count("resumed from") == 2 and max(losses(tuned)) == 3


@pytest.mark.parametrize("command", ["export", "plot"])
def test_a_second_export_or_plot_of_the_same_output_is_refused(base_run, tmp_path, command):
    out = tmp_path / ("hf" if command == "export" else "curves.png")
    args = [command, "--run", base_run, "--out", out]
    check_second_writer_refused(args, out, out, tmp_path)
    assert out.exists()


def test_reading_the_latest_checkpoint_is_safe_against_rotation(base_run, base_config, tmp_path):
    """`export` while the run saves every step with keep_last_k: 1: the checkpoint export chose is held until it is
    read (the rotation leaves it for a later save), so the export succeeds."""
    run = _copy_run(base_run, tmp_path)
    trainer = subprocess.Popen(train_command(base_config, f"train.run_dir={run}", "train.steps=100000",
                                             "checkpoint.every=1", "checkpoint.keep_last_k=1", "train.eval_every=0",
                                             "logging.sample_every=0", "logging.every=100"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "step_3").exists() and time.time() < deadline and trainer.poll() is None:
            time.sleep(0.05)
        assert trainer.poll() is None, trainer.stderr.read()
        proc = run_cli("export", "--run", run, "--out", tmp_path / "hf", check=False)
        assert proc.returncode == 0, proc.stderr
        assert trainer.poll() is None  # it kept training (and rotating) meanwhile
    finally:
        trainer.kill()
        trainer.wait()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 2


def test_rotation_leaves_a_checkpoint_that_is_being_read(base_run, tmp_path, monkeypatch):
    """Deterministically: a checkpoint rotated away between a reader's choice and its lock is chosen again (the
    reader never reads a vanished one); one held by a reader is left by the rotation until released."""
    from pytrain.train import checkpoint as ckpt
    from pytrain.train import checkpoint_hold
    from pytrain.train.run_dir import RunDir

    run = _copy_run(base_run, tmp_path)
    root = run / "checkpoints"
    real_flock, rotated = checkpoint_hold.fcntl.flock, []

    def rotation_between_open_and_lock(fd, operation):
        if operation == checkpoint_hold.fcntl.LOCK_SH and not rotated:
            rotated.append(root / "step_8")
            os.replace(root / "step_8", root / ".tmp-delete-step_8")  # what the trainer's rotation does first
        return real_flock(fd, operation)

    monkeypatch.setattr(checkpoint_hold.fcntl, "flock", rotation_between_open_and_lock)
    with RunDir(run).checkpoint() as path:
        assert rotated and path == root / "step_4"
        monkeypatch.undo()
        ckpt._remove(path, root, unless_read=True)  # the rotation of a save made meanwhile
        assert path.is_dir() and ckpt.verify_checkpoint(path) == []
    ckpt._remove(path, root, unless_read=True)  # released: the next save's rotation removes it
    assert not path.exists()


# ----------------------------------------------------------------------------- corrupt data
@pytest.mark.parametrize("mode", ["full", "quick"])
def test_training_refuses_a_corrupt_pack(packed_data, base_config, tmp_path, mode):
    import numpy as np

    from pytrain.data import format as fmt

    data = tmp_path / "data"
    shutil.copytree(packed_data, data)
    tokens = fmt.tokens_path(data, "train")
    manifest = json.loads((data / "manifest.json").read_text())
    array = np.fromfile(tokens, dtype=manifest["dtype"])
    if mode == "full":
        array[:] = 0  # a zeroed file: only the checksums can tell
        message = "tokens.bin: changed since it was packed"
    else:
        array[5] = manifest["vocab_size"] + 7  # an id the embedding does not have
        message = f"token id {manifest['vocab_size'] + 7} >= vocab size"
    array.tofile(tokens)
    run = tmp_path / "run"
    with pytest.raises(PytrainError, match=f"failed the {mode} check .*{message}"):
        _train_raising(base_config, f"train.run_dir={run}", f"data.path={data}", f"data.verify={mode}")
    assert not run.exists()  # the refused start left nothing behind


def test_out_of_vocabulary_ids_are_one_line_even_unverified(packed_data, base_config, tmp_path):
    """data.verify=none skips the pack check; an id the embedding lacks still stops the step in one line."""
    import numpy as np

    from pytrain.data import format as fmt

    data = tmp_path / "data"
    shutil.copytree(packed_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    tokens = fmt.tokens_path(data, "train")
    np.full(tokens.stat().st_size // np.dtype(manifest["dtype"]).itemsize, manifest["vocab_size"] + 7,
            dtype=manifest["dtype"]).tofile(tokens)
    with pytest.raises(PytrainError, match=f"step 1: token id {manifest['vocab_size'] + 7} >= model.vocab_size"):
        _train_raising(base_config, f"train.run_dir={tmp_path / 'run'}", f"data.path={data}", "data.verify=none")


# ----------------------------------------------------------------------------- one line, never a traceback
def test_a_torn_metrics_row_does_not_block_resume(base_run, base_config, tmp_path):
    run = _copy_run(base_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step_8")
    (run / "checkpoints" / "latest").write_text("step_4")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "lo')  # the crash tore the last write
    train(base_config, f"train.run_dir={run}")
    assert losses(run) == losses(base_run)
    assert "dropped 1 unreadable row(s)" in (run / "train.log").read_text()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_full_disk_during_a_save_is_one_line(base_config, tmp_path, asynchronous):
    """Synchronous: step 8's save fails. Asynchronous: step 4's background save fails and the run stops at
    the next step boundary after it, on the same one line."""
    run = tmp_path / "run"
    failing = "step_4" if asynchronous else "step_8"
    script = tmp_path / "full_disk.py"
    script.write_text(textwrap.dedent(f"""
        import errno, sys
        from torch.distributed.checkpoint.filesystem import FileSystem
        from pytrain.cli import main
        create_stream = FileSystem.create_stream
        def full(self, path, mode):
            if "{failing}" in str(path) and "w" in mode:
                raise OSError(errno.ENOSPC, "No space left on device")
            return create_stream(self, path, mode)
        FileSystem.create_stream = full
        sys.exit(main(sys.argv[1:]))
        """))
    proc = subprocess.run([sys.executable, str(script), "train", "--config", str(base_config), f"train.run_dir={run}",
                           f"checkpoint.async={str(asynchronous).lower()}"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert f"saving checkpoint {failing}" in line and "No space left on device" in line
    if asynchronous:
        assert "no checkpoint was kept" in line and max(losses(run)) < 8
        assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
        return
    assert f"the last complete checkpoint is {run / 'checkpoints' / 'step_4'}" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_4"]


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("train.seed=1e20", "train.seed must be an integer in [0, 2^32)"),
])
def test_bad_numbers_in_the_config_are_one_line(base_config, override, message):
    line = _one_line_error(run_cli("train", "--config", base_config, override, check=False))
    assert message in line


def test_a_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  steps: 5\ndata:\n  path: x\ntrain:\n  batch_size: 4\n")
    line = _one_line_error(run_cli("train", "--config", path, check=False))
    assert f"{path}: line 5: key \"train\" appears twice" in line
    path = tmp_path / "run.json"
    path.write_text('{"train": {"steps": 5, "steps": 6}, "data": {"path": "x"}}')
    assert 'key "steps" appears twice' in _one_line_error(run_cli("train", "--config", path, check=False))


@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "--temperature must be >= 0"),
    (["--seed", str(2**70)], "--seed must be an integer in [0, 2^63)"),
    (["--prompt", b"caf\xe9".decode("utf-8", "surrogateescape")], "--prompt is not valid UTF-8"),
])
def test_bad_generate_arguments_are_one_line(base_run, args, message):
    if "--prompt" not in args:
        args = [*args, "--prompt", "x"]
    line = _one_line_error(run_cli("generate", "--run", base_run, *args, check=False))
    assert message in line


def test_a_crafted_config_runs_no_code(base_run, tmp_path):
    """YAML tags that build Python objects are refused, in a config file and in a run directory's config.yaml."""
    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.system [\"touch {marker}\"]"
    config = tmp_path / "run.yaml"
    config.write_text(f"train: {payload}\ndata: {{path: x}}\n")
    assert "cannot parse config" in _one_line_error(run_cli("train", "--config", config, check=False))
    run = _copy_run(base_run, tmp_path)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + f"logging: {payload}\n")
    line = _one_line_error(run_cli("generate", "--run", run, "--prompt", "x", check=False))
    assert "config.yaml" in line and not marker.exists()


def test_a_closed_pipe_is_not_an_error(packed_data):
    """`pytrain inspect DATA | head -1`: the reader leaving early ends the command quietly, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "pytrain", "inspect", str(packed_data), "--doc", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read()
    assert proc.wait() == 0 and err == "", err


def test_a_checkpoint_from_before_checksums_resumes_with_a_note(base_run, base_config, tmp_path):
    """Never start over while step folders exist: an earlier pytrain's checkpoint (no checksums.json) is
    used, unverified and said so; verify lists it as UNVERIFIED."""
    run = _copy_run(base_run, tmp_path)
    step4 = run / "checkpoints" / "step_4"
    _as_saved_before_checksums(step4)
    shutil.rmtree(run / "checkpoints" / "step_8")
    (run / "run.json").unlink()  # and a run directory from before run.json: still recognised as a run
    train(base_config, f"train.run_dir={run}")
    log = (run / "train.log").read_text()
    assert "checkpoint step_4 has no checksums.json" in log and "resumed from" in log
    assert losses(run) == losses(base_run)
    proc = run_cli("verify", run)
    assert "step_4: UNVERIFIED (no checksums.json" in proc.stdout and "step_8: OK" in proc.stdout


def _as_saved_before_checksums(checkpoint: Path) -> None:
    """What an earlier pytrain wrote: no checksums.json, and no integrity mark in train_state.json."""
    (checkpoint / "checksums.json").unlink()
    state = json.loads((checkpoint / "train_state.json").read_text())
    del state["integrity"]
    (checkpoint / "train_state.json").write_text(json.dumps(state, indent=1))


def test_deleting_checksums_json_does_not_switch_integrity_off(base_run, base_config, tmp_path):
    """A checkpoint this pytrain saved says so in train_state.json: without its checksums.json (deleted, and a
    tensor file corrupted) it is refused everywhere, never loaded as an old unverified one."""
    run = _copy_run(base_run, tmp_path)
    step8 = run / "checkpoints" / "step_8"
    (step8 / "checksums.json").unlink()
    shard = next(step8.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    before = _snapshot(run)
    line = _one_line_error(run_cli("export", "--run", run, "--out", tmp_path / "hf", check=False))
    assert f"refusing checkpoint {step8}" in line and "checksums.json: missing, though this checkpoint was saved" in line
    proc = run_cli("verify", run, check=False)
    assert proc.returncode == 2 and f"{step8}: CORRUPT" in proc.stdout and "UNVERIFIED" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "pytrain", "train", "--config", str(base_config),
                           f"train.run_dir={run}", "train.steps=9", "checkpoint.resume_step=8"],
                          capture_output=True, text=True, env=ENV)
    assert f"refusing to resume from {step8}: {step8 / 'checksums.json'}: missing" in _one_line_error(proc)
    assert _snapshot(run) == before and not (tmp_path / "hf").exists()


def test_verify_and_loading_agree_on_a_crafted_metadata(base_run, tmp_path):
    run = _copy_run(base_run, tmp_path)
    step8 = run / "checkpoints" / "step_8"
    (step8 / ".metadata").write_bytes(pickle.dumps(_RunsCode(tmp_path / "pwned")))
    _rewrite_checksum(step8, ".metadata")
    proc = run_cli("verify", run, check=False)
    assert proc.returncode == 2 and f"{step8}: CORRUPT" in proc.stdout and "refusing to load posix.system" in proc.stdout
    assert not (tmp_path / "pwned").exists()


def test_a_config_yaml_that_describes_another_model_is_refused(base_run, tmp_path):
    run = _copy_run(base_run, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["num_hidden_layers"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    line = _one_line_error(run_cli("export", "--run", run, "--out", tmp_path / "hf", check=False))
    assert "describes another model than" in line and "num_hidden_layers: 2 -> 1" in line


def test_triton_kernels_on_cpu_are_refused_before_any_file_changes(base_run, base_config, tmp_path):
    run = _copy_run(base_run, tmp_path)
    before = _snapshot(run)
    env = {k: v for k, v in ENV.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "pytrain", "train", "--config", str(base_config), f"train.run_dir={run}",
                           "train.steps=9", "train.kernels=triton"], capture_output=True, text=True, env=env)
    assert "train.kernels=triton needs a CUDA device" in _one_line_error(proc)
    assert _snapshot(run) == before


def test_generation_stops_at_the_packs_eos(base_run):
    from pytrain.train.run_dir import RunDir

    run = RunDir(base_run)
    assert json.loads(run.origin_file.read_text())["eos_id"] == run.eos_id(run.tokenizer()) == 0


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("# caf\u00e9\ndata: {path: x}\n".encode("latin-1"))
    assert f"{path}: not UTF-8 text" in _one_line_error(run_cli("train", "--config", path, check=False))


def _gloo_threads() -> list[str]:
    """This process's gloo threads (a process group's workers and its TCP transport loop), by their Linux names."""
    names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
    return sorted(name for name in names if "gloo" in name)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from Linux's /proc")
def test_a_finished_run_leaves_no_process_group_threads(base_config, tmp_path):
    """train() destroys its process group, threads included, before it returns: left alive (torch's DeviceMesh and
    FSDP2's state hold the group after destroy_process_group), a gloo worker dropping a finished collective's
    tensors while the interpreter shuts down aborts the process ("terminate called without an active exception",
    exit code -6 under torchrun) after a run that succeeded."""
    before = _gloo_threads()
    train(base_config, f"train.run_dir={tmp_path / 'run'}", "train.steps=2", "schedule.warmup_steps=0",
          "train.eval_every=0", "logging.sample_every=0")
    assert _gloo_threads() == before
