"""Learning rate as a pure function of the step: linear warmup, then cosine, linear, constant or WSD.

Being a function of the step alone, the schedule needs no state of its own: restoring the step on
resume restores it exactly.
"""

from __future__ import annotations

import math


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
