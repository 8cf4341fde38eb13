"""What is a checkpoint folder, and what its train_state.json may hold (pytrain/train/checkpoint_files.py): odd
folder names are not checkpoints, malformed states are refused in one line naming the file and the key, by
every command that reads them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from _train_fixtures import base_config, base_run, packed_data  # noqa: F401
from conftest import run_cli

from pytrain.cli import main
from pytrain.train.checkpoint_files import parse_step_name


@pytest.mark.parametrize("name, step", [
    ("step_0", 0), ("step_12", 12), (f"step_{2**63 - 1}", 2**63 - 1),
    ("step_-1", None), ("step_007", None), ("step_1e3", None), ("step_١٢", None), ("step_", None), ("step_12x", None),
    (f"step_{2**63}", None), ("step_99999999999999999999", None), ("step_+3", None), ("step_ 3", None), ("Step_3", None),
])
def test_step_names(name, step):
    assert parse_step_name(name) == step


def _copy_run(base_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


def _write_state(checkpoint: Path, state: dict) -> None:
    """What an attacker (or a script) that can write the checkpoint does: a state with checksums that agree."""
    data = json.dumps(state).encode()
    (checkpoint / "train_state.json").write_bytes(data)
    record = json.loads((checkpoint / "checksums.json").read_text())
    record["files"]["train_state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "checksums.json").write_text(json.dumps(record))


def _refused_in_process(capsys, args) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


_BAD_STATES = [
    (lambda s: s.update(step=-5), "step must be an integer in [0,"),
    (lambda s: s.update(step=10**30), "step must be an integer in [0,"),
    (lambda s: s.update(step=4), "step is 4, but the folder is step_8"),
    (lambda s: s.update(step="8"), "step must be an integer"),
    (lambda s: s.update(tokens=-1), "tokens must be an integer"),
    (lambda s: s.update(world_size=0), "world_size must be an integer in [1,"),
    (lambda s: s.update(seq_len=10**20), "seq_len must be an integer in [1,"),
    (lambda s: s["data"].update(consumed=-1), "data.consumed must be an integer"),
    (lambda s: s["data"].update(consumed="x"), "data.consumed must be an integer"),
    (lambda s: s["data"].update(walks=[1]), "data.walks must be a mapping"),
    (lambda s: s["data"].update(walks={"at": {"data": [0, -1, 0]}}), "data.walks.at['data'] must be three integers"),
    (lambda s: s["model_config"].update(vocab_size="x"), "model_config.vocab_size must be int, got 'x'"),
    (lambda s: s["model_config"].update(rms_norm_eps=float("nan")), "model_config.rms_norm_eps must be float"),
    (lambda s: s["model_config"].update(num_hidden_layers=-1), "model_config: model.num_hidden_layers must be positive"),
    (lambda s: s["model_config"].update(family="nope"), "model_config: model.family"),
    (lambda s: s.update(model_config=[[1] * 1000] * 1000), "model_config must be a mapping, got [[1, 1, 1"),
]


@pytest.mark.parametrize("edit, message", _BAD_STATES)
def test_malformed_train_state_is_one_line_naming_file_and_key(base_run, tmp_path, capsys, edit, message):
    run = _copy_run(base_run, tmp_path)
    step8 = run / "checkpoints" / "step_8"
    state = json.loads((step8 / "train_state.json").read_text())
    edit(state)
    _write_state(step8, state)
    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    line = _refused_in_process(capsys, ["export", "--run", run, "--out", tmp_path / "hf"])
    assert f"{step8 / 'train_state.json'}: {message}" in line and len(line) < 1100
    assert main(["verify", str(run)]) == 2
    out = capsys.readouterr().out
    assert f"{step8}: CORRUPT" in out and message in out
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before and not (tmp_path / "hf").exists()


def test_malformed_train_state_through_the_cli(base_run, tmp_path):
    run = _copy_run(base_run, tmp_path)
    step8 = run / "checkpoints" / "step_8"
    state = json.loads((step8 / "train_state.json").read_text())
    state["data"]["consumed"] = -1  # resuming it was an IndexError from the sampler
    _write_state(step8, state)
    proc = run_cli("generate", "--run", run, "--prompt", "x", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "data.consumed must be an integer" in proc.stderr


def test_odd_folder_names_are_not_checkpoints(base_run, tmp_path, capsys):
    """Copies of step_4 under names pytrain never writes: none is listed, or taken for the latest (before,
    step_99999999999999999999 was the latest, and step_١٢ counted as step 12)."""
    run = _copy_run(base_run, tmp_path)
    for name in ("step_-1", "step_99999999999999999999", "step_1e3", "step_١٢", "step_007", "step_"):
        shutil.copytree(run / "checkpoints" / "step_4", run / "checkpoints" / name)
    assert main(["verify", str(run)]) == 0
    listed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [str(run / "checkpoints" / "step_4"), str(run / "checkpoints" / "step_8")]
    weights = {}
    for name, source, step in (("odd", run, []), ("latest", base_run, []), ("step4", base_run, ["--step", "4"])):
        assert main(["export", "--run", str(source), "--out", str(tmp_path / name), *step]) == 0
        weights[name] = (tmp_path / name / "model.safetensors").read_bytes()
    assert weights["odd"] == weights["latest"] != weights["step4"]
