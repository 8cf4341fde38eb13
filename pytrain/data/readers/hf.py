"""`hf:NAME[:CONFIG]` inputs: a Hugging Face dataset by name, streamed with `datasets.load_dataset(...,
streaming=True)` (nothing is downloaded into a cache first). NAME is a hub name resolved from the local
HF cache (offline with HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1) or a local dataset repository folder."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pytrain.data.readers.base import ROWS_PER_BATCH, DocBatch, Reader
from pytrain.errors import PytrainError

PREFIX = "hf:"


def parse_name(given: str) -> tuple[str, str | None]:
    """`hf:NAME[:CONFIG]` -> (NAME, CONFIG or None)."""
    body = given[len(PREFIX):]
    name, _, config = body.partition(":")
    if not name:
        raise PytrainError(f"{given}: no dataset name; write hf:NAME or hf:NAME:CONFIG (e.g. hf:roneneldan/TinyStories)")
    return name, config or None


class HfReader(Reader):
    kind = "hf"

    def __init__(self, given, settings, tally, part=None):
        self.given = str(given)
        self.name, self.config = parse_name(self.given)
        self.split = settings.hf_split or "train"
        try:
            import datasets
        except ImportError:
            raise PytrainError(f"{self.given}: hf: inputs need the `datasets` package; pip install datasets") from None
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user as one line, below
        datasets.logging.disable_progress_bar()
        try:
            self.dataset = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
        except Exception as error:  # datasets raises many types (not found, offline, bad split): one line each
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PytrainError(f"{self.given} (split {self.split}): cannot load it with datasets ({reason})") from None
        local = Path(self.name)
        super().__init__(local if local.is_dir() else Path(self.given), settings, tally, part)
        self.local = local.is_dir()

    def _file_size(self) -> None:
        return None  # a dataset, not a file: nothing to compare at the end

    @property
    def size(self) -> int:
        splits = getattr(self.dataset.info, "splits", None) or {}
        return int(getattr(splits.get(self.split), "num_bytes", 0) or 0)

    @property
    def guarded(self) -> list:
        return [self.path] if self.local else []

    def record(self) -> dict:
        info = self.dataset.info
        return {"path": self.given, "kind": self.kind, "name": self.name, "config": self.config, "split": self.split,
                **({"local_folder": str(self.path.resolve())} if self.local else {}),
                "version": str(info.version) if info.version else None,
                "fingerprint": getattr(self.dataset, "_fingerprint", None), "documents": self.documents}

    def _read(self) -> Iterator[DocBatch]:
        column = None
        row = 0
        for rows in self.dataset.iter(batch_size=ROWS_PER_BATCH):
            column = column or self.column_name(list(rows))
            values = rows[column]
            batch = self.rows(values, row)
            batch.nbytes = sum(len(v) for v in values if isinstance(v, str))
            row += len(values)
            yield batch
