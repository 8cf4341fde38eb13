"""A dataset batch as the model's keyword arguments: used by the training step and the evaluation alike."""

from __future__ import annotations

import torch


def model_inputs(batch: dict, document_masking: bool, device: torch.device) -> dict:
    """The dataset's batch as the model's keyword arguments, on `device`.

    Without document masking, positions run 0..seq-1 across document boundaries (GPT-style packing);
    with it, positions restart at each document and attention stays within it (Llama 3 style).
    """
    keys = ("input_ids", "labels", "position_ids", "segment_ids") if document_masking else ("input_ids", "labels")
    return {key: batch[key].to(device, non_blocking=True) for key in keys}
