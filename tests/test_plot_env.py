"""`pytrain plot` writes a valid PNG of one or several runs; `pytrain env` reports the machine and the kernel choice."""

from __future__ import annotations

import shutil
import struct
import sys

import pytest

from _train_fixtures import base_config, base_run, packed_data  # noqa: F401
from pytrain.cli import main
from pytrain.env import _kernel_choice
from pytrain.errors import PytrainError
from pytrain.plot import plot_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_plot_overlays_runs_into_a_png(base_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]  # same names: labelled by their paths
    for run in runs:
        run.mkdir(parents=True)
        shutil.copy(base_run / "metrics.jsonl", run / "metrics.jsonl")
    out = tmp_path / "both.png"
    assert main(["plot", "--run", str(runs[0]), "--run", str(runs[1]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert png_size(out) == (1500, 800)
    assert plot_runs([str(runs[0])]) == runs[0] / "plot.png"  # the default place
    assert png_size(runs[0] / "plot.png") == (1500, 800)


def test_plot_errors(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    with pytest.raises(PytrainError, match="metrics.jsonl: not found"):
        plot_runs([str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0\n{"step": 2, "loss": 1.0}\n')  # not the last
    with pytest.raises(PytrainError, match="metrics.jsonl:1: not JSON"):
        plot_runs([str(tmp_path)])


def test_plot_without_matplotlib_draws_the_loss_curves(base_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    shutil.copy(base_run / "metrics.jsonl", tmp_path / "metrics.jsonl")
    out = plot_runs([str(tmp_path)])
    assert png_size(out) == (900, 560)
    import zlib

    import numpy as np

    data = out.read_bytes()
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    pixels = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(560, 1 + 900 * 3)[:, 1:].reshape(560, 900, 3)
    from pytrain.chart import COLORS

    for color in (COLORS[0], COLORS[3]):  # the training curve and the validation points are drawn
        assert (pixels == color).all(axis=-1).sum() > 50, color


def test_env_reports_the_machine_and_the_kernel_choice(capsys):
    import torch

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("python", "torch", "triton", "native extension", "kernels", "transformers"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), key
    assert torch.__version__ in out
    if not torch.cuda.is_available():
        assert "PyTorch references for rms_norm, apply_rope, linear_cross_entropy: no CUDA device" in out
    assert _kernel_choice(True, True, None).startswith("Triton kernels")
    assert "PROBLEM" in _kernel_choice(True, False, "ModuleNotFoundError: No module named 'triton'")


def test_plot_out_replaces_only_a_png(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(PytrainError, match="exists and is not a PNG; refusing to replace it"):
        plot_runs([str(run)], run / "metrics.jsonl")
    assert (run / "metrics.jsonl").read_bytes() == before
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "lo')  # a torn last row (a run killed mid-write) is left out, not an error
    assert plot_runs([str(run)]) == run / "plot.png"
    plot_runs([str(run)])  # an earlier plot is replaced
