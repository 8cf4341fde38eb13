"""One process training in fp32 skips FSDP2 (nothing to shard, cast or move): the model stays plain, and
every loss and every checkpoint byte are those of the FSDP2-wrapped model. Resuming such checkpoints on
2 ranks and back is tested in test_train_fsdp.py."""

from __future__ import annotations

import pytest
from _train_fixtures import base_config, base_run, losses, packed_data, train, val_losses  # noqa: F401

from pytrain.train.dcp_safe import read_metadata


@pytest.mark.parametrize("dtype, wrapped", [("fp32", False), ("bf16", True)])
def test_one_process_shards_only_what_needs_it(dtype, wrapped):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from pytrain.model import preset
    from pytrain.train.distributed import init_distributed, shutdown
    from pytrain.train.parallelize import build_model

    d = init_distributed("cpu")
    try:
        model = build_model(preset("tiny"), d, dtype=dtype)
    finally:
        shutdown()
    assert isinstance(model, FSDPModule) == wrapped  # bf16: FSDP2's mixed precision does the casts
    assert all(isinstance(p, DTensor) == wrapped for p in model.parameters())


def test_the_plain_model_changes_no_number_and_no_checkpoint_byte(base_run, base_config, tmp_path, monkeypatch):
    import pytrain.train.parallelize as parallelize

    monkeypatch.setattr(parallelize, "needs_fsdp", lambda *args: True)  # what every run did before
    wrapped = tmp_path / "fsdp"
    train(base_config, f"train.run_dir={wrapped}")
    assert losses(wrapped) == losses(base_run) and val_losses(wrapped) == val_losses(base_run)
    for step in ("step_4", "step_8"):
        ours, theirs = base_run / "checkpoints" / step, wrapped / "checkpoints" / step
        assert (ours / "__0_0.distcp").read_bytes() == (theirs / "__0_0.distcp").read_bytes()
        assert (read_metadata(ours / ".metadata").state_dict_metadata
                == read_metadata(theirs / ".metadata").state_dict_metadata)
