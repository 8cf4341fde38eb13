"""Validation loss and perplexity over the first `max_batches` micro-batches of the validation split
(for a mixture: of each source's validation split).

The validation stream is rewound before every evaluation, so each one scores the same tokens and the
numbers are comparable across steps (and across rank counts, since the global stream is the same).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pytrain.labels import IGNORE_INDEX
from pytrain.train.batch import model_inputs
from pytrain.train.distributed import all_reduce_sum


class Evaluator:
    def __init__(self, dataset, micro_batch_size: int, max_batches: int, document_masking: bool,
                 device: torch.device):
        self.dataset = dataset
        self.start = dataset.state_dict()
        self.micro_batch_size = micro_batch_size
        self.max_batches = max_batches
        self.document_masking = document_masking
        self.device = device

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> tuple[float, float]:
        """(mean validation loss per token, perplexity), identical on every rank."""
        self.dataset.load_state_dict(self.start)
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, token count
        for _ in range(self.max_batches):
            batch = model_inputs(self.dataset.next_batch(self.micro_batch_size), self.document_masking, self.device)
            totals[0] += model(**batch, reduction="sum").double()
            totals[1] += (batch["labels"] != IGNORE_INDEX).sum()
        model.train(was_training)
        loss_sum, count = all_reduce_sum(totals).tolist()
        loss = loss_sum / max(count, 1.0)
        return loss, math.exp(min(loss, 700.0))

    def row(self, model: nn.Module) -> dict:
        """The evaluation's metrics.jsonl fields."""
        loss, ppl = self(model)
        return {"val_loss": loss, "val_ppl": ppl}


class MixtureEvaluator:
    """Each source of a mixture evaluated on its own validation split; the overall val_loss is the mean of
    the sources' losses weighted by their mixture weights (the loss of the training distribution)."""

    def __init__(self, evaluators: dict[str, tuple[float, Evaluator]]):
        self.evaluators = evaluators

    def row(self, model: nn.Module) -> dict:
        by_source = {name: evaluator(model)[0] for name, (_, evaluator) in self.evaluators.items()}
        weights = {name: weight for name, (weight, _) in self.evaluators.items()}
        loss = sum(weights[n] * by_source[n] for n in by_source) / sum(weights.values())
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_loss_by_source": by_source}
