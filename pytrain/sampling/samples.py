"""Training samples as the model takes them, and the one global stream of them that every rank reads."""

from __future__ import annotations

import numpy as np

from pytrain.labels import IGNORE_INDEX


class SampleStream:
    """One global stream of fixed-length samples, read by every rank: step k's global batch is samples
    [consumed, consumed + batch x world) and rank r takes its r-th slice, so `consumed` alone resumes the
    stream on any number of ranks. Subclasses say what sample g is (`sample_tokens`)."""

    consumed: int
    rank: int
    world_size: int

    def sample_tokens(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def __getitem__(self, g: int) -> dict[str, np.ndarray]:
        return sample_arrays(*self.sample_tokens(int(g)))

    def get_batch(self, indices) -> dict:
        """Global samples `indices`, stacked into torch.LongTensors [len(indices), seq_len]."""
        return stack_samples([self[int(g)] for g in indices])

    def next_batch(self, batch_size: int) -> dict:
        """This rank's `batch_size` samples of the next global batch; advances the shared cursor."""
        first = self.consumed + self.rank * batch_size
        self.consumed += batch_size * self.world_size
        return self.get_batch(range(first, first + batch_size))


def sample_arrays(buf: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None) -> dict[str, np.ndarray]:
    """One training sample from its seq_len+1 tokens, the lengths of the document pieces in them and (chat
    data) their loss mask: input_ids, labels, position_ids and segment_ids, each of length seq_len."""
    seq_len = len(buf) - 1
    segment = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[:-1]
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    position = np.arange(seq_len, dtype=np.int64) - np.repeat(starts, lengths)[:-1]
    labels = buf[1:] if mask is None else np.where(mask[1:] == 1, buf[1:], IGNORE_INDEX)
    return {"input_ids": buf[:-1], "labels": labels, "position_ids": position, "segment_ids": segment}


def stack_samples(samples: list[dict]) -> dict:
    """Samples stacked into torch.LongTensors [len(samples), seq_len]."""
    import torch

    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}
