"""Downstream task scores during training: every `eval.every` steps (and at the last step) the model being
trained, sharded or not, is scored on lm-evaluation-harness tasks; the loop logs what `row` returns.

The evaluation lives beside training, in pytrain.harness: PytrainLM turns the model into the harness's
language model (every rank runs its share of the documents; FSDP2's forwards are kept in lockstep) and
the harness aggregates on rank 0. The tasks, their data and the harness itself are checked when the run
starts, before anything is written. The model is put in eval mode and run eagerly (compiled blocks would
recompile for every request shape), the random generators are given back, and the harness's progress
output is kept off the terminal, so an evaluation changes nothing of the run but its log.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

import torch
from torch import nn

from pytrain.config import EvalSection
from pytrain.errors import PytrainError
from pytrain.model.config import ModelConfig
from pytrain.train.distributed import Distributed


class DownstreamEval:
    def __init__(self, section: EvalSection, model_config: ModelConfig, tokenizer_file, eos_id: int | None,
                 d: Distributed):
        from pytrain.harness.tasks import NOT_INSTALLED, TaskSet, require_harness
        from pytrain.tokenizer.files import BOS_CANDIDATES, load_tokenizer, special_token_id

        try:
            require_harness()
        except PytrainError:
            raise PytrainError(f"eval.tasks is set, but {NOT_INSTALLED}; or remove eval.tasks") from None
        self.section, self.model_config, self.d = section, model_config, d
        self.tasks = TaskSet(section.tasks, section.include_path, option="eval.tasks", path_option="eval.include_path")
        self.tasks.check()  # a task whose data is not available offline stops the start, not the run
        self.tokenizer = load_tokenizer(tokenizer_file)
        self.eos_id = eos_id
        self.bos_id = special_token_id(self.tokenizer, None, BOS_CANDIDATES, "BOS", tokenizer_file)

    def due(self, step: int, total: int) -> bool:
        return step == total or bool(self.section.every) and step % self.section.every == 0

    def row(self, model: nn.Module) -> dict:
        """{"tasks": {task: {metric: value}}} with the harness's names, on rank 0 ({} on the others)."""
        from pytrain.harness.lm import PytrainLM
        from pytrain.harness.tasks import run_tasks, task_metrics

        lm = PytrainLM(model, self.tokenizer, eos_id=self.eos_id, bos_id=self.bos_id,
                       max_length=self.model_config.context_length, batch_size=self.section.batch_size,
                       device=self.d.device, lockstep=self.d.world_size > 1)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.compiler.set_stance("force_eager"), _quiet():
                results = run_tasks(lm, self.tasks, num_fewshot=self.section.num_fewshot, limit=self.section.limit)
        finally:
            model.train(was_training)
        return {"tasks": task_metrics(results)} if results is not None else {}


@contextlib.contextmanager
def _quiet():
    """Keep the harness's progress bars, warnings and the `git describe` it runs off the terminal (the
    trainer's progress line is there); its errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
