"""The interface every `pytrain pack` input reader implements, and what all of them share.

A reader yields `DocBatch`es of roughly `batch_bytes` of input (memory stays flat however large the input
is): documents as texts for the tokenizer, or, for inputs that already hold token ids, the ids themselves.
It knows its size (progress, shard cuts), the files the output must never touch, and what the manifest
records about it. Every reader refuses an input that changes size after the command started (the
general form of the truncation check), and sends bad values through one `Tally` that either stops with
`file:where: reason` or counts them as rejects by reason (`--on-bad-line`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pytrain.data.documents import MISSING_FIELD, REASON_NAMES, TOO_LARGE, Refused, TextDocuments, size_text
from pytrain.errors import PytrainError

# A document larger than this is refused before it reaches the tokenizer: HF tokenizers hold
# ~150 bytes per input byte while encoding one text (ids, offsets, token strings; measured:
# 16 MB -> 2.3 GB peak), so 16 MB keeps one document under ~2.5 GB. A whole book is ~1 MB.
DEFAULT_MAX_DOC_BYTES = 16 << 20
ROWS_PER_BATCH = 4096


@dataclass(frozen=True)
class Part:
    """A slice of one input (see pytrain.data.shard): bytes [start, end) of a plain JSONL file, both ends at
    line starts, or rows [start, end) of a parquet file or datasets folder, or documents of a Megatron dataset."""

    start: int
    end: int


@dataclass
class DocBatch:
    """Documents of one input window: strings (for chat data lists of (text, trained) segments), or ready
    token ids: `tokens` (checked against the vocabulary, in the pack's dtype, framed) cut by `lengths`."""

    source: str
    texts: list
    nbytes: int  # input bytes this batch consumed (progress)
    rejects: list[dict] = field(default_factory=list)
    tokens: np.ndarray | None = None
    lengths: np.ndarray | None = None


@dataclass
class ReadSettings:
    """What the run asks of every reader (each reader uses the parts that apply to its format)."""

    field_path: list
    documents: object = field(default_factory=TextDocuments)  # TextDocuments or ChatDocuments
    txt_split: str = "file"
    on_bad_line: str = "error"
    batch_bytes: int = 2 << 20
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES
    threads: int = 0
    max_token_id: int | None = None  # readers of token ids: the largest id the tokenizer has
    token_dtype: np.dtype | None = None  # ... the pack's dtype they narrow to
    frame_ids: tuple[int, int] = (-1, -1)  # ... and the (BOS, EOS) a document gets where it lacks it (-1: none)
    hf_split: str | None = None


class Tally:
    """Counts of one run across its readers, and the --on-bad-line policy for bad values."""

    def __init__(self, on_bad_line: str = "error"):
        self.on_bad_line = on_bad_line
        self.documents = self.empty_documents = self.blank_lines = 0
        self.rejected: Counter[str] = Counter()

    def reject(self, source, where: str, reason_code: int, reason: str, raw: str | None) -> dict:
        if self.on_bad_line == "error":
            fix = "raise --max-doc-mb" if reason_code == TOO_LARGE else "fix it"
            raise PytrainError(f"{source}:{where}: {reason} ({fix}, or pass --on-bad-line skip to skip such lines)")
        name = REASON_NAMES[reason_code]
        self.rejected[name] += 1
        record = {"source": str(source), "location": where, "reason": name, "detail": reason}
        if raw is not None:
            record["raw"] = raw
        return record


def describe_path(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


class Reader:
    """One input of a run. Subclasses set `kind` and implement `_read`; `size` and `record` where the
    input is not one plain file."""

    kind = ""
    splittable = False  # whether a shard may take a Part of it (see pytrain.data.shard)
    reads_token_ids = False  # batches hold ready token ids (`tokens`, `lengths`), not texts for the tokenizer

    def __init__(self, path: Path, settings: ReadSettings, tally: Tally, part: Part | None = None):
        self.path, self.settings, self.tally, self.part = path, settings, tally, part
        self.documents = 0
        # The size when the command started: a file cut or grown at any moment after is reported as changed
        # (not as a bad last line, nor a SIGBUS).
        self.start_size = self._file_size()
        self._mtime = path.stat().st_mtime if path.exists() else None

    def _file_size(self) -> int | None:
        return self.path.stat().st_size if self.path.is_file() else None

    @property
    def size(self) -> int:
        """Input bytes this reader will consume (progress)."""
        return self.start_size

    @property
    def guarded(self) -> list:
        """The files and folders the output must neither be, hold, nor lie inside."""
        return [self.path]

    def batches(self) -> Iterator[DocBatch]:
        for batch in self._read():
            self.documents += len(batch.texts) if batch.lengths is None else len(batch.lengths)
            yield batch
        self.check_unchanged(self.path, self.start_size)

    def _read(self) -> Iterator[DocBatch]:
        raise NotImplementedError

    def record(self) -> dict:
        """What the manifest's `sources` list records about this input."""
        return {"path": str(self.path.resolve()), "kind": self.kind, "size": self.size, "mtime": self._mtime,
                "documents": self.documents, **({"part": [self.part.start, self.part.end]} if self.part else {})}

    @staticmethod
    def check_unchanged(path: Path, size: int | None) -> None:
        if size is not None and (not path.exists() or path.stat().st_size != size):
            raise changed(path, size)

    # ------------------------------------------------------------------ values -> documents
    def too_large(self, where: str, size: int, what: str = "document") -> dict:
        limit = self.settings.max_doc_bytes
        return self.tally.reject(self.path, where, TOO_LARGE,
                                 f"{what} of {size_text(size)} is over the --max-doc-mb limit ({size_text(limit)})", None)

    def accept(self, where: str, value, field_path: list, batch: DocBatch, raw: str | None) -> None:
        """Follow `field_path` (a tail of the run's field path) into `value`; add the document or reject it."""
        full = self.settings.field_path
        walked = len(full) - len(field_path)
        for depth, key in enumerate(field_path, start=walked + 1):
            # An index step needs a list and a key step an object, as in the native JSON extractor.
            if isinstance(key, int):
                value = value[key] if isinstance(value, list) and key < len(value) else None
            else:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                batch.rejects.append(self.tally.reject(self.path, where, MISSING_FIELD, f"missing or null field {describe_path(full[:depth])}", raw))
                return
        if value is None:
            batch.rejects.append(self.tally.reject(self.path, where, MISSING_FIELD, f"field {describe_path(full)} is null", raw))
            return
        try:
            document = self.settings.documents.document(value, describe_path(full), self.settings.max_doc_bytes)
        except Refused as refused:
            batch.rejects.append(self.tally.reject(self.path, where, refused.code, str(refused), raw))
            return
        if document is None:
            self.tally.empty_documents += 1
        else:
            batch.texts.append(document)

    def column_name(self, names) -> str:
        """The column a columnar input's documents are in: the first step of the field path."""
        from pytrain.errors import did_you_mean

        column = self.settings.field_path[0]
        if column not in names:
            raise PytrainError(f"{self.path}: no column {column!r}{did_you_mean(str(column), names)}; columns: {', '.join(names)}")
        return column

    def rows(self, values: list, first_row: int) -> DocBatch:
        """Documents from one column batch of a columnar input."""
        batch = DocBatch(str(self.path), [], 0)
        for i, value in enumerate(values):
            self.accept(f"row {first_row + i}", value, self.settings.field_path[1:], batch, None)
        return batch


def changed(path: Path, size: int) -> PytrainError:
    now = path.stat().st_size if path.exists() else "no"
    return PytrainError(f"{path}: changed while being packed ({size} bytes at the start, {now} bytes now); "
                        "pack a file that nothing is writing to")
