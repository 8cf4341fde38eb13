"""`pytrain train`, slowed down where a test needs to act in the middle of something (env variables):

    STALL_STEP=N     the save of checkpoint N stalls once its files are written (after the DCP write,
                     before the commit; in the background thread under checkpoint.async), so a test can
                     kill the process in the middle of that save deterministically
    SLOW_WRITE_S=T   every DCP write waits T seconds before it starts (under checkpoint.async, training
                     goes on meanwhile: the copy being written must not change)
    SLOW_STEP_S=T    every training step takes T seconds longer, so a signal sent after step k arrives
                     well before the run ends
"""

import os
import sys
import time
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import state_dict_saver

from pytrain.cli import main
from pytrain.train.step import TrainStep

_save = dcp.save
_stall = f".tmp-step_{os.environ.get('STALL_STEP')}"
_write_s = float(os.environ.get("SLOW_WRITE_S", 0))
_step_s = float(os.environ.get("SLOW_STEP_S", 0))


def _slowed_save(state_dict, *, checkpoint_id, **kwargs):
    time.sleep(_write_s)
    result = _save(state_dict, checkpoint_id=checkpoint_id, **kwargs)
    if Path(checkpoint_id).name == _stall:
        time.sleep(600)  # the test kills us here
    return result


dcp.save = state_dict_saver.save = _slowed_save  # the synchronous save, and async_save's background one
if _step_s:
    _step = TrainStep.__call__

    def _slowed_step(self, *args, **kwargs):
        time.sleep(_step_s)
        return _step(self, *args, **kwargs)

    TrainStep.__call__ = _slowed_step
sys.exit(main(sys.argv[1:]))
