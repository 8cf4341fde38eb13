"""The training loop: set up the run, then step, log, evaluate, sample and checkpoint until done.

One optimizer step consumes `train.batch_size` sequences of the global data stream: each of the W
ranks runs `accumulation` micro-batches of `micro_batch_size` sequences (see pytrain.train.step).
A step whose loss or gradient norm is not finite stops the run before its update is applied.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from pytrain import __version__, ops
from pytrain.config import RunConfig, activation_checkpoint_every, resolve_model, warmup_steps, with_resolved_model
from pytrain.data.tokenizer import file_sha256
from pytrain.errors import PytrainError
from pytrain.fsutil import atomic_file, atomic_write_text
from pytrain.train import checkpoint as ckpt
from pytrain.train.distributed import Distributed, broadcast_object, init_distributed, shutdown
from pytrain.train.data import RunData
from pytrain.train.log import RunLogger
from pytrain.train.metrics import device_peak_tflops, mfu, peak_memory_gib, reset_peak_memory
from pytrain.train.optim import build_optimizer
from pytrain.train.parallelize import build_model
from pytrain.train.sample import sample_prompts
from pytrain.train.schedule import lr_at
from pytrain.train.step import forward_backward


def train(config: RunConfig) -> Path:
    """Run (or resume) the training described by `config`; return the run directory."""
    d = init_distributed(config.train.device)
    try:
        return _Run(config, d).run()
    finally:
        shutdown()


def _on_main(d: Distributed, fn):
    """Run `fn` on rank 0 only and give every rank its result, or raise its PytrainError on every rank."""
    outcome = None
    if d.is_main:
        try:
            outcome = ("ok", fn())
        except PytrainError as error:
            outcome = ("error", str(error))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise PytrainError(value)
    return value


class _Run:
    def __init__(self, config: RunConfig, d: Distributed):
        self.config, self.d = config, d
        self.run_dir = Path(config.train.run_dir)
        self.ckpt_root = self.run_dir / ckpt.CHECKPOINTS

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        config, d, train = self.config, self.d, self.config.train
        ops.set_backend(train.kernels)
        torch.manual_seed(train.seed)
        random.seed(train.seed)
        self.data = RunData(config.data)
        manifest = self.data.manifest
        self.model_config = resolve_model(config.model, int(manifest["vocab_size"]))
        self.seq_len = config.data.seq_len or self.model_config.max_position_embeddings
        if self.seq_len > self.model_config.max_position_embeddings:
            raise PytrainError(f"data.seq_len ({self.seq_len}) exceeds model.max_position_embeddings "
                               f"({self.model_config.max_position_embeddings})")
        self.micro, self.accumulation = _batch_geometry(train.batch_size, train.micro_batch_size, d.world_size)
        self.warmup = warmup_steps(config)
        self.resolved = with_resolved_model(config, self.model_config)
        self.resolved.data.seq_len = self.seq_len
        self.resolved.schedule.warmup_steps = self.warmup

        self.resume_from = _on_main(d, self._find_resume)
        _on_main(d, self._prepare_run_dir)
        self.train_data = self.data.train_dataset(self.seq_len, train.seed, d)
        self.evaluator = None
        if train.eval_every:
            self.evaluator = self.data.evaluator(self.seq_len, train.seed, d, self.micro, train.eval_max_batches)
        self.eos_id = manifest.get("eos_id")
        self.data_tokenizer_sha = manifest.get("tokenizer", {}).get("sha256")
        self.dtype = train.dtype if train.dtype != "auto" else ("bf16" if d.device.type == "cuda" else "fp32")
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, config.optim, d.device)
        self.step, self.tokens = 0, 0
        self.resume_note = None
        if self.resume_from is not None:
            self._resume(Path(self.resume_from))
        self.logger = RunLogger(self.run_dir, config.logging, enabled=d.is_main, total_steps=train.steps,
                                resume_step=self.step, config=self.resolved.to_dict())

    def _find_resume(self) -> str | None:
        """Which checkpoint to start from, decided by rank 0 (it sees the files) for every rank."""
        spec, step = self.config.checkpoint.resume, self.config.checkpoint.resume_step
        existing = ckpt.list_checkpoints(self.ckpt_root)
        if spec == "none":
            if existing:
                raise PytrainError(f"{self.run_dir} already has checkpoints (steps {', '.join(map(str, existing))}); "
                                   "resume with checkpoint.resume=auto, or choose another train.run_dir")
            return None
        if spec == "auto":
            if not existing:
                if step is not None:
                    raise PytrainError(f"checkpoint.resume_step={step}: {self.run_dir} has no checkpoints")
                return None
            return str(ckpt.find_checkpoint(self.run_dir, step))
        return str(ckpt.find_checkpoint(spec, step))

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(self.ckpt_root)
        atomic_write_text(self.run_dir / "config.yaml", self.resolved.to_yaml())
        source = self.data.tokenizer_file
        if source.is_file():
            with atomic_file(self.run_dir / "tokenizer.json") as handle:
                handle.write(source.read_bytes())

    def _build_model(self) -> torch.nn.Module:
        train, init_from = self.config.train, self.config.model.init_from
        weights = None
        if init_from and self.resume_from is None:  # a resumed run takes its weights from the checkpoint
            from pytrain.export import HFWeights

            weights = HFWeights(init_from, self.model_config)
        return build_model(self.model_config, self.d, dtype=self.dtype, reduce_dtype=train.reduce_dtype,
                           ac_every=activation_checkpoint_every(train), compile=train.compile,
                           cpu_offload=train.cpu_offload, hsdp=train.hsdp, hsdp_shard_size=train.hsdp_shard_size,
                           seed=train.seed, initial_weights=weights)

    def _resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.d, self.model_config.to_dict())
        self.step, self.tokens = state["step"], state["tokens"]
        self.train_data.load_state_dict(state["data"])
        if not state.get("rng_restored"):
            torch.manual_seed(self.config.train.seed + self.d.rank + state["step"])
            random.seed(self.config.train.seed + self.d.rank + state["step"])
        self.resume_note = f"resumed from {path} at step {self.step} (saved by {state['world_size']} ranks)"
        if state["batch_size"] != self.config.train.batch_size:
            self.resume_note += (f"; note: train.batch_size changed from {state['batch_size']} to "
                                 f"{self.config.train.batch_size}, so this is not the original run's continuation")

    def _describe(self) -> None:
        config, d, mc = self.config, self.d, self.model_config
        device = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "CPU"
        self.flops_per_token = mc.flops_per_token(self.seq_len)
        self.peak_tflops, peak_note = device_peak_tflops(d.device, config.logging.peak_tflops)
        tokens_per_step = config.train.batch_size * self.seq_len
        log = self.logger.info
        log(f"pytrain {__version__} | run {self.run_dir} | {d.world_size} rank(s) on {device} | dtype {self.dtype} | "
            f"kernels {config.train.kernels}")
        log(f"model: preset {config.model.preset}, {mc.num_params() / 1e6:.2f}M parameters, "
            f"{self.flops_per_token / 1e9:.3f} GFLOPs/token at seq {self.seq_len}")
        log(f"batch: {config.train.batch_size} x {self.seq_len} = {tokens_per_step} tokens/step "
            f"({d.world_size} rank(s) x {self.micro} sequences x {self.accumulation} micro-batch(es))")
        log(f"MFU peak per device: {peak_note}")
        for note in self.data.notes:
            log(f"note: {note}")
        if self.resume_note:
            log(self.resume_note)
        elif config.model.init_from:
            log(f"weights from {config.model.init_from} (model.init_from)")
            hf_tokenizer = Path(config.model.init_from) / "tokenizer.json"
            if hf_tokenizer.is_file() and file_sha256(hf_tokenizer) != self.data_tokenizer_sha:
                log(f"note: {self.data.pack_dir} was packed with another tokenizer than {hf_tokenizer}: token ids "
                    "may not mean what the weights learned")

    # ------------------------------------------------------------------ loop
    def run(self) -> Path:
        self._setup()
        try:
            self._describe()
            self._loop()
        except PytrainError as error:
            self.logger.info(f"error: {error}", echo=False)  # the CLI prints it
            raise
        finally:
            self.logger.close()
        return self.run_dir

    def _loop(self) -> None:
        config = self.config
        total, last_saved = config.train.steps, self.step if self.resume_from else None
        if self.step >= total:
            self.logger.info(f"already at step {self.step} of {total}: nothing to do")
            return
        window_start, window_tokens, window_train_s = time.perf_counter(), 0, 0.0
        reset_peak_memory(self.d.device)
        while self.step < total:
            step = self.step + 1
            lr = lr_at(step, peak=config.optim.lr, total=total, warmup=self.warmup, name=config.schedule.name,
                       min_ratio=config.schedule.min_lr_ratio, decay_fraction=config.schedule.decay_fraction)
            started = time.perf_counter()
            loss, grad_norm, step_tokens = self._train_step(step, lr)
            window_train_s += time.perf_counter() - started  # each step syncs on its loss: device time counts
            self.step, self.tokens = step, self.tokens + step_tokens
            window_tokens += step_tokens
            if step % config.logging.every == 0 or step == total:
                self._log_step(loss, grad_norm, lr, window_tokens, window_train_s,
                               time.perf_counter() - window_start, total)
                window_start, window_tokens, window_train_s = time.perf_counter(), 0, 0.0
                reset_peak_memory(self.d.device)
            if self.evaluator and (step % config.train.eval_every == 0 or step == total):
                self.logger.log_eval({"step": step, "tokens": self.tokens, **self.evaluator.row(self.model)})
            if config.logging.sample_every and config.logging.sample_prompts and step % config.logging.sample_every == 0:
                self._sample()
            if (config.checkpoint.every and step % config.checkpoint.every == 0) or step == total:
                if last_saved != step:
                    self._save()
                    last_saved = step

    def _train_step(self, step: int, lr: float) -> tuple[float, float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = [self.train_data.next_batch(self.micro) for _ in range(self.accumulation)]
        loss, grad_norm, tokens = forward_backward(self.model, batches, grad_clip=self.config.optim.grad_clip,
                                                   document_masking=self.config.data.document_masking,
                                                   device=self.d.device)
        loss_value, norm_value = torch.stack([loss, grad_norm]).tolist()  # the step's one host sync
        for name, value in (("loss", loss_value), ("gradient norm", norm_value)):
            if not math.isfinite(value):
                latest = ckpt.latest_checkpoint(self.ckpt_root)
                kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint had been saved yet"
                raise PytrainError(f"non-finite {name} ({value}) at step {step}: stopping without applying the "
                                   f"update; {kept}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, tokens

    def _log_step(self, loss: float, grad_norm: float, lr: float, tokens: int, train_s: float, wall_s: float,
                  total: int) -> None:
        """Throughput and MFU count training steps only; the ETA also counts evaluation, samples and saves."""
        tokens_per_s = tokens / max(train_s, 1e-9)
        wall_steps_per_s = tokens / max(wall_s, 1e-9) / (self.config.train.batch_size * self.seq_len)
        self.logger.log_step({
            "step": self.step, "tokens": self.tokens, "loss": loss, "ppl": math.exp(min(loss, 700.0)), "lr": lr,
            "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s / self.d.world_size, self.flops_per_token, self.peak_tflops),
            "memory_gib": peak_memory_gib(self.d.device), "elapsed_s": wall_s,
            **self.data.progress(self.train_data),
        }, eta_s=(total - self.step) / max(wall_steps_per_s, 1e-9))

    def _sample(self) -> None:
        logging = self.config.logging
        samples = sample_prompts(self.model, self.run_dir / "tokenizer.json", logging.sample_prompts, step=self.step,
                                 seed=self.config.train.seed, max_new_tokens=logging.sample_max_tokens,
                                 max_len=self.seq_len, temperature=logging.sample_temperature, eos_id=self.eos_id,
                                 device=self.d.device)
        for prompt, completion in samples:
            self.logger.info(f"sample step {self.step} | {prompt!r} -> {completion!r}")

    def _save(self) -> None:
        state = {"step": self.step, "tokens": self.tokens, "world_size": self.d.world_size,
                 "batch_size": self.config.train.batch_size, "seq_len": self.seq_len,
                 "data": self.train_data.state_dict(), "model_config": self.model_config.to_dict()}
        path = ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, state, self.d,
                                    self.config.checkpoint.keep_last_k)
        self.logger.info(f"saved checkpoint {path}")


def _batch_geometry(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(sequences per rank per forward, micro-batches per step) for a global batch on `world` ranks."""
    if micro_batch_size is None:
        if batch_size % world:
            raise PytrainError(f"train.batch_size ({batch_size}) must be divisible by the number of ranks ({world})")
        return batch_size // world, 1
    if batch_size % (micro_batch_size * world):
        raise PytrainError(f"train.batch_size ({batch_size}) must be a multiple of train.micro_batch_size "
                           f"({micro_batch_size}) x ranks ({world})")
    return micro_batch_size, batch_size // (micro_batch_size * world)
