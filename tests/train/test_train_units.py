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


@pytest.mark.parametrize("min_ratio", [0.0, 0.3])
def test_decay_ends_at_min_lr_ratio_times_the_peak(min_ratio):
    for name in ("cosine", "linear", "wsd"):
        lrs = [lr_at(s, peak=2.0, total=50, warmup=5, name=name, min_ratio=min_ratio) for s in range(1, 51)]
        assert lrs[-1] == pytest.approx(2.0 * min_ratio, abs=1e-12), name
        assert min(lrs[5:]) == pytest.approx(2.0 * min_ratio, abs=1e-12), name  # the decay never goes below it


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


def test_the_optimizer_is_torch_adamw_with_the_configs_hyperparameters():
    """Six updates of pytrain's optimizer equal torch.optim.AdamW's (fused: pytrain's default) with optim.lr,
    betas, eps and weight_decay given explicitly (decay on the matmul weights only, as documented), on the
    same gradients: the first makes the state and the others call the fused kernel directly, except one with
    an option changed (torch's step); then a moment replaced by hand, then a state saved after the first
    loaded (twice) before the last."""
    import copy

    optim = OptimSection(lr=0.05, betas=[0.8, 0.9], eps=1e-3, weight_decay=0.3)
    ours = Llama(preset("tiny", vocab_size=64, tie_word_embeddings=False))
    ours.init_weights(seed=0)
    theirs = copy.deepcopy(ours)
    decay = [p for n, p in theirs.named_parameters() if p.dim() >= 2 and n != "embed_tokens.weight"]
    rest = [p for n, p in theirs.named_parameters() if not (p.dim() >= 2 and n != "embed_tokens.weight")]
    reference = torch.optim.AdamW([{"params": decay, "weight_decay": 0.3}, {"params": rest, "weight_decay": 0.0}],
                                  lr=0.05, betas=(0.8, 0.9), eps=1e-3, fused=True)
    optimizer = build_optimizer(ours, optim, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    hooks_run, saved = [], []
    optimizer.register_step_pre_hook(lambda *_: hooks_run.append(1))
    for update in range(6):
        if update in (2, 3):  # an option changed for one step (torch's own step runs that one), then back
            for opt in (optimizer, reference):
                opt.param_groups[1]["maximize"] = update == 2
        if update == 4:  # a moment replaced in the state by hand
            for opt in (optimizer, reference):
                state = opt.state[opt.param_groups[0]["params"][0]]
                state["exp_avg"] = torch.zeros_like(state["exp_avg"])
        if update == 5:  # a resume: the state replaced by a saved one (twice: a new state may reuse an old id)
            for _ in range(2):
                optimizer.load_state_dict(copy.deepcopy(saved[0]))
                reference.load_state_dict(copy.deepcopy(saved[1]))
        for (_, mine), (_, other) in zip(ours.named_parameters(), theirs.named_parameters()):
            mine.grad = torch.randn(mine.shape, generator=generator) * 1e-3  # small: eps matters
            other.grad = mine.grad.clone()
        optimizer.step()
        reference.step()
        if update == 0:
            saved += [copy.deepcopy(optimizer.state_dict()), copy.deepcopy(reference.state_dict())]
    for (name, mine), (_, other) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(mine, other, rtol=0, atol=0, msg=name)
    assert len(hooks_run) == 6  # once per step, also when torch's own step ran


@pytest.mark.parametrize("max_norm, scale", [(1.0, 0.02), (1.0, 1e-3), (0.0, 0.02)])
def test_gradient_clipping_is_torchs(max_norm, scale):
    """The step's norm and clipping of one process's gradients equal torch.nn.utils.clip_grad_norm_ bit for
    bit: clipped (norm above max_norm), unclipped (below it), max_norm 0 (the norm only)."""
    import copy

    from pytrain.train.step import clip_gradients

    ours = Llama(preset("tiny", vocab_size=64))
    ours.init_weights(seed=0)
    theirs = copy.deepcopy(ours)
    generator = torch.Generator().manual_seed(2)
    for mine, other in zip(ours.parameters(), theirs.parameters()):
        mine.grad = torch.randn(mine.shape, generator=generator) * scale
        other.grad = mine.grad.clone()
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm if max_norm > 0 else float("inf"))
    norm = clip_gradients(list(ours.parameters()), max_norm)
    assert torch.equal(norm, expected) and (norm > 1.0) == (scale > 1e-3)
    for (name, mine), other in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(mine.grad, other.grad), name


def test_gradient_clipping_of_mixed_dtypes_is_torchs():
    """fp32 and bf16 gradients in one process: torch groups their norms by dtype, and so does the step."""
    from pytrain.train.step import clip_gradients

    generator = torch.Generator().manual_seed(3)
    for case in range(40):
        ours = [torch.nn.Parameter(torch.zeros(int(n), dtype=torch.bfloat16 if k % 3 == 1 else torch.float32))
                for k, n in enumerate(torch.randint(1, 300, (12,), generator=generator))]
        theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        for mine, other in zip(ours, theirs):
            mine.grad = torch.randn(mine.shape, generator=generator).to(mine.dtype)
            other.grad = mine.grad.clone()
        assert torch.equal(clip_gradients(ours, 1.0), torch.nn.utils.clip_grad_norm_(theirs, 1.0)), case
        assert all(torch.equal(mine.grad, other.grad) for mine, other in zip(ours, theirs)), case


def test_throughput_counts_training_time_only():
    """tokens_per_s (and MFU) is tokens over the steps' own time: evaluation, samples and saves in between add
    wall time (the ETA's), not training time."""
    import time

    from pytrain.train.metrics import ThroughputWindow

    window = ThroughputWindow(torch.device("cpu"))
    window.add(100, 0.25)
    time.sleep(0.05)  # an evaluation, say
    window.add(300, 0.75)
    assert window.tokens_per_s == 400 / 1.0 and window.wall_s >= 0.05


def test_mixture_val_loss_is_the_weighted_mean_of_the_sources():
    from pytrain.train.evaluate import MixtureEvaluator

    losses = {"web": 2.0, "code": 3.0, "math": 5.0}
    weights = {"web": 0.5, "code": 0.3, "math": 0.2}
    evaluator = MixtureEvaluator({name: (weights[name], lambda model, loss=loss: (loss, None, None)) for name, loss in losses.items()})
    row = evaluator.row(model=None)
    expected = sum(weights[n] * losses[n] for n in losses) / sum(weights.values())
    assert row["val_loss_by_source"] == losses and row["val_loss"] == pytest.approx(expected, rel=1e-15)


def test_validation_loss_is_the_mean_over_trained_tokens():
    """Chat data's validation batches hold loss-masked labels (IGNORE_INDEX): the evaluator's loss is the mean over
    the others, as F.cross_entropy(ignore_index=-100) computes it on the model's logits."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from pytrain.train.evaluate import Evaluator

    model = Llama(preset("tiny", vocab_size=64))
    model.init_weights(seed=0)
    generator = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, 64, (2, 16), generator=generator)
        labels = torch.randint(0, 64, (2, 16), generator=generator)
        labels[torch.rand(2, 16, generator=generator) < 0.6] = -100
        batches.append({"input_ids": ids, "labels": labels, "position_ids": torch.arange(16).expand(2, 16),
                        "segment_ids": torch.zeros(2, 16, dtype=torch.long)})

    class Batches:
        def __init__(self):
            self.at = 0

        def state_dict(self):
            return {"at": self.at}

        def load_state_dict(self, state):
            self.at = state["at"]

        def next_batch(self, size):
            self.at += 1
            return batches[self.at - 1]

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        loss, _, _ = Evaluator(Batches(), 2, 3, False, torch.device("cpu"))(model)
    finally:
        if started:
            dist.destroy_process_group()
    with torch.no_grad():
        logits = torch.cat([model(b["input_ids"]) for b in batches])
    expected = F.cross_entropy(logits.flatten(0, 1), torch.cat([b["labels"] for b in batches]).flatten(), ignore_index=-100)
    assert loss == pytest.approx(expected.item(), rel=1e-6)


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
