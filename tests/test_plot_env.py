"""`pytrain plot` writes a valid PNG of one or several runs; `pytrain env` reports the machine and the kernel choice."""

from __future__ import annotations

import shutil
import struct
import sys
import zlib

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
    with pytest.raises(PytrainError, match="metrics.jsonl:1: not valid JSON"):
        plot_runs([str(tmp_path)])


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, read by the PNG specification's layout (length, type, data, CRC)."""
    assert data[:8] == PNG_SIGNATURE
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def png_pixels(data: bytes):
    """The RGB pixels of an 8-bit RGB, non-interlaced PNG whose rows all use filter 0 (None)."""
    import numpy as np

    chunks = png_chunks(data)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", dict(chunks)[b"IHDR"])
    assert (depth, color, interlace) == (8, 2, 0)
    raw = np.frombuffer(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")), np.uint8)
    rows = raw.reshape(height, 1 + width * 3)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_plot_without_matplotlib_draws_loss_lr_and_speed_panels(base_run, tmp_path, monkeypatch):
    """The fallback PNG holds three panels, one above the other, each with its own axes and curve: loss
    (training line and validation dots), learning rate and tokens/s, with labelled y axes."""
    import numpy as np

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    shutil.copy(base_run / "metrics.jsonl", tmp_path / "metrics.jsonl")
    out = plot_runs([str(tmp_path)])
    data = out.read_bytes()
    text = [body.split(b"\0", 1) for kind, body in png_chunks(data) if kind == b"tEXt"]
    assert [key for key, _ in text] == [b"Description"]
    assert text[0][1].decode("latin-1").splitlines() == [
        "loss vs step; y: loss; x: step", "learning rate vs step; y: learning rate; x: step",
        "training tokens/s vs step; y: tokens/s; x: step"]
    pixels = png_pixels(data)
    black = (pixels == 0).all(axis=-1)
    # The y axes: long runs of black pixels in one column, one per panel.
    axis_column = int(np.argmax(black.sum(axis=0)))
    column = black[:, axis_column].astype(np.int8)
    starts = np.flatnonzero(np.diff(np.concatenate([[0], column])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([column, [0]])) == -1) + 1
    axes = []
    for a, b in zip(starts, ends):  # a curve drawn across an axis breaks it for a few pixels: join those
        if axes and a - axes[-1][1] < 20:
            axes[-1] = (axes[-1][0], b)
        else:
            axes.append((a, b))
    axes = [(a, b) for a, b in axes if b - a > 100]
    assert len(axes) == 3, axes
    from pytrain.chart import COLORS

    for number, (top, bottom) in enumerate(axes):
        band = pixels[top:bottom, axis_column + 3:]
        assert (band == COLORS[0]).all(axis=-1).sum() > 50, number  # a curve inside each panel's axes
        if number == 0:
            assert (band == COLORS[3]).all(axis=-1).sum() > 50  # the validation points
        label = black[top:bottom, :24]  # the rotated y-axis label, left of the tick labels
        assert label.sum() > 40, number


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
