"""Training samples as the model takes them, and the one global stream of them that every rank reads."""

from __future__ import annotations

import numpy as np

from pytrain.labels import IGNORE_INDEX


class SampleStream:
    """One global stream of fixed-length samples, read by every rank: step k's global batch is samples
    [consumed, consumed + batch x world) and rank r takes its r-th slice, so `consumed` alone resumes the
    stream on any number of ranks. Subclasses say what samples `indices` are (`rows`)."""

    consumed: int
    rank: int
    world_size: int

    def rows(self, indices: list[int]) -> dict[str, np.ndarray]:
        """Global samples `indices` as int64 arrays [len(indices), seq_len] (`sample_rows`)."""
        raise NotImplementedError

    def __getitem__(self, g: int) -> dict[str, np.ndarray]:
        return {key: row[0] for key, row in self.rows([int(g)]).items()}

    def get_batch(self, indices) -> dict:
        """Global samples `indices`, as torch.LongTensors [len(indices), seq_len]."""
        import torch

        return {key: torch.from_numpy(rows) for key, rows in self.rows([int(g) for g in indices]).items()}

    def next_batch(self, batch_size: int) -> dict:
        """This rank's `batch_size` samples of the next global batch; advances the shared cursor."""
        first = self.consumed + self.rank * batch_size
        self.consumed += batch_size * self.world_size
        return self.get_batch(range(first, first + batch_size))


def sample_rows(tokens: np.ndarray, pieces: np.ndarray, offsets: np.ndarray, mask: np.ndarray | None) -> dict:
    """Training samples from rows of seq_len+1 stream tokens, the document piece of each token (numbered along the
    stream), its offset in its document and (chat data) its loss mask, all [rows, seq_len + 1]: input_ids, labels,
    position_ids (restarting at 0 at the row's start and at every document start inside it) and segment_ids (0, 1,
    2, ... per document piece inside the row), each a contiguous int64 array [rows, seq_len]."""
    segment = pieces[:, :-1] - pieces[:, :1]
    position = np.where(segment == 0, np.arange(tokens.shape[1] - 1), offsets[:, :-1])
    labels = tokens[:, 1:] if mask is None else np.where(mask[:, 1:] == 1, tokens[:, 1:], IGNORE_INDEX)
    return {"input_ids": np.ascontiguousarray(tokens[:, :-1]), "labels": np.ascontiguousarray(labels),
            "position_ids": position, "segment_ids": np.ascontiguousarray(segment)}
