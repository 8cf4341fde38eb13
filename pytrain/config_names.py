"""The names other trainers give pytrain's config keys, so that an unknown key points at pytrain's own.

Users arrive with Hugging Face TrainingArguments (`learning_rate`, `max_steps`, `per_device_train_batch_size`,
...) or torchtitan job configs (`optimizer.lr`, `training.steps`, `checkpoint.interval`, ...) in their heads;
spelling similarity alone does not lead from `learning_rate` to `optim.lr`. Torch-free, like config.py.
"""

from __future__ import annotations

from pytrain.errors import did_you_mean

# A key as another trainer names it (in any section, or at the top level) -> pytrain's key.
HF_TRAINING_ARGUMENTS = {  # fields of transformers.TrainingArguments
    "learning_rate": "optim.lr", "max_steps": "train.steps", "num_train_epochs": "train.steps",
    "per_device_train_batch_size": "train.micro_batch_size", "per_device_eval_batch_size": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.micro_batch_size",  # accumulation = batch_size / (micro x ranks)
    "warmup_steps": "schedule.warmup_steps",
    "lr_scheduler_type": "schedule.name", "weight_decay": "optim.weight_decay", "adam_beta1": "optim.betas",
    "adam_beta2": "optim.betas", "adam_epsilon": "optim.eps", "max_grad_norm": "optim.grad_clip", "seed": "train.seed",
    "output_dir": "train.run_dir", "save_steps": "checkpoint.every", "save_total_limit": "checkpoint.keep_last_k",
    "resume_from_checkpoint": "checkpoint.resume", "logging_steps": "logging.every", "eval_steps": "train.eval_every",
    "bf16": "train.dtype", "fp16": "train.dtype", "tf32": "train.dtype", "torch_compile": "train.compile",
    "gradient_checkpointing": "train.activation_checkpointing", "report_to": "logging.wandb",
}
OTHER_TRAINERS = {
    # Hugging Face example scripts and TRL
    "max_seq_length": "data.seq_len", "block_size": "data.seq_len", "max_length": "data.seq_len",
    "train_file": "data.path", "dataset_path": "data.path", "model_name_or_path": "model.init_from",
    "train_batch_size": "train.batch_size", "warmup_ratio": "schedule.warmup_steps",  # (TrainingArguments before v5)
    # torchtitan's job config (sections optimizer, lr_scheduler, training, checkpoint, metrics, ...)
    "local_batch_size": "train.micro_batch_size", "global_batch_size": "train.batch_size",
    "max_norm": "optim.grad_clip", "mixed_precision_param": "train.dtype", "mixed_precision_reduce": "train.reduce_dtype",
    "enable_cpu_offload": "train.cpu_offload", "interval": "checkpoint.every", "keep_latest_k": "checkpoint.keep_last_k",
    "log_freq": "logging.every", "enable_tensorboard": "logging.tensorboard", "enable_wandb": "logging.wandb",
    "dump_folder": "train.run_dir", "flavor": "model.preset", "decay_ratio": "schedule.decay_fraction",
    "min_lr_factor": "schedule.min_lr_ratio", "decay_type": "schedule.name", "freq": "train.eval_every",
}
FOREIGN_KEYS = {**OTHER_TRAINERS, **HF_TRAINING_ARGUMENTS}
# A section as another trainer names it -> pytrain's section.
FOREIGN_SECTIONS = {"optimizer": "optim", "lr_scheduler": "schedule", "scheduler": "schedule", "training": "train",
                    "trainer": "train", "metrics": "logging", "job": "train", "activation_checkpoint": "train",
                    "compile": "train", "validation": "train", "dataset": "data"}


def suggest_key(dotted: str, section_keys: list[str], all_keys: list[str]) -> str:
    """' (did you mean "optim.lr"?)' for an unknown `section.key`: the one key of another section that has this
    name, else another trainer's name for a pytrain key, else the closest spelling among `section_keys`."""
    key = dotted.rpartition(".")[2]
    elsewhere = [full for full in all_keys if full.rpartition(".")[2] == key]
    target = elsewhere[0] if len(elsewhere) == 1 else FOREIGN_KEYS.get(key)
    return f' (did you mean "{target}"?)' if target else did_you_mean(dotted, section_keys)


def suggest_section(name: str, sections) -> str:
    """' (did you mean "optim"?)' for an unknown top-level name: another trainer's section or key name, else the
    closest spelling."""
    target = FOREIGN_SECTIONS.get(name) or FOREIGN_KEYS.get(name)
    return f' (did you mean "{target}"?)' if target else did_you_mean(name, sections)
