"""Validation loss, perplexity and bits per byte over the first `max_batches` micro-batches of the
validation split (for a mixture: of each source's validation split).

The validation stream is rewound before every evaluation, so each one scores the same tokens and the
numbers are comparable across steps (and across rank counts, since the global stream is the same).

Bits per byte (val_bpb) does not depend on the tokenizer, so runs with different tokenizers compare:

    val_bpb = (sum of the targets' negative log-likelihood, in nats) / ln 2 / (UTF-8 bytes of their text)

over the targets that are text: special tokens (EOS, BOS) decode to no bytes and are left out of both
sums, as lm-evaluation-harness's bits_per_byte scores a document's text without its end. The bytes of
each target come from pytrain.tokenizer.token_bytes (a target opening a document, i.e. after a special
token, loses the space a SentencePiece decoder strips there).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pytrain.labels import IGNORE_INDEX
from pytrain.tokenizer.token_bytes import TokenBytes
from pytrain.train.batch import model_inputs
from pytrain.train.distributed import all_reduce_sum


class Evaluator:
    def __init__(self, dataset, micro_batch_size: int, max_batches: int, document_masking: bool,
                 device: torch.device, token_bytes: TokenBytes | None = None):
        self.dataset = dataset
        self.start = dataset.state_dict()
        self.micro_batch_size = micro_batch_size
        self.max_batches = max_batches
        self.document_masking = document_masking
        self.device = device
        self.bytes = None if token_bytes is None else (torch.as_tensor(token_bytes.lengths, device=device),
                                                       torch.as_tensor(token_bytes.start_cut, device=device))

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> tuple[float, float, float | None]:
        """(mean validation loss per token, perplexity, bits per byte or None without a byte table),
        identical on every rank."""
        self.dataset.load_state_dict(self.start)
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, tokens, text loss sum, bytes
        for _ in range(self.max_batches):
            batch = model_inputs(self.dataset.next_batch(self.micro_batch_size), self.document_masking, self.device)
            losses = model(**batch, reduction="none").double()  # [batch * seq], 0 on ignored labels
            labels = batch["labels"].flatten()
            totals[0] += losses.sum()
            totals[1] += (labels != IGNORE_INDEX).sum()
            if self.bytes is not None:
                totals[2:] += self._text_totals(losses, batch["input_ids"].flatten(), labels)
        model.train(was_training)
        loss_sum, count, text_loss_sum, text_bytes = all_reduce_sum(totals).tolist()
        loss = loss_sum / max(count, 1.0)
        bpb = text_loss_sum / math.log(2) / text_bytes if self.bytes is not None and text_bytes else None
        return loss, math.exp(min(loss, 700.0)), bpb

    def _text_totals(self, losses: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(loss summed over the targets that are text, the UTF-8 bytes of their text)."""
        lengths, start_cut = self.bytes
        targets = labels.clamp(min=0)
        text = (labels != IGNORE_INDEX) & (lengths[targets] > 0)
        opens_document = lengths[inputs] == 0  # the target follows a special token (EOS, BOS)
        nbytes = lengths[targets] - start_cut[targets] * opens_document
        return torch.stack([losses[text].sum(), nbytes[text].sum().double()])

    def row(self, model: nn.Module) -> dict:
        """The evaluation's metrics.jsonl fields."""
        loss, ppl, bpb = self(model)
        return {"val_loss": loss, "val_ppl": ppl, **({"val_bpb": bpb} if bpb is not None else {})}


class MixtureEvaluator:
    """Each source of a mixture evaluated on its own validation split; the overall val_loss is the mean of
    the sources' losses weighted by their mixture weights (the loss of the training distribution)."""

    def __init__(self, evaluators: dict[str, tuple[float, Evaluator]]):
        self.evaluators = evaluators

    def row(self, model: nn.Module) -> dict:
        results = {name: evaluator(model) for name, (_, evaluator) in self.evaluators.items()}
        weights = {name: weight for name, (weight, _) in self.evaluators.items()}

        def weighted(index: int) -> float:
            return sum(weights[n] * results[n][index] for n in results) / sum(weights.values())

        loss = weighted(0)
        row = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)),
               "val_loss_by_source": {name: result[0] for name, result in results.items()}}
        if all(result[2] is not None for result in results.values()):
            row["val_bpb"] = weighted(2)
        return row
