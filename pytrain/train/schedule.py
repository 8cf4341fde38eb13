"""Learning rate as a pure function of the step: linear warmup, then cosine, linear, constant or WSD.

Being a function of the step alone, the schedule needs no state of its own: restoring the step on
resume restores it exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def lr_at(step: int, *, peak: float, total: int, warmup: int, name: str = "cosine", min_ratio: float = 0.1,
          decay_fraction: float = 0.2) -> float:
    """The learning rate for optimizer step `step` (1-based) of `total`.

    Warmup rises linearly to `peak` over the first `warmup` steps. Then "cosine" and "linear" fall to
    `min_ratio * peak` at `total`; "constant" stays at `peak`; "wsd" (warmup-stable-decay) stays at `peak`
    and falls linearly to `min_ratio * peak` over the last `decay_fraction` of the steps.
    """
    if warmup and step <= warmup:
        return peak * step / warmup
    floor = peak * min_ratio
    if name == "constant":
        return peak
    if name == "wsd":
        decay_start = total - max(1, round(decay_fraction * total))
        if step <= max(decay_start, warmup):
            return peak
        progress = (step - max(decay_start, warmup)) / max(1, total - max(decay_start, warmup))
        return peak - (peak - floor) * min(1.0, progress)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "linear":
        return peak - (peak - floor) * progress
    if name == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r}")


@dataclass(frozen=True)
class Schedule:
    """One run's schedule: what `lr_at` needs besides the step. Saved with each checkpoint (`to_dict`), so a
    resumed run can say how its schedule differs from the one the checkpoint was trained under."""
    peak: float
    total: int
    warmup: int
    name: str = "cosine"
    min_ratio: float = 0.1
    decay_fraction: float = 0.2

    @classmethod
    def of(cls, config, warmup: int) -> "Schedule":
        """From a RunConfig and its resolved warmup (pytrain.train.resolve)."""
        s = config.schedule
        return cls(peak=config.optim.lr, total=config.train.steps, warmup=warmup, name=s.name,
                   min_ratio=s.min_lr_ratio, decay_fraction=s.decay_fraction)

    def lr(self, step: int) -> float:
        return lr_at(step, peak=self.peak, total=self.total, warmup=self.warmup, name=self.name,
                     min_ratio=self.min_ratio, decay_fraction=self.decay_fraction)

    def to_dict(self) -> dict:
        return asdict(self)
