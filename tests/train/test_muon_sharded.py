"""Muon's distributed orthogonalisation with 4 gloo ranks: the shard exchange (uneven and empty shards,
each matrix once, spread over the ranks) and the optimizer under FSDP2 on a 2 x 2 HSDP mesh against
torch.optim.Muon on an unsharded copy. The checks run in _muon_sharded_worker.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _train_fixtures import ENV


def test_sharded_muon_on_four_ranks():
    worker = Path(__file__).with_name("_muon_sharded_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", str(worker)]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
