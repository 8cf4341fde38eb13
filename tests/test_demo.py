"""`pytrain demo` end to end at the reduced size: every stage's output lands in one run directory that the
other commands accept, and the summary names them and the next commands."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from pytrain.cli import main
from pytrain.fsutil import write_output_marker


def _crashed_demo(out):
    """What a demo killed during its pack leaves: its marker (written first), the corpus, pack debris."""
    out.mkdir(parents=True)
    write_output_marker(out, "demo")
    (out / "corpus.jsonl").write_text('{"text": "x"}\n')
    (out / ".data.tmp-1234").mkdir()
    return out


def test_demo_small_end_to_end(tmp_path, capsys):
    out = _crashed_demo(tmp_path / "demo")  # the retry after a crash just works, without --overwrite
    proc = run_cli("demo", "--small", "--steps", "8", "--out", out, env={"OMP_NUM_THREADS": "1"})
    assert f"{out}: an earlier demo did not finish; starting it again" in proc.stdout
    for stage in range(1, 7):
        assert f"[{stage}/6]" in proc.stdout
    assert "step 8/8" in proc.stderr and "eval step 8" in proc.stderr  # live progress and evaluation
    assert proc.stdout.count(" -> ") == 3  # the samples
    assert f"pytrain generate --run {out}" in proc.stdout and f"pytrain plot --run {out}" in proc.stdout
    assert f"pytrain inspect {out}/data" in proc.stdout
    samples = [line for line in proc.stdout.splitlines() if " -> " in line]
    assert (out / "samples.txt").read_text().splitlines() == samples
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # with or without matplotlib
    earlier = f'pytrain generate --run {out} --step 4 --prompt "def " --temperature 0'
    assert earlier in proc.stdout  # the summary's earlier-checkpoint example works as printed
    assert run_cli("generate", "--run", out, "--step", "4", "--prompt", "def ", "--temperature", "0",
                   "--max-new-tokens", "4").returncode == 0

    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] > 0 and manifest["splits"]["val"]["documents"] > 0
    assert (out / "checkpoints" / "latest").read_text() == "step_8"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and "val_loss" in rows[-1]
    hf_config = json.loads((out / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForCausalLM"] and hf_config["vocab_size"] == 384
    assert (out / "hf" / "model.safetensors").is_file() and (out / "hf" / "tokenizer.json").is_file()

    assert main(["demo", "--small", "--out", str(out)]) == 2  # a finished run is kept unless --overwrite
    assert "already exists (a finished demo); pass --overwrite" in capsys.readouterr().err
    (out / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\nlater")  # a later `pytrain plot`: still finished, still kept
    assert main(["demo", "--small", "--out", str(out)]) == 2
    assert "a finished demo" in capsys.readouterr().err


@pytest.mark.parametrize("damage, reason", [
    (lambda out: (out / ".pytrain-output.json").unlink(), "has no demo .pytrain-output.json"),
    (lambda out: (out / "notes.txt").write_text("mine"), "holds notes.txt, which the demo does not write"),
    (lambda out: (out / "checkpoints").mkdir() or (out / "checkpoints" / "mine").write_text("x"),
     "holds checkpoints/mine, which the trainer does not write"),
    (lambda out: (out / "checkpoints" / "step_2").mkdir(parents=True) or (out / "checkpoints" / "step_2" / "mine.txt")
     .write_text("x"), "holds checkpoints/step_2/mine.txt, which the trainer does not write"),
    (lambda out: (out / "tensorboard").mkdir() or (out / "tensorboard" / "notes.md").write_text("x"),
     "holds tensorboard/notes.md, which TensorBoard's writer does not write"),
])
def test_demo_deletes_only_its_own_folder(tmp_path, capsys, damage, reason):
    out = _crashed_demo(tmp_path / "demo")
    damage(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for extra in ([], ["--overwrite"]):
        assert main(["demo", "--small", "--out", str(out), *extra]) == 2
        assert f"{reason}, so the demo will not delete it" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
