"""The lines `pytrain train` ends with: what the run did, where its weights are, and what to run next."""

from __future__ import annotations

import shlex
from pathlib import Path

from pytrain.progress import duration, human


def run_summary(run_dir: Path, *, first_step: int, last_step: int, wall_s: float, tokens_this_run: int,
                tokens_total: int, train_loss: float, val: tuple[int, float] | None, checkpoint: Path | None,
                prompt: str) -> list[str]:
    """`train_loss`: the last logged row's (the mean over its logging interval); `val`: (step, val_loss) of the
    last evaluation, if any."""
    resumed = f" (resumed at step {first_step}; {human(tokens_total)} in all)" if first_step else ""
    evaluated = f" | val_loss {val[1]:.4f} (step {val[0]})" if val else ""
    lines = [f"done: {last_step - first_step} steps in {duration(wall_s)}, {human(tokens_this_run)} tokens{resumed} | "
             f"train loss {train_loss:.4f}{evaluated}"]
    if checkpoint is not None:
        lines.append(f"checkpoint: {checkpoint}")
    lines.append(f"next: {shlex.join(['pytrain', 'generate', '--run', str(run_dir), '--prompt', prompt])}")
    lines.append(f"      {shlex.join(['pytrain', 'export', '--run', str(run_dir), '--out', f'{run_dir}-hf'])}")
    return lines
