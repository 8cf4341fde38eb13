"""Training: FSDP2 parallelisation, the loop, DCP checkpoints, LR schedule, metrics and logging.

`train(config)` runs or resumes a run; `load_model_for_inference(run_dir, step)` loads its weights.
"""

from pytrain.train.run_dir import load_model_for_inference
from pytrain.train.loop import train

__all__ = ["load_model_for_inference", "train"]
