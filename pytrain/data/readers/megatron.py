"""Megatron-LM indexed datasets as a pack input: token ids copied, not re-tokenized.

The .bin is read (not memory-mapped: a file cut while being packed must give an error naming it, not a
SIGBUS) in windows of whole documents into one reused buffer; each window is checked against the tokenizer's
vocabulary, narrowed to the pack's dtype and framed with BOS/EOS in one native pass (GIL released)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from pytrain.data import megatron
from pytrain.data.documents import TextDocuments
from pytrain.data.readers.base import DocBatch, Reader, changed
from pytrain.errors import PytrainError

WINDOW_BYTES = 16 << 20  # at least this much .bin per batch (bench_megatron.py: 2 MB windows were 20% slower)


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
        buffer = np.empty(0, np.uint8)  # reused: each window's ids are copied out of it by the native pass
        with open(self.path, "rb", buffering=0) as handle:
            d = first
            while d < last:
                end = int(np.searchsorted(offsets, offsets[d] + window, side="right")) - 1
                end = min(max(end, d + 1), last)
                lengths = np.diff(offsets[d:end + 1])
                if end == d + 1 and lengths[0] * itemsize > settings.max_doc_bytes:  # refused before it is read
                    batch = DocBatch(str(self.path), [], int(lengths[0]) * itemsize, tokens=np.zeros(0, settings.token_dtype),
                                     lengths=lengths[:0])
                    batch.rejects.append(self.too_large(f"document {d}", int(lengths[0]) * itemsize))
                    yield batch
                else:
                    nbytes = int(offsets[end] - offsets[d]) * itemsize
                    if len(buffer) < nbytes:
                        buffer = np.empty(nbytes, np.uint8)
                    self._read_into(handle, int(offsets[d]) * itemsize, buffer[:nbytes])
                    yield self._batch(buffer[:nbytes], lengths, d)
                d = end

    def _read_into(self, handle, start: int, view: np.ndarray) -> None:
        """Bytes [start, start + len(view)) of the .bin into `view`; the file must keep its size."""
        view, done = memoryview(view), 0
        handle.seek(start)
        while done < len(view):
            n = handle.readinto(view[done:])
            if not n:
                break
            done += n
        if done != len(view) or os.fstat(handle.fileno()).st_size != self.start_size:
            raise changed(self.path, self.start_size)

    def _batch(self, raw: np.ndarray, lengths: np.ndarray, first_doc: int) -> DocBatch:
        """Checked, narrowed, framed ids of documents first_doc... (too large and empty ones dropped and counted)."""
        from pytrain import _native

        settings, itemsize = self.settings, self.index.dtype.itemsize
        too_large = lengths * itemsize > settings.max_doc_bytes
        empty = lengths == 0
        dropped = too_large | empty
        tokens, kept_lengths, bad = _native.frame_ready_ids(
            raw, self.index.dtype.name, lengths, ~dropped if dropped.any() else None, settings.max_token_id,
            *settings.frame_ids, settings.token_dtype.name)
        if bad is not None:
            position, value = bad
            raise megatron.bad_id(self.path, value, int(self.index.doc_offsets[first_doc]) + position, settings.max_token_id)
        batch = DocBatch(str(self.path), [], int(lengths.sum()) * itemsize, tokens=tokens, lengths=kept_lengths)
        for i in np.flatnonzero(too_large):
            batch.rejects.append(self.too_large(f"document {first_doc + i}", int(lengths[i]) * itemsize))
        self.tally.empty_documents += int(np.count_nonzero(empty))
        return batch
