"""Megatron-LM indexed datasets as a pack input: token ids copied, not re-tokenized.

The .bin is read (not memory-mapped: a file cut while being packed must give an error naming it, not a
SIGBUS) in windows of whole documents; each window is checked against the tokenizer's vocabulary and
narrowed to the pack's dtype with numpy, at disk speed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from pytrain.data import megatron
from pytrain.data.documents import TextDocuments
from pytrain.data.readers.base import DocBatch, Reader, changed
from pytrain.errors import PytrainError

WINDOW_BYTES = 16 << 20  # at least this much .bin per batch: fewer, larger numpy calls (bench_data.py --megatron)


class MegatronReader(Reader):
    kind = "megatron"
    splittable = True  # a shard's part is a range of documents
    reads_token_ids = True

    def __init__(self, given: Path, settings, tally, part=None):
        idx, bin_ = megatron.pair_paths(given)
        if not isinstance(settings.documents, TextDocuments):
            raise PytrainError(f"{idx}: a Megatron dataset holds token ids, not conversations; drop --format chat")
        if settings.max_token_id is None:
            raise PytrainError(f"{idx}: a Megatron dataset holds token ids, not text; this command needs text")
        self.index = megatron.read_index(idx, bin_)
        super().__init__(bin_, settings, tally, part)

    @staticmethod
    def row_count(given: Path) -> int:
        return megatron.read_index(*megatron.pair_paths(given)).documents

    def _documents(self) -> tuple[int, int]:
        return (0, self.index.documents) if self.part is None else (self.part.start, self.part.end)

    @property
    def size(self) -> int:
        first, last = self._documents()
        offsets = self.index.doc_offsets
        return int(offsets[last] - offsets[first]) * self.index.dtype.itemsize

    @property
    def guarded(self) -> list:
        return [self.index.idx_path, self.index.bin_path]

    def record(self) -> dict:
        idx = self.index.idx_path
        return {**super().record(), "size": self.start_size, "path": str(self.index.bin_path.resolve().with_suffix("")),
                "idx": {"size": idx.stat().st_size, "mtime": idx.stat().st_mtime},
                "dtype": self.index.dtype.name, "sequences": self.index.sequences}

    def _read(self) -> Iterator[DocBatch]:
        index, settings = self.index, self.settings
        offsets, itemsize = index.doc_offsets, index.dtype.itemsize
        window = max(settings.batch_bytes, WINDOW_BYTES) // itemsize
        first, last = self._documents()
        with open(self.path, "rb", buffering=0) as handle:
            d = first
            while d < last:
                end = int(np.searchsorted(offsets, offsets[d] + window, side="right")) - 1
                end = min(max(end, d + 1), last)
                lengths = np.diff(offsets[d:end + 1])
                if end == d + 1 and lengths[0] * itemsize > settings.max_doc_bytes:  # refused before it is read
                    yield self._batch(np.zeros(0, index.dtype), lengths, d)
                else:
                    yield self._batch(self._tokens(handle, int(offsets[d]), int(offsets[end])), lengths, d)
                d = end

    def _tokens(self, handle, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the .bin, read into a fresh array; the file must keep its size."""
        tokens = np.empty(end - start, dtype=self.index.dtype)
        view, done = memoryview(tokens.view(np.uint8)), 0
        handle.seek(start * tokens.itemsize)
        while done < len(view):
            n = handle.readinto(view[done:])
            if not n:
                break
            done += n
        if done != len(view) or os.fstat(handle.fileno()).st_size != self.start_size:
            raise changed(self.path, self.start_size)
        return tokens

    def _batch(self, tokens: np.ndarray, lengths: np.ndarray, first_doc: int) -> DocBatch:
        """Checked, narrowed ids of documents first_doc... (too large and empty ones dropped and counted)."""
        settings, itemsize = self.settings, self.index.dtype.itemsize
        megatron.check_ids(tokens, settings.max_token_id, self.path, int(self.index.doc_offsets[first_doc]))
        batch = DocBatch(str(self.path), [], int(lengths.sum()) * itemsize)
        too_large = lengths * itemsize > settings.max_doc_bytes
        empty = lengths == 0
        if np.any(too_large | empty):
            for i in np.flatnonzero(too_large):
                batch.rejects.append(self.too_large(f"document {first_doc + i}", int(lengths[i]) * itemsize))
            self.tally.empty_documents += int(np.count_nonzero(empty))
            keep = ~(too_large | empty)
            if len(tokens):
                tokens = tokens[np.repeat(keep, lengths)]
            lengths = lengths[keep]
        batch.tokens = tokens.astype(settings.token_dtype, copy=False)
        batch.lengths = lengths
        return batch
