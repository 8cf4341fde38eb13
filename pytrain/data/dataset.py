"""`PackedDataset`: training samples from a packed directory, memory-mapped, resumable.

Samples are built the Megatron way, per epoch: documents are laid end to end in a
seeded shuffled order, cut into samples of `seq_len + 1` tokens (inputs plus shifted
labels; neighbours share one token), and the samples are shuffled again. Both shuffles
and the sequential cutting loop run in C++ (`pytrain._native`), deterministically on
every platform. Epoch e uses seeds derived from (seed, e), so every epoch differs.

Sharding: the epochs form one global stream of samples. Each optimizer step consumes a
global batch of `batch_size * world_size` consecutive samples of that stream, and rank r
takes the r-th slice of it. The resume state is one counter, identical on every rank,
so a run can resume with a different number of ranks and still see each sample once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pytrain.data import format as fmt
from pytrain.errors import PytrainError
from pytrain.labels import IGNORE_INDEX

_MASK64 = (1 << 64) - 1


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Independent 64-bit seeds per (seed, epoch, stream) via the splitmix64 finaliser."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class _Epoch:
    """One epoch's document order, sample index and sample order."""

    def __init__(self, offsets: np.ndarray, seq_len: int, seed: int, epoch: int, shuffle: bool):
        from pytrain import _native

        n_docs = len(offsets) - 1
        if shuffle:
            self.doc_order = _native.permutation(n_docs, _epoch_seed(seed, epoch, 1))
        else:
            self.doc_order = np.arange(n_docs, dtype=np.int64)
        self.sample_index = _native.build_sample_index(np.asarray(offsets), self.doc_order, seq_len)
        n_samples = len(self.sample_index) - 1
        if shuffle:
            self.sample_order = _native.permutation(n_samples, _epoch_seed(seed, epoch, 2))
        else:
            self.sample_order = np.arange(n_samples, dtype=np.int64)


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


class PackedDataset(SampleStream):
    """Fixed-length training samples over one split of a `pytrain pack` directory.

    `ds[g]` is sample g of the global stream (epoch g // len(ds)) as a dict of int64
    numpy arrays of length seq_len: input_ids, labels (the next tokens), position_ids
    (restarting at 0 at every document start inside the sample) and segment_ids (0, 1,
    2, ... per document inside the sample, for intra-document attention masks). For chat
    data (`pack --format chat`), labels are IGNORE_INDEX (-100) where the loss mask is 0,
    so only assistant tokens are trained.
    """

    def __init__(self, path, seq_len: int, split: str = "train", seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if seq_len < 1:
            raise PytrainError(f"seq_len must be >= 1, not {seq_len}")
        if not 0 <= rank < world_size:
            raise PytrainError(f"rank {rank} is outside world_size {world_size}")
        self.path = Path(path)
        self.manifest = fmt.read_manifest(self.path)
        self.data = fmt.open_split(self.path, split, self.manifest)
        self.split, self.seq_len, self.seed, self.shuffle = split, seq_len, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eos_id = self.manifest["eos_id"]
        self.bos_id = self.manifest["bos_id"]
        self.consumed = 0
        self._epochs: dict[int, _Epoch] = {}
        self._len = len(self._epoch(0).sample_order)
        if self._len == 0:
            raise PytrainError(
                f"{self.path}: the {split} split has {self.data.num_tokens} tokens, too few for one sample "
                f"of seq_len {seq_len}; pack more data or lower seq_len"
            )

    def __len__(self) -> int:
        """Samples per epoch (the whole split, all ranks together)."""
        return self._len

    @property
    def epoch(self) -> int:
        return self.consumed // self._len

    def _epoch(self, epoch: int) -> _Epoch:
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:  # the cursor only ever straddles two epochs
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = _Epoch(self.data.offsets, self.seq_len, self.seed, epoch, self.shuffle)
        return self._epochs[epoch]

    def sample_tokens(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Global sample g: its seq_len+1 tokens, the length of each document piece in it, and
        (chat data) the loss mask of those tokens."""
        if g < 0:
            raise IndexError(g)
        epoch = self._epoch(g // self._len)
        s = int(epoch.sample_order[g % self._len])
        k, off = (int(v) for v in epoch.sample_index[s])
        need = self.seq_len + 1
        pieces, masks, lengths = [], [], []
        offsets, tokens, mask = self.data.offsets, self.data.tokens, self.data.mask
        while need:
            doc = int(epoch.doc_order[k])
            start, end = int(offsets[doc]) + off, int(offsets[doc + 1])
            take = min(end - start, need)
            if take > 0:
                pieces.append(tokens[start:start + take])
                if mask is not None:
                    masks.append(mask[start:start + take])
                lengths.append(take)
                need -= take
            k, off = k + 1, 0
        sample_mask = np.concatenate(masks) if mask is not None else None
        return np.concatenate(pieces).astype(np.int64), np.asarray(lengths, dtype=np.int64), sample_mask

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "seq_len": self.seq_len,
                "split": self.split, "shuffle": self.shuffle, "samples_per_epoch": self._len}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len", "split", "shuffle", "samples_per_epoch"):
            if state.get(key) != getattr(self, "_len" if key == "samples_per_epoch" else key):
                mine = self._len if key == "samples_per_epoch" else getattr(self, key)
                raise PytrainError(
                    f"cannot resume the data position: checkpoint has {key}={state.get(key)!r}, this run has "
                    f"{mine!r} (same dataset, seq_len and seed are needed for an exact resume)"
                )
        self.consumed = int(state["consumed"])


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
