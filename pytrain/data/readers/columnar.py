"""Columnar inputs through pyarrow, a record batch at a time: parquet files and `datasets.save_to_disk`
folders. A shard's part is a row range."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pytrain.data.readers.base import ROWS_PER_BATCH, DocBatch, Reader
from pytrain.errors import PytrainError


def open_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as error:
        raise PytrainError(f"{path}: not a readable parquet file ({error})") from None


def arrow_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.arrow"))


class ParquetReader(Reader):
    kind = "parquet"
    splittable = True

    @staticmethod
    def row_count(path: Path) -> int:
        return open_parquet(path).metadata.num_rows

    def _read(self) -> Iterator[DocBatch]:
        parquet = open_parquet(self.path)
        column = self.column_name(parquet.schema_arrow.names)
        metadata = parquet.metadata
        total = max(1, metadata.num_rows)
        first, last = (0, metadata.num_rows) if self.part is None else (self.part.start, self.part.end)
        # Only the row groups that overlap [first, last) are read; their batches are cut to it.
        groups, row, cursor = [], 0, 0
        for g in range(metadata.num_row_groups):
            rows = metadata.row_group(g).num_rows
            if cursor < last and cursor + rows > first:
                row = cursor if not groups else row  # the first selected group's first row
                groups.append(g)
            cursor += rows
        if not groups:
            return
        for record_batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, row_groups=groups, columns=[column]):
            lo, hi = max(first - row, 0), min(last - row, record_batch.num_rows)
            if lo < hi:
                batch = self.rows(record_batch.column(0).slice(lo, hi - lo).to_pylist(), row + lo)
                batch.nbytes = self.size * (hi - lo) // total
                yield batch
            row += record_batch.num_rows
            if row >= last:
                return


class ArrowReader(Reader):
    """A `datasets.save_to_disk` folder (one split)."""

    kind = "arrow"
    splittable = True

    @property
    def size(self) -> int:
        return arrow_bytes(self.path)

    @staticmethod
    def row_count(path: Path) -> int:
        import datasets

        return len(datasets.load_from_disk(str(path)))

    def _read(self) -> Iterator[DocBatch]:
        import datasets

        dataset = datasets.load_from_disk(str(self.path))
        column = self.column_name(dataset.column_names)
        total = max(1, len(dataset))
        first, last = (0, len(dataset)) if self.part is None else (self.part.start, self.part.end)
        table = dataset.select_columns([column]).with_format("arrow")
        for row in range(first, last, ROWS_PER_BATCH):
            rows = table[row:min(row + ROWS_PER_BATCH, last)]
            batch = self.rows(rows.column(0).to_pylist(), row)
            batch.nbytes = self.size * rows.num_rows // total
            yield batch
