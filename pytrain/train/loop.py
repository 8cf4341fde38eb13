"""The training loop: set up the run, then step, log, evaluate, sample and checkpoint until done.

One optimizer step consumes `train.batch_size` sequences of the global data stream: each of the W
ranks runs `accumulation` micro-batches of `micro_batch_size` sequences (see pytrain.train.step).
A step whose loss or gradient norm is not finite stops the run before its update is applied.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import torch

from pytrain import __version__, ops
from pytrain.config import RunConfig
from pytrain.errors import PytrainError
from pytrain.fsutil import atomic_file, atomic_write_text, file_sha256
from pytrain.train import checkpoint as ckpt
from pytrain.train.cpu_threads import CpuThreads
from pytrain.train.distributed import Distributed, all_gather_object, broadcast_object, init_distributed, shutdown
from pytrain.train.data import RunData
from pytrain.train.log import RunLogger
from pytrain.train.metrics import device_peak_tflops, mfu, peak_memory_gib, reset_peak_memory
from pytrain.train.optim import build_optimizer
from pytrain.train.parallelize import build_model
from pytrain.train.resolve import ResolvedRun, resolve_run
from pytrain.train.run_dir import RunDir
from pytrain.train.sample import sample_prompts
from pytrain.train.schedule import lr_at
from pytrain.train.step import forward_backward


def train(config: RunConfig, config_source: str | None = None) -> Path:
    """Run (or resume) the training described by `config`; return the run directory.

    `config_source`: the config file's resolved path, recorded in a new run directory and compared on
    resume (None for configs built in Python, e.g. by `pytrain demo`)."""
    d = init_distributed(config.train.device)
    try:
        return _Run(config, d, config_source).run()
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
    def __init__(self, config: RunConfig, d: Distributed, config_source: str | None):
        self.config, self.d, self.config_source = config, d, config_source
        self.run_dir = Path(config.train.run_dir)
        self.rundir = RunDir(self.run_dir)
        self.ckpt_root = self.rundir.checkpoints
        self.notes: list[str] = []

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        """Check everything, then write: a refused start (a locked run, another config's run, a model or
        tokenizer that does not match the checkpoint, corrupt data or checkpoints) changes no file."""
        config, d, train = self.config, self.d, self.config.train
        self.cpu_threads = CpuThreads(d.local_world_size) if d.device.type == "cpu" else None
        ops.set_backend(train.kernels)
        torch.manual_seed(train.seed)
        random.seed(train.seed)
        self.data = RunData(config.data)
        manifest = self.data.manifest
        r = resolve_run(config, int(manifest["vocab_size"]), d.world_size, d.device.type)
        self.model_config, self.seq_len, self.warmup, self.dtype = r.model, r.seq_len, r.warmup_steps, r.dtype
        self.micro, self.accumulation, self.resolved = r.micro_batch_size, r.accumulation, r.config
        self.eos_id = manifest.get("eos_id")
        self.data_tokenizer_sha = manifest.get("tokenizer", {}).get("sha256")

        self.resume_from = self._choose_checkpoint()
        if self.resume_from is not None:
            _on_main(d, self._check_resume_compatible)
        self._verify_data()
        self._open_data()
        self.model = self._build_model(r)
        self.optimizer = build_optimizer(self.model, config.optim, d.device)
        self.step, self.tokens = 0, 0
        self.resume_note = None
        if self.resume_from is not None:
            self._resume(self.resume_from)
        _on_main(d, self._write_run_files)
        self.logger = RunLogger(self.run_dir, config.logging, enabled=d.is_main, total_steps=train.steps,
                                resume_step=self.step, config=self.resolved.to_dict())

    def _choose_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, verified on every rank (each checks its share of the files).

        `checkpoint.resume: auto` takes the newest intact checkpoint of this run and notes the ones it
        skipped; an explicit checkpoint (resume=DIR or resume_step) that fails its checks is refused."""
        spec, step = self.config.checkpoint.resume, self.config.checkpoint.resume_step
        candidates = [Path(p) for p in _on_main(self.d, self._resume_candidates)]
        explicit = spec != "auto" or step is not None
        for path in candidates:
            problems = ckpt.verify_checkpoint_everywhere(path, self.d)
            if not problems:
                if ckpt.is_legacy(path):
                    self.notes.append(f"checkpoint {path.name} has no checksums.json (saved by an earlier pytrain): "
                                      "resuming from it without an integrity check")
                return path
            if explicit:
                raise PytrainError(f"refusing to resume from {path}: {ckpt.summarize(problems)}")
            self.notes.append(f"skipped checkpoint {path.name}: {problems[0]}")
        if candidates:
            raise PytrainError(f"{self.ckpt_root}: no intact checkpoint to resume from ({'; '.join(self.notes)}); "
                               "`pytrain verify` lists the problems, or train in another train.run_dir")
        return None

    def _resume_candidates(self) -> list[str]:
        """Rank 0 (it sees the files): checkpoints to try, best first."""
        spec, step = self.config.checkpoint.resume, self.config.checkpoint.resume_step
        existing = ckpt.list_checkpoints(self.ckpt_root)
        if existing and spec != "none":
            self.rundir.check_origin(self.config_source, self.config.checkpoint.resume_other_config)
        if spec == "none":
            if existing:
                raise PytrainError(f"{self.run_dir} already has checkpoints (steps {', '.join(map(str, existing))}); "
                                   "resume with checkpoint.resume=auto, or choose another train.run_dir")
            return []
        if spec == "auto":
            if step is not None:
                if not existing:
                    raise PytrainError(f"checkpoint.resume_step={step}: {self.run_dir} has no checkpoints")
                return [str(ckpt.find_checkpoint(self.run_dir, step))]
            return [str(path) for _, path in sorted(existing.items(), reverse=True)]  # newest first
        return [str(ckpt.find_checkpoint(spec, step))]

    def _check_resume_compatible(self) -> None:
        """Rank 0, before anything is written: the checkpoint's model and the run's tokenizer must match."""
        state = ckpt.read_train_state(self.resume_from)
        changed = ckpt.model_config_changes(state["model_config"], self.model_config.to_dict())
        if changed:
            raise PytrainError(f"cannot resume {self.resume_from}: its model differs from this config ({changed}); "
                               "restore those settings, or train in another train.run_dir")
        run_tokenizer = self.rundir.tokenizer_file
        if run_tokenizer.is_file() and file_sha256(run_tokenizer) != self.data_tokenizer_sha:
            raise PytrainError(f"cannot resume {self.run_dir}: the data ({self.data.pack_dir}) was packed with "
                               f"another tokenizer than the run's {run_tokenizer}; token ids would change meaning: "
                               "pack the data with that tokenizer, or train in another train.run_dir")

    def _verify_data(self) -> None:
        """data.verify: check the pack before trusting it (one process per node reads its files)."""
        from pytrain.data.verify import verify_pack

        mode = self.config.data.verify
        if mode == "none":
            return
        packs = self.data.pack_dirs
        problems = [p for pack in packs for p in verify_pack(pack, mode)] if self.d.local_rank == 0 else []
        found = sorted({p for rank_problems in all_gather_object(problems) for p in rank_problems})
        if found:
            where = f"data.path {packs[0]}" if len(packs) == 1 else f"{len(packs)} packs of data.mixture"
            raise PytrainError(f"{where} failed the {mode} check ({len(found)} problem(s)): {'; '.join(found)}; "
                               "re-pack, or see `pytrain verify DIR` (data.verify=none skips this check)")

    def _open_data(self) -> None:
        d, train = self.d, self.config.train
        self.train_data = self.data.train_dataset(self.seq_len, train.seed, d)
        self.evaluator = None
        if train.eval_every:
            self.evaluator = self.data.evaluator(self.seq_len, train.seed, d, self.micro, train.eval_max_batches)

    def _write_run_files(self) -> None:
        """Rank 0, after every check has passed: the resolved config, the data's tokenizer, the run's origin."""
        self.rundir.name_lock_holder()
        ckpt.remove_partial(self.ckpt_root)
        atomic_write_text(self.rundir.config_file, self.resolved.to_yaml())
        source = self.data.tokenizer_file
        if source.is_file():
            with atomic_file(self.rundir.tokenizer_file) as handle:
                handle.write(source.read_bytes())
        self.rundir.record(self.config_source, self.eos_id)

    def _build_model(self, r: ResolvedRun) -> torch.nn.Module:
        train, init_from = self.config.train, self.config.model.init_from
        weights = None
        if init_from and self.resume_from is None:  # a resumed run takes its weights from the checkpoint
            from pytrain.model.hf import HFWeights

            weights = HFWeights(init_from, self.model_config)
        return build_model(self.model_config, self.d, dtype=r.dtype, reduce_dtype=train.reduce_dtype,
                           ac_every=r.ac_every, compile=train.compile, cpu_offload=train.cpu_offload,
                           hsdp=train.hsdp, hsdp_shard_size=train.hsdp_shard_size, seed=train.seed,
                           initial_weights=weights)

    def _resume(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.d, self.model_config.to_dict())
        self.step, self.tokens = state["step"], state["tokens"]
        self.train_data.load_state_dict(state["data"])
        if not state.get("rng_restored"):
            torch.manual_seed(self.config.train.seed + self.d.rank + state["step"])
            random.seed(self.config.train.seed + self.d.rank + state["step"])
        self.resume_note = f"resumed from {path} at step {self.step} (saved by {state['world_size']} rank{'' if state['world_size'] == 1 else 's'})"
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
        for note in [*self.notes, *self.data.notes]:
            log(f"note: {note}")
        self._adjust_cpu_threads()
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
        with contextlib.ExitStack() as held:
            _on_main(self.d, lambda: held.enter_context(self.rundir.lock()) and None)
            self._setup()
            self._train()
        return self.run_dir

    def _train(self) -> None:
        try:
            self._describe()
            self._loop()
        except PytrainError as error:
            self.logger.info(f"error: {error}", echo=False)  # the CLI prints it
            raise
        finally:
            self.logger.close()

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
        top = max(int(b["input_ids"].max()) for b in batches)  # host tensors: no device sync
        if top >= self.model_config.vocab_size:  # only reachable with data.verify=none
            raise PytrainError(f"step {step}: token id {top} >= model.vocab_size {self.model_config.vocab_size} in the "
                               "training data; `pytrain verify DATA` finds it (data.verify=none skipped that check)")
        loss, grad_norm, tokens = forward_backward(self.model, batches, grad_clip=self.config.optim.grad_clip,
                                                   document_masking=self.config.data.document_masking,
                                                   device=self.d.device)
        loss_value, norm_value = torch.stack([loss, grad_norm]).tolist()  # the step's one host sync
        for name, value in (("loss", loss_value), ("gradient norm", norm_value)):
            if not math.isfinite(value):
                latest = ckpt.latest_checkpoint(self.ckpt_root)
                kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint had been saved yet"
                raise PytrainError(f"non-finite {name} ({value}) at step {step}: stopping without applying the "
                                   f"update; {kept} (PYTRAIN_CHECK_INPUTS=1 names an out-of-range label or "
                                   "position, if that is the cause)")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, tokens

    def _adjust_cpu_threads(self) -> None:
        note = self.cpu_threads.adjust() if self.cpu_threads else None
        if note:
            self.logger.info(note)

    def _log_step(self, loss: float, grad_norm: float, lr: float, tokens: int, train_s: float, wall_s: float,
                  total: int) -> None:
        """Throughput and MFU count training steps only; the ETA also counts evaluation, samples and saves."""
        self._adjust_cpu_threads()
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
        samples = sample_prompts(self.model, self.rundir.tokenizer_file, logging.sample_prompts, step=self.step,
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
