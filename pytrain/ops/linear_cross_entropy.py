"""Cross-entropy of a linear projection (the LM head) without materialising the logits on GPU.

Per token with logits z = hidden @ weight.T (capped as `softcap * tanh(z / softcap)` when softcap is
set), lse = logsumexp(z), label y and smoothing eps over V classes:

    loss = (1 - eps) * (lse - z_y) + eps * (lse - mean(z)) + z_loss * lse**2

Rows whose label is `ignore_index` contribute 0 and no gradient; any other label must be in [0, V)
(the kernel makes the loss NaN otherwise; `set_checks(True)` / PYTRAIN_CHECK_INPUTS=1 names the
label). "mean" divides by the number of non-ignored labels (0 when there are none, not NaN); the
count stays on the device (no host sync).
The matmul runs in hidden's dtype (a weight of another dtype, e.g. fp32 master weights under
autocast, is cast for it; its gradient comes back in its own dtype). Losses are fp32 (fp64 for fp64
inputs).
"""

from __future__ import annotations

import torch

from pytrain.errors import PytrainError
from pytrain.labels import IGNORE_INDEX
from pytrain.ops import cpu_kernels
from pytrain.ops._backend import use_cpu_kernel, use_triton
from pytrain.ops._checks import check_range

REDUCTIONS = ("mean", "sum", "none")


def _is_dtensor(t: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _check(hidden, weight, labels, reduction, label_smoothing, softcap) -> None:
    if _is_dtensor(weight) or _is_dtensor(hidden):
        raise PytrainError(
            "linear_cross_entropy got a DTensor (an FSDP2-sharded parameter?): call it inside the forward "
            "of the module that owns the LM head, where FSDP2 has unsharded the weight into a plain tensor")
    if reduction not in REDUCTIONS:
        raise PytrainError(f'linear_cross_entropy reduction must be one of {", ".join(REDUCTIONS)}, '
                           f'got "{reduction}"')
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise PytrainError(f"linear_cross_entropy expects hidden [N, H] and weight [V, H], got "
                           f"{list(hidden.shape)} and {list(weight.shape)}")
    if labels.shape != hidden.shape[:1] or labels.dtype != torch.int64:
        raise PytrainError(f"linear_cross_entropy labels must be int64 [{hidden.shape[0]}], got "
                           f"{labels.dtype} {list(labels.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise PytrainError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if softcap is not None and softcap <= 0:
        raise PytrainError(f"softcap must be positive, got {softcap}")


def _check_labels(labels, weight, ignore_index) -> None:
    check_range(labels, weight.shape[0], "linear_cross_entropy: label",
                "token ids must be below the model's vocab_size (pytrain verify checks packed data)",
                allowed=ignore_index)


def reduce_rows(rows: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-row values (0 on ignored rows); "mean" over the non-ignored count, on the device."""
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / valid.sum().clamp(min=1)


def linear_cross_entropy_reference(hidden, weight, labels, *, ignore_index=IGNORE_INDEX, reduction="mean",
                                   label_smoothing=0.0, z_loss=0.0, softcap=None, return_z_loss=False):
    """Pure-PyTorch version (materialises the logits); same contract as `linear_cross_entropy`."""
    _check(hidden, weight, labels, reduction, label_smoothing, softcap)
    _check_labels(labels, weight, ignore_index)
    logits = (hidden @ weight.to(hidden.dtype).T).to(torch.promote_types(hidden.dtype, torch.float32))
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    lse = torch.logsumexp(logits, dim=-1)
    valid = labels != ignore_index
    target = logits.gather(1, torch.where(valid, labels, 0)[:, None]).squeeze(1)
    ce = lse - target
    if label_smoothing:
        ce = (1.0 - label_smoothing) * ce + label_smoothing * (lse - logits.mean(dim=-1))
    z_rows = torch.where(valid, z_loss * lse.square(), 0.0)
    loss = reduce_rows(torch.where(valid, ce, 0.0) + z_rows, valid, reduction)
    return (loss, reduce_rows(z_rows, valid, reduction).detach()) if return_z_loss else loss


def _kernel_handles(hidden, weight, labels, backend, label_smoothing, z_loss, softcap, return_z_loss) -> bool:
    """Whether pytrain's CPU kernel (cpu_kernels.LinearCrossEntropy) computes this call: the plain loss on fp32
    CPU tensors under backend "auto" (else the reference, through autograd)."""
    return (use_cpu_kernel(hidden, backend) and cpu_kernels.usable(hidden, weight)
            and cpu_kernels.plain_cpu(labels, torch.int64)
            and not (label_smoothing or z_loss or softcap or return_z_loss))


def linear_cross_entropy(hidden, weight, labels, *, ignore_index=IGNORE_INDEX, reduction="mean", label_smoothing=0.0,
                         z_loss=0.0, softcap=None, return_z_loss=False, backend=None):
    """Cross-entropy of `hidden @ weight.T` against `labels`, chunked so the logits never exist whole.

    hidden [N, H], weight [V, H] (any V), labels [N] int64. Returns the fp32 loss (a scalar, or [N]
    for reduction="none"), or `(loss, z_loss_term)` with `return_z_loss=True`: the z-loss part of the
    loss, reduced the same way, for logging (it carries no gradient; `loss` already includes it).

    FSDP2: call this inside the forward of the module that owns the LM head (e.g. the model's
    `forward(..., labels)`), passing that module's weight. FSDP2 has unsharded the weight there, and
    the gradient flows back through its hooks. Never pass a raw sharded DTensor parameter from outside
    the module: that raises an error.
    """
    if not use_triton(hidden, backend):
        if _kernel_handles(hidden, weight, labels, backend, label_smoothing, z_loss, softcap, return_z_loss):
            _check(hidden, weight, labels, reduction, label_smoothing, softcap)
            _check_labels(labels, weight, ignore_index)
            rows = cpu_kernels.LinearCrossEntropy.apply(hidden, weight, labels, ignore_index)
            return reduce_rows(rows, labels != ignore_index, reduction)
        return linear_cross_entropy_reference(
            hidden, weight, labels, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, return_z_loss=return_z_loss)
    _check(hidden, weight, labels, reduction, label_smoothing, softcap)
    _check_labels(labels, weight, ignore_index)
    from pytrain.kernels.linear_cross_entropy import linear_cross_entropy as lce_triton

    loss, z_term = lce_triton(hidden, weight, labels, ignore_index=ignore_index, reduction=reduction,
                              label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    return (loss, z_term) if return_z_loss else loss
