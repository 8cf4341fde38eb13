"""train.dtype=fp16: fp16 compute from fp32 master weights with dynamic loss scaling, against a plain
PyTorch loop that uses torch.amp.GradScaler; skipped steps change no weight; exact resume of the scale,
on one rank and on two (torchrun, gloo)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from _train_fixtures import base_config, losses, packed_data, torchrun, train  # noqa: F401

# A start scale high enough that some steps overflow in fp16 (a few of the tiny run's 8 steps), and a
# growth interval short enough that the scale also grows within 8 steps.
INIT_SCALE, GROWTH_INTERVAL = 2.0**21, 3
FP16 = ("train.dtype=fp16", f"train.loss_scale_init={INIT_SCALE}", f"train.loss_scale_growth_interval={GROWTH_INTERVAL}",
        "train.eval_every=0", "logging.sample_every=0")


def rows(run_dir) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines) if "loss" in row}


def scaling(run_dir) -> dict[int, tuple]:
    """step -> (loss scale after the step, skipped steps so far, whether the step was skipped)."""
    return {step: (row["loss_scale"], row["skipped_steps"], row["grad_norm"] is None)
            for step, row in rows(run_dir).items()}


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory, base_config):
    run_dir = tmp_path_factory.mktemp("fp16") / "run"
    train(base_config, f"train.run_dir={run_dir}", *FP16, "checkpoint.every=1")
    return run_dir


def _reference(packed_data, steps: int) -> dict[int, tuple]:
    """The tiny base run in plain PyTorch, the classic fp16 recipe: an fp16 copy of fp32 master weights
    computes the loss, torch.amp.GradScaler scales it, unscales the fp32 gradients, skips the optimizer
    step on inf/NaN and updates the scale. step -> (loss, scale after the step, skipped so far, skipped,
    the unscaled gradient norm before clipping)."""
    from pytrain.config import OptimSection
    from pytrain.sampling.dataset import PackedDataset
    from pytrain.model import Llama, preset
    from pytrain.train.optim import build_optimizer
    from pytrain.train.schedule import lr_at

    master = Llama(preset("tiny", vocab_size=600))
    master.init_weights(seed=0)
    half = copy.deepcopy(master).half()
    optimizer = build_optimizer(master, OptimSection(lr=1e-2), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=GROWTH_INTERVAL)
    data = PackedDataset(packed_data, 64, split="train", seed=0)
    found, skipped = {}, 0
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, peak=1e-2, total=8, warmup=2)
        half.load_state_dict(master.state_dict())  # cast into the fp16 copy
        batch = data.next_batch(8)
        loss = half(batch["input_ids"], batch["labels"])
        scaler.scale(loss).backward()
        for m, h in zip(master.parameters(), half.parameters()):
            m.grad = h.grad.float()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(master.parameters(), 1.0).item()
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        was_skipped = scaler.get_scale() < before  # GradScaler lowers the scale only when it skipped the step
        skipped += was_skipped
        found[step] = (loss.item(), scaler.get_scale(), skipped, was_skipped, norm)
        optimizer.zero_grad(set_to_none=True)
        half.zero_grad(set_to_none=True)
    return found


def test_fp16_matches_a_grad_scaler_loop(fp16_run, packed_data):
    expected = _reference(packed_data, 8)
    got = rows(fp16_run)
    assert sorted(got) == list(range(1, 9))
    assert scaling(fp16_run) == {step: e[1:4] for step, e in expected.items()}  # the same steps skipped, same scale
    for step, (loss, _, _, was_skipped, norm) in expected.items():
        assert got[step]["loss"] == pytest.approx(loss, rel=2e-3), step  # fp16 rounding, not a different run
        if not was_skipped:  # the gradients were divided by the scale again (AdamW alone would hide a missed unscale)
            assert got[step]["grad_norm"] == pytest.approx(norm, rel=1e-2), step
    assert {s for s, (_, _, _, was, _) in expected.items() if was} and any(  # the test exercises both directions
        expected[s][1] > expected[s - 1][1] for s in range(2, 9))
    log = (fp16_run / "train.log").read_text()
    assert "dtype fp16" in log and "gnorm overflow, step skipped | scale 1.04858e+06 (1 skipped)" in log


def test_a_skipped_step_changes_no_weight(fp16_run):
    from pytrain.model import Llama, preset
    from pytrain.train import load_model_for_inference

    skipped = [step for step, (_, _, was) in scaling(fp16_run).items() if was]
    assert 1 in skipped
    initial = Llama(preset("tiny", vocab_size=600))
    initial.init_weights(seed=0)
    weights = {step: load_model_for_inference(fp16_run, step=step)[0].state_dict() for step in range(1, 9)}
    weights[0] = initial.state_dict()
    for step in range(1, 9):
        same = all(torch.equal(weights[step][k], weights[step - 1][k]) for k in weights[0])
        assert same == (step in skipped), step


def test_fp16_resume_is_exact(fp16_run, base_config, tmp_path):
    """Resumed inside a growth interval whose end comes after the resume with no overflow in between: the scale
    grows there only if the overflow-free steps counted before the checkpoint were restored, and the skipped
    steps go on counting from the checkpoint's. Which steps overflow depends on the data order, so the step is
    taken from the run's own checkpoints."""
    def state(step):
        return json.loads((fp16_run / "checkpoints" / f"step_{step}" / "train_state.json").read_text())["loss_scale"]

    def grows_before_an_overflow(step):
        after = [scaling(fp16_run)[s] for s in range(step + 1, 9)]
        first_change = next((scale for scale, _, _ in after if scale != state(step)["scale"]), None)
        return first_change is not None and first_change > state(step)["scale"]

    step = next(s for s in range(1, 8) if state(s)["good_steps"] >= 1 and grows_before_an_overflow(s))
    assert state(step)["skipped_steps"] >= 1
    resumed = tmp_path / "resumed"
    train(base_config, f"train.run_dir={resumed}", *FP16, f"checkpoint.resume={fp16_run}",
          f"checkpoint.resume_step={step}")
    full = rows(fp16_run)
    for at, row in rows(resumed).items():
        assert (row["loss"], row["loss_scale"], row["skipped_steps"]) == (
            full[at]["loss"], full[at]["loss_scale"], full[at]["skipped_steps"]), at
    assert sorted(rows(resumed)) == list(range(step + 1, 9))


def test_a_nan_loss_still_stops_in_fp16(base_config, tmp_path, capsys):
    run_dir = tmp_path / "diverged"
    status = train(base_config, f"train.run_dir={run_dir}", *FP16, "optim.lr=1e30", "optim.grad_clip=0",
                   "schedule.name=constant", "schedule.warmup_steps=0", "train.loss_scale_init=1024", check=False)
    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite loss" in message and "at step 2" in message


def test_fp16_on_two_ranks_skips_the_same_steps_and_resumes_exactly(fp16_run, base_config, tmp_path):
    """Every rank decides from the same global gradient norm: the 2-rank run skips what the 1-rank run skips
    (a rank that updated with inf gradients would turn the loss NaN) until a step overflows in one
    reduction order and not in the other (an fp16 borderline: from there the runs may part), and it
    resumes bit for bit."""
    two = tmp_path / "two"
    torchrun(base_config, f"train.run_dir={two}", *FP16, "checkpoint.every=4")
    one_rank, two_ranks = scaling(fp16_run), scaling(two)
    assert one_rank[1][2] and two_ranks[1][2], "the start scale overflows the first step on any rank count"
    parted = next((s for s in sorted(one_rank) if one_rank[s] != two_ranks[s]), 9)
    assert parted > 1
    for step in range(1, parted):
        assert losses(two)[step] == pytest.approx(losses(fp16_run)[step], rel=2e-3), step
    assert all(loss == loss for loss in losses(two).values())  # never NaN
    resumed = tmp_path / "resumed"
    torchrun(base_config, f"train.run_dir={resumed}", *FP16, f"checkpoint.resume={two}", "checkpoint.resume_step=4")
    assert {s: (r["loss"], r["loss_scale"], r["skipped_steps"]) for s, r in rows(resumed).items()} == {
        s: (r["loss"], r["loss_scale"], r["skipped_steps"]) for s, r in rows(two).items() if s > 4}
