"""`pytrain train`, except that the checkpoint save of step $STALL_STEP stalls once its shards are written.

Lets a test kill the process in the middle of a save (after the DCP files, before the directory is
committed) deterministically, instead of racing a fast save with a timer.
"""

import os
import sys
import time
from pathlib import Path

import torch.distributed.checkpoint as dcp

from pytrain.cli import main

_save = dcp.save
_stall = f".tmp-step_{os.environ['STALL_STEP']}"


def _stalling_save(state_dict, *, checkpoint_id, **kwargs):
    result = _save(state_dict, checkpoint_id=checkpoint_id, **kwargs)
    if Path(checkpoint_id).name == _stall:
        time.sleep(600)  # the test kills us here
    return result


dcp.save = _stalling_save
sys.exit(main(sys.argv[1:]))
