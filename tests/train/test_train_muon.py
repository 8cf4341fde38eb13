"""optim.name=muon in the trainer: a 2-process FSDP2 run (gloo, CPU) equals the 1-process run, and
resume is exact across rank counts (momentum buffers resharded by DCP), also onto HSDP. The optimizer
seam: a third optimizer trains and checkpoints by registering a builder, nothing else."""

from __future__ import annotations

import pytest

from _train_fixtures import base_config, losses, packed_data, torchrun, train, val_losses  # noqa: F401

MUON = ("optim.name=muon", "logging.sample_every=0")


def assert_close(got: dict, expected: dict, steps) -> None:
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5), (step, got, expected)


@pytest.fixture(scope="module")
def muon_run(tmp_path_factory, base_config):
    run_dir = tmp_path_factory.mktemp("muon") / "run"
    train(base_config, f"train.run_dir={run_dir}", *MUON)
    return run_dir


@pytest.fixture(scope="module")
def muon_fsdp_run(tmp_path_factory, base_config):
    run_dir = tmp_path_factory.mktemp("muon_fsdp") / "run"
    torchrun(base_config, f"train.run_dir={run_dir}", *MUON)
    return run_dir


def test_two_ranks_equal_one(muon_run, muon_fsdp_run):
    assert_close(losses(muon_fsdp_run), losses(muon_run), range(1, 9))
    assert_close(val_losses(muon_fsdp_run), val_losses(muon_run), [4, 8])
    log = (muon_run / "train.log").read_text()
    assert "optimizer group muon: 14 tensors, 0.09M parameters (layers.*.self_attn.q_proj.weight" in log
    assert "optimizer group adamw: 6 tensors, 0.04M parameters (embed_tokens.weight, layers.*.input_layernorm.weight" in log


def test_resume_on_one_rank_from_two(muon_fsdp_run, base_config, tmp_path):
    run_dir = tmp_path / "one_rank"
    train(base_config, f"train.run_dir={run_dir}", *MUON, f"checkpoint.resume={muon_fsdp_run}",
          "checkpoint.resume_step=4")
    assert_close(losses(run_dir), losses(muon_fsdp_run), range(5, 9))


def test_resume_on_two_hsdp_ranks_from_one(muon_run, base_config, tmp_path):
    run_dir = tmp_path / "hsdp"
    torchrun(base_config, f"train.run_dir={run_dir}", *MUON, f"checkpoint.resume={muon_run}",
             "checkpoint.resume_step=4", "train.hsdp=true", "train.hsdp_shard_size=1")
    assert_close(losses(run_dir), losses(muon_run), range(5, 9))


def test_resume_with_another_optimizer_is_refused(muon_run, base_config, tmp_path, capsys):
    """A Muon checkpoint has no AdamW moments for the matrices: one line, before anything is written."""
    run_dir = tmp_path / "adamw"
    status = train(base_config, f"train.run_dir={run_dir}", f"checkpoint.resume={muon_run}", "checkpoint.resume_step=4",
                   check=False)
    assert status == 2 and not run_dir.exists()
    assert ("it was saved with another optimizer (its state of layers.0.self_attn.q_proj.weight holds momentum_buffer, "
            "this run's optim.name needs step, exp_avg, exp_avg_sq); resume with the optim.name it was trained with"
            in capsys.readouterr().err)


def test_a_third_optimizer_joins_through_the_seam(base_config, tmp_path, monkeypatch, capsys):
    """SGD with momentum, registered as a builder and a config choice: the loop, the training step and the
    checkpoints drive it unchanged (its momentum buffers land in the checkpoint)."""
    import torch

    from pytrain import config
    from pytrain.train import optim
    from pytrain.train.dcp_safe import read_metadata

    def sgd(model, settings, device):
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)

    monkeypatch.setitem(optim.BUILDERS, "sgd", sgd)
    monkeypatch.setitem(config.CHOICES, "optim.name", ("adamw", "muon", "sgd"))
    run_dir = tmp_path / "sgd"
    train(base_config, f"train.run_dir={run_dir}", "optim.name=sgd", "train.steps=4", "train.eval_every=0",
          "logging.sample_every=0")
    assert "optimizer group sgd: 20 tensors, 0.13M parameters (embed_tokens.weight, " in capsys.readouterr().err
    assert "momentum 0.9, dampening 0, weight_decay 0, nesterov False" in (run_dir / "train.log").read_text()
    assert all(loss == loss for loss in losses(run_dir).values()) and len(losses(run_dir)) == 4
    saved = read_metadata(run_dir / "checkpoints" / "step_4" / ".metadata").state_dict_metadata
    assert "optim.state.layers.0.mlp.down_proj.weight.momentum_buffer" in saved
