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
from pathlib import Path

import pytest
import yaml
from _train_fixtures import BASE, ENV, base_config, base_run, losses, packed_data, train  # noqa: F401
from conftest import run_cli

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


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


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
    for step in ("step_4", "step_8"):
        (run / "checkpoints" / step / "checksums.json").unlink()
    shutil.rmtree(run / "checkpoints" / "step_8")
    train(base_config, f"train.run_dir={run}")
    log = (run / "train.log").read_text()
    assert "checkpoint step_4 has no checksums.json" in log and "resumed from" in log
    assert losses(run) == losses(base_run)
    proc = run_cli("verify", run)
    assert "step_4: UNVERIFIED (no checksums.json" in proc.stdout and "step_8: OK" in proc.stdout


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
