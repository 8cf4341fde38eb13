"""fp16's dynamic loss scaling, with torch.amp.GradScaler's rule, for FSDP2's sharded gradients.

Under `train.dtype: fp16` FSDP2 computes in fp16 from fp32 sharded parameters (the master weights the
optimizer updates) and reduces gradients in fp32 (pytrain.train.parallelize). fp16 has 5 exponent
bits: gradients below ~6e-8 flush to zero and activations' gradients above 65504 overflow. So the
loss is multiplied by `scale` before the backward and the gradients divided by it afterwards; the
scale is adapted as GradScaler does: halved after a step whose gradients overflowed (that step's
update is skipped), doubled after `growth_interval` overflow-free steps in a row.

The decision needs no collective of its own: it is taken from the global gradient norm, which every
rank computes from all ranks' shards (a DTensor's full norm is an all-reduce), so an inf or NaN in any
rank's shard makes every rank skip the same step, and the scale stays identical on every rank.
"""

from __future__ import annotations

import math

from pytrain.errors import PytrainError, shown


class LossScaler:
    def __init__(self, init_scale: float = 2.0**16, growth_interval: int = 2000, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5):
        self.scale = float(init_scale)
        self.growth_interval, self.growth_factor, self.backoff_factor = growth_interval, growth_factor, backoff_factor
        self.good_steps = 0        # overflow-free steps since the scale last changed (GradScaler's growth tracker)
        self.skipped_steps = 0     # steps of the whole run whose update was skipped

    def update(self, finite: bool) -> None:
        """After a step: `finite` is whether its (global) gradients were finite."""
        if not finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            grown = self.scale * self.growth_factor
            if math.isfinite(grown):
                self.scale = grown
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state, where: str) -> None:
        """Restore a checkpoint's state (`where`: its train_state.json, for the error)."""
        ok = (isinstance(state, dict) and isinstance(state.get("scale"), (int, float))
              and not isinstance(state.get("scale"), bool) and math.isfinite(state["scale"]) and state["scale"] > 0
              and all(type(state.get(key)) is int and state[key] >= 0 for key in ("good_steps", "skipped_steps")))
        if not ok:
            raise PytrainError(f"{where}: loss_scale must be {{scale: a number > 0, good_steps, skipped_steps: "
                               f"integers >= 0}}, got {shown(state)}")
        self.scale, self.good_steps, self.skipped_steps = float(state["scale"]), state["good_steps"], state["skipped_steps"]
