"""Run logging on rank 0: a live progress line, `train.log`, `metrics.jsonl`, TensorBoard and W&B.

    train.log       human-readable: the setup, one line per logged step, evaluations, samples, errors
    metrics.jsonl   one JSON object per logged step: step, tokens, loss and ppl (the mean over the steps since the
                    previous row), lr, grad_norm, tokens_per_s,
                    mfu (null when the device peak is unknown), memory_gib, elapsed_s (under train.dtype=fp16
                    also loss_scale and skipped_steps; grad_norm is null on a skipped step; for a mixture of
                    experts aux_loss, expert_load, and z_loss / dropped_tokens when on); and one per
                    evaluation: step, tokens, val_loss, val_ppl. With data.mixture, training rows also carry
                    tokens_by_source and epoch_by_source and evaluation rows val_loss_by_source ({name: value});
                    TensorBoard and W&B get them as train/tokens_by_source/NAME, val/val_loss_by_source/NAME, ...
    tensorboard/    event files, when the tensorboard package is installed (logging.tensorboard)

On resume, rows after the resumed step (logged by the interrupted run after its last checkpoint) are
dropped from metrics.jsonl, so the file reads as one continuous run. Other ranks log nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

from pytrain.config import LoggingSection
from pytrain.fsutil import atomic_write_text
from pytrain.progress import bar, duration, human
from pytrain.safe_read import parse_json

BAR_WIDTH = 20


class RunLogger:
    def __init__(self, run_dir: Path, logging: LoggingSection, *, enabled: bool, total_steps: int,
                 resume_step: int = 0, config: dict | None = None, stream=None):
        self.enabled = enabled
        self.total_steps = total_steps
        self.stream = sys.stderr if stream is None else stream  # looked up now: tests swap sys.stderr
        self.bar = False
        self._bar_shown = False
        self._log = self._metrics = self._tensorboard = self._wandb = None
        if not enabled:
            return
        progress = logging.progress
        if progress == "auto":
            progress = "bar" if self.stream.isatty() else "lines"
        self.bar, self.lines = progress == "bar", progress != "none"
        metrics = run_dir / "metrics.jsonl"
        torn = self._truncate_metrics(metrics, resume_step)
        self._log = open(run_dir / "train.log", "a", encoding="utf-8")
        if torn:
            self.info(f"dropped {torn} unreadable row(s) from {metrics} (a write torn by a crash)")
        self._metrics = open(metrics, "a", encoding="utf-8")
        if logging.tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
        if logging.wandb:
            self._wandb = self._init_wandb(run_dir, logging, config)

    @staticmethod
    def _truncate_metrics(path: Path, resume_step: int) -> int:
        """Keep the rows up to `resume_step`; drop unreadable ones (a write torn by a crash). Returns how
        many unreadable rows were dropped."""
        if not path.exists():
            return 0
        rows = path.read_text(encoding="utf-8", errors="replace").splitlines()
        kept, torn = [], 0
        for row in rows:
            if not row.strip():
                continue
            try:
                step = parse_json(row, str(path))["step"]  # UnreadableInput is a ValueError
            except (ValueError, KeyError, TypeError):
                torn += 1
                continue
            if isinstance(step, int) and step <= resume_step:
                kept.append(row)
        if len(kept) != len(rows):
            atomic_write_text(path, "".join(row + "\n" for row in kept))
        return torn

    def _init_wandb(self, run_dir: Path, logging: LoggingSection, config: dict | None):
        if importlib.util.find_spec("wandb") is None:
            self.info("logging.wandb is set but the wandb package is not installed: not logging to W&B")
            return None
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        atomic_write_text(id_file, run_id)
        return wandb.init(project=logging.wandb_project, name=run_dir.name, id=run_id, resume="allow",
                          dir=str(run_dir), config=config)

    # ------------------------------------------------------------------ text
    def info(self, message: str, echo: bool = True) -> None:
        """A line for train.log and (with `echo`) the terminal, above the progress bar."""
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in message.splitlines() or [""]:
            self._log.write(f"{stamp} {line}\n")
        self._log.flush()
        if echo:
            self._clear_bar()
            print(message, file=self.stream, flush=True)

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\033[K")
            self._bar_shown = False

    # ------------------------------------------------------------------ metrics
    def log_step(self, row: dict, eta_s: float) -> None:
        if not self.enabled:
            return
        self._write_row(row, prefix="train")
        mfu = "" if row["mfu"] is None else f" | mfu {row['mfu']:.1%}"
        gnorm = "overflow, step skipped" if row["grad_norm"] is None else f"{row['grad_norm']:.3f}"
        scale = f" | scale {row['loss_scale']:g} ({row['skipped_steps']} skipped)" if "loss_scale" in row else ""
        router = (f" | aux {row['aux_loss']:.4f} | load {row['expert_load']:.2f}"
                  + (f" | dropped {row['dropped_tokens']:.0f}" if "dropped_tokens" in row else "")
                  if "aux_loss" in row else "")
        text = (f"step {row['step']}/{self.total_steps} | loss {row['loss']:.4f} | ppl {row['ppl']:.2f} | "
                f"lr {row['lr']:.2e} | gnorm {gnorm}{scale}{router} | {human(row['tokens_per_s'])} tok/s{mfu} | "
                f"mem {row['memory_gib']:.2f}GiB | ETA {duration(eta_s)}")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"{stamp} {text}\n")
        self._log.flush()
        if self.bar:
            self.stream.write(f"\r\033[K{bar(row['step'] / self.total_steps, BAR_WIDTH)} {text}")
            self.stream.flush()
            self._bar_shown = True
        elif self.lines:
            print(text, file=self.stream, flush=True)

    def log_eval(self, row: dict) -> None:
        if not self.enabled:
            return
        self._write_row(row, prefix="val")
        by_source = "".join(f" | {name} {loss:.4f}" for name, loss in row.get("val_loss_by_source", {}).items())
        self.info(f"eval step {row['step']} | val_loss {row['val_loss']:.4f} | val_ppl {row['val_ppl']:.2f}{by_source}")

    def _write_row(self, row: dict, prefix: str) -> None:
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        scalars = {k: v for k, v in _flatten(row).items() if k not in ("step", "tokens") and isinstance(v, (int, float))}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(f"{prefix}/{key}", value, row["step"])
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step=row["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._clear_bar()
        for handle in (self._log, self._metrics):
            handle.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _flatten(row: dict) -> dict:
    """{"tokens_by_source": {"web": 5}} -> {"tokens_by_source/web": 5}: one scalar per source for TensorBoard/W&B."""
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{name}": v for name, v in value.items()})
        else:
            flat[key] = value
    return flat
