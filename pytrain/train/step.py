"""One optimizer step's gradient computation, shared by the training loop and the benchmark.

The W ranks each run their micro-batches; each rank's summed token loss is divided by the number of
target tokens in the whole global batch and FSDP2 sums the gradients over ranks, so the gradient is
that of the global mean whatever W and the accumulation: 4 micro-batches of 2 equal one batch of 8,
on one rank or many. Gradients are reduced only after the last micro-batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from pytrain.labels import IGNORE_INDEX
from pytrain.train.batch import model_inputs
from pytrain.train.distributed import all_reduce_sum


def forward_backward(model: nn.Module, batches: list[dict], *, document_masking: bool, grad_clip: float,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Accumulate the gradients of `batches` (this rank's micro-batches) and clip them.

    Returns (global mean loss, global gradient norm before clipping) as device scalars, and the global
    number of target tokens. The optimizer step is the caller's, after it has checked the two values.
    """
    # Counted on the host (a CPU collective: gloo, even beside NCCL), so the GPU queue never waits.
    local_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    global_tokens = int(all_reduce_sum(torch.tensor(local_tokens, dtype=torch.int64)))
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        model.set_requires_gradient_sync(i == len(batches) - 1)
        loss = model(**model_inputs(batch, document_masking, device), reduction="sum")
        (loss / global_tokens).backward()
        loss_sum += loss.detach()
    grad_norm = clip_gradients(model, grad_clip)
    return all_reduce_sum(loss_sum) / global_tokens, grad_norm.to(device), global_tokens


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (before clipping), clipping to `max_norm` when it is > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):  # sharded gradients: the local norms are combined over ranks here
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
