"""Writing a run's checkpoints: in the training loop's time, or (`checkpoint.async`) in the background.

Synchronous saves are pytrain.train.checkpoint.save_checkpoint: the loop waits for the whole save.

An asynchronous save stalls the loop only while the state is copied (staged): into pinned host buffers
on CUDA, into a host copy on the CPU, both allocated on the first save and reused. Training then
continues while a background thread writes the copy with `torch.distributed.checkpoint.async_save`
and completes the save exactly as a synchronous one does (pytrain.train.checkpoint.complete_save:
every file hashed and listed, train_state.json, the rename, `latest`, rotation), so a crash at any
moment leaves the previous checkpoint as `latest`. Its collectives run on a process group of their
own (gloo), never interleaved with the training step's.

At most one save is in flight: the next save, the end of training and an error path first wait for
it. A save that failed raises its PytrainError at the next step boundary on every rank at once (the
training step's all-reduce carries the news: `failed`), not silently later.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict

from pytrain.errors import PytrainError
from pytrain.train import checkpoint as ckpt
from pytrain.train.distributed import Distributed


class CheckpointWriter:
    """Saves a run's checkpoints (a collective: every rank calls `save` at the same steps) and logs each one
    with `log` once it is complete. Used as a context manager around the training loop."""

    def __init__(self, root: Path, d: Distributed, keep_last_k: int, asynchronous: bool, log: Callable[[str], None]):
        self.root, self.d, self.keep_last_k, self.asynchronous, self.log = root, d, keep_last_k, asynchronous, log
        self._pending: Future | None = None
        self.last: Path | None = None  # the last checkpoint completed
        if asynchronous:  # created by every rank, in the same order: a collective
            self._group = dist.new_group(backend="gloo")
            self._stager = DefaultStager(StagingOptions(use_pinned_memory=d.device.type == "cuda",
                                                        use_shared_memory=False, use_async_staging=False,
                                                        use_non_blocking_copy=False))
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="pytrain-checkpoint")

    def save(self, step: int, model, optimizer, train_state: dict) -> None:
        """Save checkpoint `step`: now, or staged now and written in the background."""
        if not self.asynchronous:
            self.last = ckpt.save_checkpoint(self.root, step, model, optimizer, train_state, self.d, self.keep_last_k)
            self.log(f"saved checkpoint {self.last}")
            return
        self.wait()
        started = time.perf_counter()
        tmp = ckpt.begin_save(self.root, step, self.d, self._group)
        model_state, optim_state = get_state_dict(model, optimizer)
        upload = dcp.async_save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp,
                                process_group=self._group, async_stager=self._stager)
        rng = ckpt.rng_state()
        paused_s = time.perf_counter() - started

        def complete() -> tuple[Path, str]:
            path = ckpt.complete_save(self.root, step, self.d, train_state, self.keep_last_k, rng,
                                      write=upload.result, group=self._group)
            return path, (f"saved checkpoint {path} (training paused {paused_s:.2f} s to copy the state; written "
                          f"in the background in {time.perf_counter() - started:.1f} s)")

        self._pending = self._thread.submit(complete)

    @property
    def failed(self) -> bool:
        """The save in flight ended with an error (this rank's view: the loop combines it over the ranks and
        then calls `wait`, which raises it)."""
        return self._pending is not None and self._pending.done() and self._pending.exception() is not None

    def poll(self) -> None:
        """Log the save in flight if it has completed (without waiting for it)."""
        if self._pending is not None and self._pending.done() and self._pending.exception() is None:
            self.wait()

    def wait(self) -> None:
        """Block until the save in flight is complete and log it; raise its PytrainError if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.last, message = pending.result()
            self.log(message)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Leaving the loop: wait for the save in flight, and raise its failure, unless the loop ended with an
        error of its own (then the save's failure is only logged) or was interrupted (Ctrl-C twice: leave at
        once, the save is abandoned like one killed). Then release the thread and the staging buffers."""
        if not self.asynchronous:
            return
        try:
            if kind is None:
                self.wait()
            elif issubclass(kind, Exception):
                try:
                    self.wait()
                except PytrainError as failure:
                    self.log(f"note: {failure}")
        finally:
            self._thread.shutdown(wait=kind is None or issubclass(kind, Exception))
            self._stager.close()
