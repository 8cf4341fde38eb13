"""The training loop: set up the run, then step, log, evaluate, sample and checkpoint until done.

One optimizer step consumes `train.batch_size` sequences of the global data stream: each of the W
ranks runs `accumulation` micro-batches of `micro_batch_size` sequences. What happens inside a step
(precision, loss scaling, clipping, non-finite values, the update) is pytrain.train.step's; which
checkpoint a run continues from is pytrain.train.resume's; the run directory's files are
pytrain.train.run_dir's.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from pathlib import Path

import torch

from pytrain import __version__, ops
from pytrain.config import RunConfig
from pytrain.errors import PytrainError, Stopped
from pytrain.fsutil import file_sha256
from pytrain.train import checkpoint as ckpt
from pytrain.train.checkpoint_writer import CheckpointWriter
from pytrain.train.cpu_threads import CpuThreads
from pytrain.train.data import RunData
from pytrain.train.distributed import Distributed, init_distributed, on_main, shutdown
from pytrain.train.expert_parallel import describe as describe_experts
from pytrain.train.host_memory import keep_large_buffers
from pytrain.train.log import RunLogger
from pytrain.train.metrics import ThroughputWindow, device_peak_tflops, mfu, peak_memory_gib
from pytrain.train.optim import build_optimizer, describe_optimizer
from pytrain.train.parallelize import build_model
from pytrain.train.preemption import StopRequest
from pytrain.train.resolve import ResolvedRun, resolve_run
from pytrain.train.resume import changes_since_saved, check_compatible, choose_checkpoint
from pytrain.train.run_dir import RunDir
from pytrain.train.sample import sample_prompts
from pytrain.train.schedule import Schedule
from pytrain.train.step import NonFinite, StepResult, TrainStep
from pytrain.train.summary import run_summary


def train(config: RunConfig, config_source: str | None = None) -> Path:
    """Run (or resume) the training described by `config`; return the run directory.

    `config_source`: the config file's resolved path, recorded in a new run directory and compared on
    resume (None for configs built in Python, e.g. by `pytrain demo`)."""
    d = init_distributed(config.train.device)
    try:
        with StopRequest(announce=d.is_main) as stop:
            return _Run(config, d, config_source, stop).run()
    finally:
        shutdown()


class _Run:
    def __init__(self, config: RunConfig, d: Distributed, config_source: str | None, stop: StopRequest):
        self.config, self.d, self.config_source, self.stop = config, d, config_source, stop
        self.run_dir = Path(config.train.run_dir)
        self.rundir = RunDir(self.run_dir)
        self.notes: list[str] = []
        self.last_eval: tuple[int, float] | None = None  # (step, val_loss) of the latest evaluation

    def run(self) -> Path:
        with contextlib.ExitStack() as held:
            on_main(self.d, lambda: held.enter_context(self.rundir.lock()) and None)
            self._setup()
            try:
                self._describe()
                with self.checkpoints:  # waits for a save in flight
                    self._loop()
            except PytrainError as error:
                self.logger.info(f"error: {error}", echo=False)  # the CLI prints it
                raise
            finally:
                self.logger.close()
        return self.run_dir

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        config, total = self.config, self.config.train.steps
        if self.step >= total:
            self.logger.info(f"already at step {self.step} of {total}: nothing to do")
            return
        last_saved = self.step if self.resume_from else None
        window = ThroughputWindow(self.d.device)
        first_step, first_tokens, run_started = self.step, self.tokens, time.perf_counter()
        interval_losses = []  # host floats (the step's one sync made them): the logged loss is their mean
        while self.step < total:
            step, lr = self.step + 1, self.schedule.lr(self.step + 1)
            started = time.perf_counter()
            # summed over the ranks by the step: a background save failed, a rank was signalled to stop
            shared = torch.tensor([self.checkpoints.failed, self.stop.signum], dtype=torch.int64)
            result = self._train_step(step, lr, shared)
            window.add(result.tokens, time.perf_counter() - started)
            self.step, self.tokens = step, self.tokens + result.tokens
            self._check_saves(shared)
            interval_losses.append(result.loss)
            if step == 1 or step % config.logging.every == 0 or step == total:
                logged_loss = sum(interval_losses) / len(interval_losses)
                self._log_step(result, lr, window, logged_loss)
                window.restart()
                interval_losses.clear()
            if self.evaluator and (step % config.train.eval_every == 0 or step == total):
                row = self.evaluator.row(self.model)
                self.logger.log_eval({"step": step, "tokens": self.tokens, **row})
                self.last_eval = (step, row["val_loss"])
            if self.downstream and self.downstream.due(step, total):
                self.logger.log_tasks({"step": step, "tokens": self.tokens, **self.downstream.row(self.model)})
            if config.logging.sample_every and config.logging.sample_prompts and step % config.logging.sample_every == 0:
                self._sample()
            if ((config.checkpoint.every and step % config.checkpoint.every == 0) or step == total) and last_saved != step:
                self._save()
                last_saved = step
            if shared[1] and step < total:
                self._stop(saved=last_saved == step)
        self.checkpoints.wait()  # the summary names the last checkpoint: complete, also if written in the background
        for line in run_summary(self.run_dir, first_step=first_step, last_step=self.step,
                                wall_s=time.perf_counter() - run_started, tokens_this_run=self.tokens - first_tokens,
                                tokens_total=self.tokens, train_loss=logged_loss, val=self.last_eval,
                                checkpoint=self.checkpoints.last, prompt=(config.logging.sample_prompts or ["The"])[0]):
            self.logger.info(line)

    def _train_step(self, step: int, lr: float, shared: torch.Tensor) -> StepResult:
        batches = [self.train_data.next_batch(self.micro) for _ in range(self.accumulation)]
        top = max(int(b["input_ids"].max()) for b in batches)  # host tensors: no device sync
        if top >= self.model_config.vocab_size:  # only reachable with data.verify=none
            raise PytrainError(f"step {step}: token id {top} >= model.vocab_size {self.model_config.vocab_size} in the "
                               "training data; `pytrain verify DATA` finds it (data.verify=none skipped that check)")
        try:
            return self.train_step(batches, lr, shared)
        except NonFinite as stop:
            latest = ckpt.latest_checkpoint(self.rundir.checkpoints)
            kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint had been saved yet"
            raise PytrainError(f"{stop} at step {step}: stopping without applying the update; {kept} "
                               "(PYTRAIN_CHECK_INPUTS=1 names an out-of-range label or position, if that is the "
                               "cause)") from None

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        """Check everything, then write: a refused start (a locked run, another config's run, a model or
        tokenizer that does not match the checkpoint, corrupt data or checkpoints) changes no file, and
        neither does a run that has nothing left to do."""
        config, d, train = self.config, self.d, self.config.train
        self.cpu_threads = CpuThreads(d.local_world_size) if d.device.type == "cpu" else None
        if d.device.type == "cpu":
            keep_large_buffers()  # no page faults on the logits every step (pytrain.train.host_memory)
        ops.set_backend(train.kernels)
        torch.manual_seed(train.seed)
        random.seed(train.seed)
        self.data = RunData(config.data)
        r = resolve_run(config, int(self.data.manifest["vocab_size"]), d.world_size, d.device.type)
        self.model_config, self.seq_len, self.dtype = r.model, r.seq_len, r.dtype
        self.micro, self.accumulation, self.resolved = r.micro_batch_size, r.accumulation, r.config
        self.schedule = Schedule.of(config, r.warmup_steps)
        self.eos_id = self.data.manifest.get("eos_id")

        self.resume_from = choose_checkpoint(config, d, self.rundir, self.config_source, self.notes)
        if self.resume_from is not None:
            self.notes += on_main(d, lambda: check_compatible(self.resume_from, self.model_config.to_dict(),
                                                              self.rundir, self.data, config.checkpoint.resume_other_data))
        self.data.verify(config.data.verify, d)
        self.train_data = self.data.train_dataset(self.seq_len, train.seed, d)
        self.evaluator = None
        if train.eval_every:
            self.evaluator = self.data.evaluator(self.seq_len, d, self.micro, train.eval_max_batches)
        self.downstream = None
        if config.eval.tasks:
            from pytrain.train.downstream import DownstreamEval

            self.downstream = DownstreamEval(config.eval, r.model, self.data.tokenizer_file, self.eos_id, d)
        self.model = self._build_model(r)
        self.optimizer = build_optimizer(self.model, config.optim, d.device)
        self.train_step = TrainStep(self.model, self.optimizer, dtype=r.dtype, grad_clip=config.optim.grad_clip,
                                    document_masking=config.data.document_masking, device=d.device,
                                    loss_scale_init=train.loss_scale_init,
                                    loss_scale_growth_interval=train.loss_scale_growth_interval)
        self.step, self.tokens, self.resume_note = 0, 0, None
        if self.resume_from is not None:
            self._resume(self.resume_from)
        if self.step < train.steps:
            on_main(d, lambda: self.rundir.write_run_files(self.resolved.to_yaml(), self.data.tokenizer_file,
                                                           self.config_source, self.eos_id))
        self.logger = RunLogger(self.run_dir, config.logging, enabled=d.is_main, total_steps=train.steps,
                                resume_step=self.step, config=self.resolved.to_dict())
        self.checkpoints = CheckpointWriter(self.rundir.checkpoints, d, config.checkpoint.keep_last_k,
                                            config.checkpoint.async_, self.logger.info)

    def _build_model(self, r: ResolvedRun) -> torch.nn.Module:
        train, init_from = self.config.train, self.config.model.init_from
        weights = None
        if init_from and self.resume_from is None:  # a resumed run takes its weights from the checkpoint
            from pytrain.model.hf import HFWeights

            weights = HFWeights(init_from, self.model_config)
        return build_model(self.model_config, self.d, dtype=r.dtype, reduce_dtype=train.reduce_dtype,
                           ac_every=r.ac_every, compile=train.compile, cpu_offload=train.cpu_offload,
                           hsdp=train.hsdp, hsdp_shard_size=train.hsdp_shard_size,
                           expert_parallel=train.expert_parallel, seed=train.seed, initial_weights=weights)

    def _resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.d, self.model_config.to_dict())
        self.step, self.tokens = state["step"], state["tokens"]
        self.train_data.load_state_dict(state["data"])
        if not state.get("rng_restored"):
            torch.manual_seed(self.config.train.seed + self.d.rank + state["step"])
            random.seed(self.config.train.seed + self.d.rank + state["step"])
        scale_note = self.train_step.load_state_dict(state, str(path / ckpt.TRAIN_STATE))
        if scale_note:
            self.notes.append(scale_note)
        changes = changes_since_saved(state, self.config.train.batch_size, self.schedule)
        self.resume_note = (f"resumed from {path} at step {self.step} (saved by {state['world_size']} rank{'' if state['world_size'] == 1 else 's'})"
                            + "".join(f"; note: {change}" for change in changes))

    def _describe(self) -> None:
        config, d, mc = self.config, self.d, self.model_config
        device = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "CPU"
        self.flops_per_token = mc.flops_per_token(self.seq_len)
        self.peak_tflops, peak_note = device_peak_tflops(d.device, config.logging.peak_tflops)
        tokens_per_step = config.train.batch_size * self.seq_len
        log = self.logger.info
        log(f"pytrain {__version__} | run {self.run_dir} | {d.world_size} rank(s) on {device} | dtype {self.dtype} | "
            f"kernels {config.train.kernels}")
        active = f" ({mc.num_params(active=True) / 1e6:.2f}M active per token)" if mc.num_experts else ""
        log(f"model: preset {config.model.preset}, {mc.num_params() / 1e6:.2f}M parameters{active}, "
            f"{self.flops_per_token / 1e9:.3f} GFLOPs/token at seq {self.seq_len}")
        log(f"batch: {config.train.batch_size} x {self.seq_len} = {tokens_per_step} tokens/step "
            f"({d.world_size} rank(s) x {self.micro} sequences x {self.accumulation} micro-batch(es))")
        log(f"MFU peak per device: {peak_note}")
        for line in self.data.describe():
            log(line)
        if experts := describe_experts(self.model):
            log(experts)
        for line in describe_optimizer(self.optimizer, self.model):
            log(line)
        for note in [*self.notes, *self.data.notes]:
            log(f"note: {note}")
        self._adjust_cpu_threads()
        if self.resume_note:
            log(self.resume_note)
        elif config.model.init_from:
            log(f"weights from {config.model.init_from} (model.init_from)")
            hf_tokenizer = Path(config.model.init_from) / "tokenizer.json"
            if hf_tokenizer.is_file() and file_sha256(hf_tokenizer) != self.data.manifest.get("tokenizer", {}).get("sha256"):
                log(f"note: {self.data.pack_dir} was packed with another tokenizer than {hf_tokenizer}: token ids "
                    "may not mean what the weights learned")

    # ------------------------------------------------------------------ logging, samples, checkpoints
    def _adjust_cpu_threads(self) -> None:
        note = self.cpu_threads.adjust() if self.cpu_threads else None
        if note:
            self.logger.info(note)

    def _log_step(self, result: StepResult, lr: float, window: ThroughputWindow, loss: float) -> None:
        """A metrics row for the steps since the previous one: `loss` is their mean (as Hugging Face's Trainer
        logs it); the gradient norm, loss scale and lr are the last step's."""
        self._adjust_cpu_threads()
        tokens_per_s, wall_s = window.tokens_per_s, window.wall_s
        wall_steps_per_s = window.tokens / max(wall_s, 1e-9) / (self.config.train.batch_size * self.seq_len)
        self.logger.log_step({
            "step": self.step, "tokens": self.tokens, "loss": loss, "ppl": math.exp(min(loss, 700.0)),
            "lr": lr, "grad_norm": None if result.skipped else result.grad_norm, "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s / self.d.world_size, self.flops_per_token, self.peak_tflops),
            "memory_gib": peak_memory_gib(self.d.device), "elapsed_s": wall_s,
            **result.router, **self.train_step.metrics(), **self.data.progress(self.train_data),
        }, eta_s=(self.config.train.steps - self.step) / max(wall_steps_per_s, 1e-9))

    def _sample(self) -> None:
        logging = self.config.logging
        samples = sample_prompts(self.model, self.rundir.tokenizer_file, logging.sample_prompts, step=self.step,
                                 seed=self.config.train.seed, max_new_tokens=logging.sample_max_tokens,
                                 max_len=self.seq_len, temperature=logging.sample_temperature, eos_id=self.eos_id,
                                 device=self.d.device)
        for prompt, completion in samples:
            self.logger.info(f"sample step {self.step} | {prompt!r} -> {completion!r}")

    def _check_saves(self, shared: torch.Tensor) -> None:
        """Log a background save that completed; raise, on every rank at the same step, one that failed."""
        if shared[0]:
            self.checkpoints.wait()
        self.checkpoints.poll()

    def _stop(self, saved: bool) -> None:
        """A rank was signalled (pytrain.train.preemption): save unless saved at this step, wait, stop."""
        signum = self.stop.signum or signal.SIGTERM  # a rank the signal did not reach stops with the others
        name = signal.Signals(signum).name
        self.logger.info(f"stopping at step {self.step}: {name} received")
        if not saved:
            self._save()
        self.checkpoints.wait()
        raise Stopped(f"stopped by {name} at step {self.step} of {self.config.train.steps} after saving checkpoint "
                      f"{ckpt.step_name(self.step)}", 128 + signum)

    def _save(self) -> None:
        state = {"step": self.step, "tokens": self.tokens, "world_size": self.d.world_size,
                 "batch_size": self.config.train.batch_size, "seq_len": self.seq_len,
                 "data": self.train_data.state_dict(), "model_config": self.model_config.to_dict(),
                 "schedule": self.schedule.to_dict(), **self.train_step.state_dict()}
        self.checkpoints.save(self.step, self.model, self.optimizer, state)
