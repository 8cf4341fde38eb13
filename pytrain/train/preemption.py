"""Stopping a run with a checkpoint on SIGTERM (how SLURM and other schedulers preempt a job) or SIGINT (Ctrl-C).

The first signal only raises a flag and says so in one line. The loop adds the flag to the all-reduce each
training step already makes (pytrain.train.step), so every rank learns at the same step that some rank
was signalled, without a collective of its own; after that step the run saves a checkpoint, waits for it
to be complete, and stops with exit code 128 + the signal's number. The step in progress when the signal
came and (when its all-reduce had already passed) the next one, which carries the flag, are trained and
saved: no work is lost.

A second signal stops at once, as if pytrain had not caught the first (SIGINT: KeyboardInterrupt;
SIGTERM: the default action, the process ends). A repeat within DUPLICATE_S of the first counts as the
same request: SLURM signals every process of a job and torchrun forwards the signal it gets to its
workers, so a worker often receives one preemption twice within milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_S = 1.0


class StopRequest:
    """While entered (in the main thread), SIGTERM and SIGINT set `signum` instead of ending the process."""

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.signum = 0  # the first signal received, 0 while none
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first_at = signum, now
            if self.announce:
                print(f"pytrain: {signal.Signals(signum).name} received: saving a checkpoint after the next step at "
                      "the latest, then stopping (a second signal stops at once)", file=sys.stderr, flush=True)
            return
        if now - self._first_at < DUPLICATE_S:
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        self._restore()
        if callable(previous):
            previous(signum, frame)  # SIGINT's default handler raises KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)  # now handled by the default action: the process ends
