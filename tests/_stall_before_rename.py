"""`pytrain ARGS`, except that the rename putting $STALL_AT into place waits: the command then holds its output's
lock. It creates $STALL_AT.stalled when it gets there and goes on once $STALL_AT.go exists.

Lets a test start a second command on the same output while the first is provably mid-write, instead of racing
two fast commands with a timer.
"""

import os
import sys
import time
from pathlib import Path

from pytrain.cli import main

_replace = os.replace
_stall = Path(os.environ["STALL_AT"]).absolute()


def _stalling_replace(src, dst, *args, **kwargs):
    if Path(dst).absolute() == _stall:
        Path(f"{_stall}.stalled").touch()
        while not Path(f"{_stall}.go").exists():
            time.sleep(0.02)
    return _replace(src, dst, *args, **kwargs)


os.replace = _stalling_replace
sys.exit(main(sys.argv[1:]))
