"""Single-process training through `pytrain train` on data packed by `pytrain pack`: learning, outputs,
exact resume, gradient accumulation, NaN handling, kill-during-save atomicity, inference loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli
from _train_fixtures import (ENV, SLOWED, base_config, base_run, losses, packed_data, train,  # noqa: F401
                             train_command, val_losses, wait_for_file)


def test_loss_falls_and_run_dir_is_complete(base_run):
    steps = losses(base_run)
    assert sorted(steps) == list(range(1, 9))
    assert steps[8] < steps[1] - 0.5, steps
    assert sorted(val_losses(base_run)) == [4, 8]
    rows = [json.loads(line) for line in (base_run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "tokens", "loss", "ppl", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_gib"} <= set(rows[0])
    assert rows[0]["tokens"] == 8 * 64 and rows[0]["mfu"] is None  # no peak known for CPU
    resolved = yaml.safe_load((base_run / "config.yaml").read_text())
    assert resolved["model"]["vocab_size"] == 600 and resolved["data"]["seq_len"] == 64
    assert resolved["model"]["hidden_size"] == 64
    assert (base_run / "tokenizer.json").is_file()
    checkpoints = base_run / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_8"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_4", "step_8"]
    log = (base_run / "train.log").read_text()
    assert "sample step 8 | 'def ' ->" in log and "MFU peak per device: unknown for cpu" in log


def test_resume_reproduces_the_uninterrupted_run(base_config, base_run, tmp_path):
    resumed = tmp_path / "resumed"
    train(base_config, f"train.run_dir={resumed}", f"checkpoint.resume={base_run}", "checkpoint.resume_step=4")
    expected = losses(base_run)
    assert losses(resumed) == {step: expected[step] for step in range(5, 9)}  # bit for bit
    assert val_losses(resumed)[8] == val_losses(base_run)[8]
    assert f"resumed from {base_run / 'checkpoints' / 'step_4'} at step 4 (saved by 1 rank)" in (resumed / "train.log").read_text()


def test_inspect_on_a_run_directory_names_its_data(base_run, packed_data, capsys):
    from pytrain.cli import main

    assert main(["inspect", str(base_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"pytrain inspect: error: {base_run} is a run directory, not a packed dataset; its data is "
                   f"{packed_data}: pytrain inspect {packed_data}")


def test_an_interrupted_train_says_the_command_that_resumes_it(base_config, monkeypatch, capsys):
    import pytrain.train
    from pytrain.cli import main

    def interrupted(config, config_source):
        raise KeyboardInterrupt

    monkeypatch.setattr(pytrain.train, "train", interrupted)
    assert main(["train", "--config", str(base_config), "train.steps=5"]) == 130
    assert capsys.readouterr().err.strip() == (
        "pytrain train: interrupted; resume from the latest checkpoint with the same command: "
        f"pytrain train --config {base_config} train.steps=5")


def test_gradient_accumulation_equals_the_larger_batch(base_config, base_run, tmp_path):
    run_dir = tmp_path / "accumulated"
    train(base_config, f"train.run_dir={run_dir}", "train.micro_batch_size=2", "train.steps=8",
          "checkpoint.every=0", "train.eval_every=0", "logging.sample_every=0")
    expected, got = losses(base_run), losses(run_dir)
    for step in range(1, 9):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5), step
    assert "1 rank(s) x 2 sequences x 4 micro-batch(es)" in (run_dir / "train.log").read_text()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(base_config, tmp_path, capsys):
    run_dir = tmp_path / "diverged"
    status = train(base_config, f"train.run_dir={run_dir}", "optim.lr=1e30", "optim.grad_clip=0",
                   "schedule.name=constant", "schedule.warmup_steps=0", "checkpoint.every=1", check=False)
    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("pytrain train: error: non-finite")
    assert "at step 2" in message and "last good checkpoint is" in message and "step_1" in message
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_1"
    assert sorted(losses(run_dir)) == [1]
    assert "error: non-finite" in (run_dir / "train.log").read_text()


def test_kill_during_save_keeps_the_last_checkpoint_and_resumes_exactly(base_config, base_run, tmp_path):
    run_dir = tmp_path / "killed"
    command = train_command(base_config, f"train.run_dir={run_dir}", script=SLOWED)
    proc = subprocess.Popen(command, env={**ENV, "STALL_STEP": "8"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_file(proc, run_dir / "checkpoints" / ".tmp-step_8" / ".metadata")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_4"
    assert not (checkpoints / "step_8").exists()
    # The same command again resumes from step 4 (checkpoint.resume=auto) and replays steps 5..8.
    train(base_config, f"train.run_dir={run_dir}")
    assert losses(run_dir) == losses(base_run)  # one row per step, the interrupted run's extra rows dropped
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_4", "step_8"]  # debris removed
    assert "resumed from" in (run_dir / "train.log").read_text()


@pytest.mark.parametrize("overrides, message", [
    (["data.path=/nonexistent/data"], "/nonexistent/data: no such dataset directory"),
    (["train.batch_size=6", "train.micro_batch_size=4"], "must be a multiple of train.micro_batch_size (4)"),
    (["data.seq_len=512"], "data.seq_len (512) exceeds model.max_position_embeddings (256)"),
    (["checkpoint.resume=/nonexistent/run"], "/nonexistent/run: no such run or checkpoint directory"),
])
def test_errors_before_training(base_config, tmp_path, capsys, overrides, message):
    assert train(base_config, f"train.run_dir={tmp_path / 'run'}", *overrides, check=False) == 2
    assert message in capsys.readouterr().err


def test_fresh_start_refuses_a_run_dir_with_checkpoints(base_config, base_run, capsys):
    assert train(base_config, f"train.run_dir={base_run}", "checkpoint.resume=none", check=False) == 2
    assert "already has checkpoints" in capsys.readouterr().err


def test_load_model_for_inference(base_run, packed_data):
    from pytrain.sampling.dataset import PackedDataset
    from pytrain.train import load_model_for_inference

    model, config, tokenizer = load_model_for_inference(base_run)
    assert config.vocab_size == 600 and tokenizer == base_run / "tokenizer.json" and not model.training
    sample = PackedDataset(packed_data, 64, split="val", shuffle=False).next_batch(4)
    with torch.no_grad():
        final = model(sample["input_ids"], sample["labels"]).item()
        earlier = load_model_for_inference(base_run, step=4)[0](sample["input_ids"], sample["labels"]).item()
    assert final < earlier


def test_keep_last_k_checkpoints(base_config, tmp_path):
    run_dir = tmp_path / "kept"
    train(base_config, f"train.run_dir={run_dir}", "checkpoint.every=2", "checkpoint.keep_last_k=2",
          "train.eval_every=0", "logging.sample_every=0")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_6", "step_8"]


def _initial_loss(packed_data, seq_len: int, *, document_masking: bool) -> float:
    """The tiny model's loss on the first training batch (8 sequences), at the seed's initial weights,
    computed here from the dataset and the plain model: what a run's step-1 loss must be."""
    from pytrain.sampling.dataset import PackedDataset
    from pytrain.model import Llama, preset

    model = Llama(preset("tiny", vocab_size=600))
    model.init_weights(seed=0)
    batch = PackedDataset(packed_data, seq_len, split="train", seed=0).next_batch(8)
    extra = {"position_ids": batch["position_ids"], "segment_ids": batch["segment_ids"]} if document_masking else {}
    with torch.no_grad():
        return model(batch["input_ids"], batch["labels"], **extra).item()


def test_document_masking_trains(base_config, packed_data, tmp_path):
    """Long rows (256 tokens) cross document boundaries, where masking changes attention and positions."""
    runs = {}
    for masking in ("true", "false"):
        run_dir = tmp_path / f"masking_{masking}"
        train(base_config, f"train.run_dir={run_dir}", f"data.document_masking={masking}", "data.seq_len=256",
              "train.steps=4", "train.eval_every=0", "checkpoint.every=0", "logging.sample_every=0")
        runs[masking] = losses(run_dir)
    masked, unmasked = runs["true"], runs["false"]
    assert masked != unmasked
    assert masked[1] == pytest.approx(unmasked[1], abs=0.05)  # same weights and tokens: close, not equal
    assert masked[4] < masked[1]
    # Step 1's loss is measured before any update: the model's own loss with (and without) the batch's
    # position_ids and segment_ids. A trainer that swapped them or dropped segment_ids would miss this.
    # (Dropping only position_ids changes nothing to compute: RoPE scores depend on relative positions,
    # and with the document mask every query-key pair lies in one document.)
    assert masked[1] == pytest.approx(_initial_loss(packed_data, 256, document_masking=True), rel=1e-5)
    assert unmasked[1] == pytest.approx(_initial_loss(packed_data, 256, document_masking=False), rel=1e-5)


def _spy_on_the_model(monkeypatch, on_build=None) -> list:
    """Patch the trainer's build_model so the test sees (and may hook) the parallelised model it trains."""
    import pytrain.train.loop as loop

    built, build = [], loop.build_model

    def spying_build(*args, **kwargs):
        built.append(build(*args, **kwargs))
        if on_build:
            on_build(built[-1])
        return built[-1]

    monkeypatch.setattr(loop, "build_model", spying_build)
    return built


def test_checkpointing_every_second_block_keeps_the_numbers(base_config, base_run, tmp_path, monkeypatch):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    calls = {0: 0, 1: 0}  # forward calls of each block's MLP: a checkpointed block runs it again in the backward

    def count_calls(model):
        for i, block in enumerate(model.layers):
            block.mlp.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))

    built = _spy_on_the_model(monkeypatch, count_calls)
    run_dir = tmp_path / "checkpointed"
    train(base_config, f"train.run_dir={run_dir}", "train.activation_checkpointing=2", "train.eval_every=0",
          "checkpoint.every=0", "logging.sample_every=0")
    _assert_same_losses(run_dir, base_run, rel=1e-6)
    (model,) = built
    assert [isinstance(block, CheckpointWrapper) for block in model.layers] == [True, False]  # blocks 0, 2, 4, ...
    assert calls == {0: 2 * 8, 1: 8}  # block 0 recomputed in each of the 8 backwards, block 1 not


def test_compiled_blocks_keep_the_numbers(base_config, base_run, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    built = _spy_on_the_model(monkeypatch)
    counters.clear()
    run_dir = tmp_path / "compiled"
    train(base_config, f"train.run_dir={run_dir}", "train.compile=true", "train.steps=8", "train.eval_every=0",
          "checkpoint.every=0", "logging.sample_every=0")
    _assert_same_losses(run_dir, base_run, rel=1e-4)
    (model,) = built
    assert all(block._compiled_call_impl is not None for block in model.layers)  # nn.Module.compile on each block
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture a graph (blocks share one)


def test_gradient_accumulation_reduces_once_per_step(base_config, tmp_path, monkeypatch):
    """4 micro-batches per step, one gradient reduction (reduce-scatter) per FSDP unit per step, not per
    micro-batch. FSDP2 launches one reduce-scatter per `foreach_reduce` call (a no-op collective on one
    rank, but the call is still made), so the calls are counted, with the model wrapped as on several ranks
    (one fp32 process trains it plain: pytrain.train.parallelize.needs_fsdp)."""
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as param_group

    import pytrain.train.parallelize as parallelize

    monkeypatch.setattr(parallelize, "needs_fsdp", lambda *args: True)
    calls, reduce = [], param_group.foreach_reduce

    def counting_reduce(*args, **kwargs):
        calls.append(1)
        return reduce(*args, **kwargs)

    monkeypatch.setattr(param_group, "foreach_reduce", counting_reduce)
    train(base_config, f"train.run_dir={tmp_path / 'run'}", "train.micro_batch_size=2", "train.steps=2",
          "checkpoint.every=0", "train.eval_every=0", "logging.sample_every=0")
    units = 2 + 1  # the tiny preset's 2 blocks, and the root (embedding, final norm, LM head)
    assert len(calls) == units * 2


def test_rng_is_restored_on_resume(base_config, tmp_path, monkeypatch):
    """Nothing in the tiny model draws random numbers, so a dropout-like consumer of the global RNGs
    (torch and Python's `random`) is run in every step; the resumed run must draw what the uninterrupted
    run drew in the same steps (a re-seeded or untouched RNG would not)."""
    import random

    import pytrain.train.step as step

    draws, forward_backward = [], step.forward_backward

    def drawing_forward_backward(*args, **kwargs):
        draws.append((torch.rand(3).tolist(), random.random()))
        return forward_backward(*args, **kwargs)

    monkeypatch.setattr(step, "forward_backward", drawing_forward_backward)
    quiet = ("train.eval_every=0", "logging.sample_every=0")
    train(base_config, f"train.run_dir={tmp_path / 'full'}", *quiet)
    uninterrupted = draws[:]
    draws.clear()
    train(base_config, f"train.run_dir={tmp_path / 'resumed'}", f"checkpoint.resume={tmp_path / 'full'}",
          "checkpoint.resume_step=4", *quiet)
    assert len(uninterrupted) == 8 and draws == uninterrupted[4:]


def test_mfu_uses_logging_peak_tflops(base_config, tmp_path):
    run_dir = tmp_path / "mfu"
    train(base_config, f"train.run_dir={run_dir}", "logging.peak_tflops=0.002", "train.steps=2",
          "checkpoint.every=0", "train.eval_every=0", "logging.sample_every=0")
    # tiny preset, vocab 600, seq 64, by hand: blocks 2 x (2*64*64 + 2*64*32 + 3*64*176) = 92160 matmul
    # weights, LM head 600*64 = 38400; 6 * 130560 = 783360, attention 12 * 2 * 64 * 64 = 98304.
    flops_per_token = 881_664
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * flops_per_token / 0.002e12, rel=1e-9)
    log = (run_dir / "train.log").read_text()
    assert "MFU peak per device: 0.002 TFLOPS (logging.peak_tflops)" in log
    assert f"{flops_per_token / 1e9:.3f} GFLOPs/token at seq 64" in log


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 (CI sets it)")
def test_triton_kernels_train_like_the_torch_references(base_config, tmp_path):
    """train.kernels=triton end to end (RMSNorm, RoPE and the fused LM-head loss in every step, through the
    interpreter on CPU): the same losses as train.kernels=torch. Tiny batches: the interpreter is slow."""
    runs = {}
    for kernels in ("triton", "torch"):
        run_dir = tmp_path / kernels
        train(base_config, f"train.run_dir={run_dir}", f"train.kernels={kernels}", "data.seq_len=16",
              "train.batch_size=2", "train.steps=3", "checkpoint.every=0", "train.eval_every=0",
              "logging.sample_every=0")
        runs[kernels] = losses(run_dir)
        assert f"kernels {kernels}" in (run_dir / "train.log").read_text()
    assert sorted(runs["triton"]) == [1, 2, 3]
    for step in (1, 2, 3):
        assert runs["triton"][step] == pytest.approx(runs["torch"][step], rel=2e-6), step  # fp32: rounding only
    assert runs["triton"][3] != runs["triton"][1]  # the weights did move


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory, documents, tokenizer_path):
    """A `--format chat` pack of 80 conversations cut from the corpus (user: a document's start,
    assistant: what follows), so about half of the tokens are trained."""
    folder = tmp_path_factory.mktemp("chat")
    with open(folder / "chat.jsonl", "w", encoding="utf-8") as handle:
        for doc in documents[:80]:
            messages = [{"role": "user", "content": doc[:150]}, {"role": "assistant", "content": doc[150:400]}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    run_cli("pack", folder / "chat.jsonl", "--format", "chat", "--tokenizer", tokenizer_path, "--out", folder / "data",
            env={"OMP_NUM_THREADS": "1"})
    return folder / "data"


def test_chat_training_normalises_by_trained_tokens(base_config, chat_data, tmp_path):
    """A full run on a chat pack: step 1's loss is the initial model's mean loss over the assistant
    tokens only, computed here from tokens.bin and mask.bin directly (unshuffled stream: sample s is
    tokens[64 s : 64 s + 65])."""
    import numpy as np
    import torch.nn.functional as F

    from pytrain.model import Llama, preset

    run_dir = tmp_path / "chat"
    train(base_config, f"data.path={chat_data}", f"train.run_dir={run_dir}", "data.shuffle=false", "train.steps=3",
          "checkpoint.every=0", "train.eval_every=0", "logging.sample_every=0")
    got = losses(run_dir)
    assert sorted(got) == [1, 2, 3]

    tokens = np.fromfile(chat_data / "train" / "tokens.bin", dtype="<u2").astype(np.int64)
    trained = np.fromfile(chat_data / "train" / "mask.bin", dtype=np.uint8).astype(bool)
    windows = np.stack([np.arange(64 * s, 64 * s + 65) for s in range(8)])
    inputs, targets = torch.from_numpy(tokens[windows[:, :-1]]), torch.from_numpy(tokens[windows[:, 1:]])
    keep = torch.from_numpy(trained[windows[:, 1:]])
    model = Llama(preset("tiny", vocab_size=600))
    model.init_weights(seed=0)
    with torch.no_grad():
        per_token = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="none")
    assert 0.2 < keep.float().mean() < 0.8  # the mask matters in this batch
    masked_mean = per_token[keep.flatten()].mean().item()
    assert got[1] == pytest.approx(masked_mean, rel=1e-5)
    assert got[1] != pytest.approx(per_token.mean().item(), rel=1e-3)
    assert got[3] < got[1]


def _assert_same_losses(run_dir, base_run, rel: float) -> None:
    """Every one of the 8 steps was logged, each loss equal to the base run's within `rel`."""
    expected = losses(base_run)
    assert sorted(losses(run_dir)) == list(range(1, 9))
    for step, loss in losses(run_dir).items():
        assert loss == pytest.approx(expected[step], rel=rel), step


def test_a_run_with_nothing_to_do_leaves_its_files(base_config, base_run, tmp_path):
    import shutil

    run_dir = tmp_path / "done"
    shutil.copytree(base_run, run_dir)  # copy2: the files keep their mtimes
    files = ("config.yaml", "run.json", "tokenizer.json", "metrics.jsonl")
    before = {name: ((run_dir / name).read_bytes(), (run_dir / name).stat().st_mtime_ns) for name in files}
    train(base_config, f"train.run_dir={run_dir}")
    assert {name: ((run_dir / name).read_bytes(), (run_dir / name).stat().st_mtime_ns) for name in files} == before
    assert "already at step 8 of 8: nothing to do" in (run_dir / "train.log").read_text()


def test_changing_train_steps_on_resume_says_how_the_schedule_changes(base_config, base_run, tmp_path):
    import shutil

    from pytrain.train.schedule import lr_at

    run_dir = tmp_path / "longer"
    shutil.copytree(base_run, run_dir)
    train(base_config, f"train.run_dir={run_dir}", "train.steps=10", "train.eval_every=0", "logging.sample_every=0")
    new, old = (lr_at(9, peak=1e-2, total=total, warmup=2) for total in (10, 8))
    line = next(line for line in (run_dir / "train.log").read_text().splitlines() if "resumed from" in line)
    assert (f"note: the learning-rate schedule changed (train.steps 8 -> 10): it is re-stretched over the new "
            f"steps, so step 9 trains at lr {new:.3g} where the saved run's schedule had {old:.3g}") in line
    rows = [json.loads(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows if row.get("step") == 9 and "lr" in row] == [pytest.approx(new, rel=1e-12)]


def test_logged_loss_is_the_interval_mean_and_the_run_ends_with_a_summary(base_config, base_run, tmp_path, capsys):
    """logging.every=3: rows at steps 1 (alone), 3, 6 and 8 (the last), each the plain mean of the step losses since
    the previous row (the base run logs every step); then a summary whose commands work."""
    import math
    import shlex

    from pytrain.cli import main

    run_dir = tmp_path / "every3"
    capsys.readouterr()
    train(base_config, f"train.run_dir={run_dir}", "logging.every=3")
    summary = capsys.readouterr().err.strip().splitlines()[-4:]
    per_step = losses(base_run)
    intervals = {1: [1], 3: [2, 3], 6: [4, 5, 6], 8: [7, 8]}
    expected = {row: sum(per_step[s] for s in steps) / len(steps) for row, steps in intervals.items()}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    got = {row["step"]: row for row in rows if "loss" in row}
    assert sorted(got) == sorted(expected)
    for step, mean in expected.items():
        assert got[step]["loss"] == pytest.approx(mean, rel=1e-12), step
        assert got[step]["ppl"] == pytest.approx(math.exp(mean), rel=1e-12)

    done, checkpoint, generate, export = summary
    assert done.startswith("done: 8 steps in ") and f"{8 * 8 * 64 / 1000:.2f}k tokens" in done
    assert f"train loss {expected[8]:.4f}" in done and f"val_loss {val_losses(base_run)[8]:.4f} (step 8)" in done
    assert checkpoint == f"checkpoint: {run_dir / 'checkpoints' / 'step_8'}"
    logged = (run_dir / "train.log").read_text().splitlines()[-4:]  # timestamped there
    assert all(in_log.endswith(line) for in_log, line in zip(logged, summary))
    assert main(shlex.split(generate.removeprefix("next: "))[1:] + ["--max-new-tokens", "4"]) == 0
    assert main(shlex.split(export.strip())[1:]) == 0
    assert (Path(f"{run_dir}-hf") / "config.json").is_file()
