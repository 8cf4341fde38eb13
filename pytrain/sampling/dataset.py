"""`PackedDataset`: training samples from one packed directory, memory-mapped, resumable.

It is the mixture of that one source with weight 1, exactly what a run on `data.path` trains on: per epoch
the documents are laid end to end in a seeded shuffled order of their own and cut into samples of
`seq_len + 1` tokens (pytrain.sampling.source_stream), and the epochs form one global stream whose position is
one counter (pytrain.sampling.mixture). Each optimizer step consumes a global batch of `batch_size * world_size`
consecutive samples of that stream and rank r takes the r-th slice of it, so a run can resume with a
different number of ranks and still see each sample once.
"""

from __future__ import annotations

from pathlib import Path

from pytrain.sampling.mixture import BlendedDataset, Mixture
from pytrain.sampling.source_stream import ReadCache, SourceStream
from pytrain.errors import PytrainError


class PackedDataset(BlendedDataset):
    """Fixed-length samples over one split of a `pytrain pack` directory (or a folder of its shards).

    `ds[g]` is sample g of the global stream (epoch g // len(ds)) as a dict of int64 numpy arrays of
    length seq_len: input_ids, labels (the next tokens), position_ids (restarting at 0 at every document
    start inside the sample) and segment_ids (0, 1, 2, ... per document inside the sample, for
    intra-document attention masks). For chat data (`pack --format chat`), labels are IGNORE_INDEX (-100)
    where the loss mask is 0, so only assistant tokens are trained.
    """

    def __init__(self, path, seq_len: int, split: str = "train", seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if seq_len < 1:
            raise PytrainError(f"seq_len must be >= 1, not {seq_len}")
        mixture = Mixture.of_path(path, label=f"PackedDataset({path})")
        super().__init__([SourceStream(mixture.sources[0], split, seq_len, ReadCache(), seed, shuffle)], [1.0],
                         rank, world_size)
        self.path, self.split, self.manifest = Path(path), split, mixture.manifest
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eos_id, self.bos_id = self.manifest["eos_id"], self.manifest["bos_id"]

    def __len__(self) -> int:
        """Samples per epoch (the whole split, all ranks together)."""
        return self.streams[0].samples_per_epoch

    @property
    def epoch(self) -> int:
        return self.consumed // len(self)
