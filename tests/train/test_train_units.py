"""Trainer pieces without a run: LR schedules, optimizer groups, batch geometry, MFU peaks, checkpoint lookup."""

from __future__ import annotations

import pytest
import torch

from pytrain.config import OptimSection
from pytrain.errors import PytrainError
from pytrain.model import Llama, preset
from pytrain.train.checkpoint import find_checkpoint, latest_checkpoint, list_checkpoints
from pytrain.train.resolve import batch_geometry
from pytrain.train.metrics import mfu, peak_tflops_for
from pytrain.train.optim import build_optimizer
from pytrain.train.schedule import lr_at


def schedule(name, **kw):
    return [lr_at(s, peak=1.0, total=100, warmup=10, name=name, min_ratio=0.1, **kw) for s in range(1, 101)]


def test_warmup_then_each_decay_shape():
    for name in ("cosine", "linear", "constant", "wsd"):
        lrs = schedule(name)
        assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0), name  # linear warmup to the peak
    assert schedule("cosine")[-1] == pytest.approx(0.1) and schedule("linear")[-1] == pytest.approx(0.1)
    assert schedule("cosine")[54] == pytest.approx(0.55)  # halfway through the decay: the midpoint
    assert schedule("linear")[54] == pytest.approx(0.55)
    assert set(schedule("constant")[9:]) == {1.0}
    wsd = schedule("wsd", decay_fraction=0.2)
    assert set(wsd[9:80]) == {1.0} and wsd[-1] == pytest.approx(0.1) and wsd[89] == pytest.approx(0.55)
    for name in ("cosine", "linear", "wsd"):
        decay = schedule(name)[9:]
        assert all(a >= b for a, b in zip(decay, decay[1:])), name


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = Llama(preset("tiny", attention_bias=True, tie_word_embeddings=False))
    optimizer = build_optimizer(model, OptimSection(weight_decay=0.1), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in optimizer.param_groups[0]["params"]}
    kept = {names[id(p)] for p in optimizer.param_groups[1]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.0
    assert "embed_tokens.weight" in kept and "norm.weight" in kept and "layers.0.self_attn.q_proj.bias" in kept
    assert "lm_head.weight" in decayed and "layers.1.mlp.down_proj.weight" in decayed
    assert decayed.isdisjoint(kept) and len(decayed | kept) == len(names)


def testbatch_geometry():
    assert batch_geometry(32, None, 4) == (8, 1)
    assert batch_geometry(32, 2, 4) == (2, 4)
    with pytest.raises(PytrainError, match="divisible by the number of ranks"):
        batch_geometry(30, None, 4)
    with pytest.raises(PytrainError, match="multiple of train.micro_batch_size"):
        batch_geometry(32, 3, 2)


def test_peak_table_and_mfu():
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_for("NVIDIA H200") == 989.4
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_for("Some Future GPU") is None
    assert mfu(1000.0, 1e9, 2.0) == pytest.approx(0.5)
    assert mfu(1000.0, 1e9, None) is None


def _fake_checkpoint(root, step):
    path = root / f"step_{step}"
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"")
    (path / "train_state.json").write_text("{}")
    (path / "checksums.json").write_text("{}")  # complete = metadata and train state; contents are checked on use
    return path


def test_checkpoint_lookup(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    first, second = _fake_checkpoint(root, 2), _fake_checkpoint(root, 10)
    (root / ".tmp-step_12").mkdir()                   # an interrupted save: ignored
    (root / "step_11").mkdir()                        # incomplete: ignored
    assert list(list_checkpoints(root)) == [2, 10]
    assert latest_checkpoint(root) == second           # no pointer: the newest complete one
    (root / "latest").write_text("step_2")  # a pointer left behind by a kill between rename and pointer update
    assert find_checkpoint(tmp_path / "run") == second  # the newest complete checkpoint wins
    assert find_checkpoint(root, step=10) == second and find_checkpoint(second) == second
    with pytest.raises(PytrainError, match="no complete checkpoint for step 11 \\(have: 2, 10\\)"):
        find_checkpoint(tmp_path / "run", step=11)


@pytest.mark.parametrize("progress, tty", [("auto", False), ("auto", True), ("none", False)])
def test_run_logger_progress_modes(tmp_path, progress, tty):
    import io
    import json

    from pytrain.config import LoggingSection
    from pytrain.train.log import RunLogger

    class Terminal(io.StringIO):
        def isatty(self):
            return tty

    stream = Terminal()
    logger = RunLogger(tmp_path, LoggingSection(progress=progress, tensorboard=False), enabled=True, total_steps=10,
                       stream=stream)
    row = {"step": 5, "tokens": 640, "loss": 2.0, "ppl": 7.39, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 1234.0,
           "mfu": 0.41, "memory_gib": 1.5, "elapsed_s": 1.0}
    logger.log_step(row, eta_s=65)
    logger.log_eval({"step": 5, "tokens": 640, "val_loss": 2.1, "val_ppl": 8.17})
    logger.close()
    text = stream.getvalue()
    line = "step 5/10 | loss 2.0000 | ppl 7.39 | lr 1.00e-03 | gnorm 0.500 | 1.23k tok/s | mfu 41.0% | mem 1.50GiB | ETA 1:05"
    assert (line in text) == (progress != "none")
    assert ("\r" in text and "[##########..........]  50%" in text) == tty  # a redrawn bar only on a terminal
    assert "eval step 5 | val_loss 2.1000" in text
    assert line in (tmp_path / "train.log").read_text()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [row, {"step": 5, "tokens": 640, "val_loss": 2.1, "val_ppl": 8.17}]


def test_loss_scaler_follows_grad_scaler():
    """200 steps of random overflows: LossScaler's scale equals torch.amp.GradScaler's after every step."""
    from pytrain.train.precision import LossScaler

    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    reference = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=5)
    ours = LossScaler(2.0**16, growth_interval=5)
    overflows = torch.rand(200, generator=torch.Generator().manual_seed(0)) < 0.15
    for overflow in overflows.tolist():
        reference.scale(torch.ones(()))  # GradScaler creates its scale on first use
        weight.grad = torch.full((1,), float("inf") if overflow else 1.0)
        reference.step(optimizer)
        reference.update()
        ours.update(finite=not overflow)
        assert ours.scale == reference.get_scale()
    assert ours.skipped_steps == int(overflows.sum())


def test_loss_scaler_refuses_a_bad_saved_state():
    from pytrain.train.precision import LossScaler

    with pytest.raises(PytrainError, match="train_state.json: loss_scale must be"):
        LossScaler().load_state_dict({"scale": -1.0, "good_steps": 0, "skipped_steps": 0}, "step_4/train_state.json")
