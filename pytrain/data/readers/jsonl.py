"""JSONL inputs, plain or gzipped: windows of whole lines parsed by the native extractor (GIL released,
multithreaded), or line by line with Python's json for chat conversations."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from pytrain.data.documents import BAD_JSON, BLANK, EMPTY_TEXT, NOT_STRING, TOO_LARGE
from pytrain.data.readers.base import DocBatch, Reader, changed
from pytrain.errors import PytrainError


class _JsonLines(Reader):
    """What plain and gzipped JSONL share: lines in windows of about batch_bytes, then documents."""

    def _json_lines(self, read, position: list[int] | None = None, first_line=1) -> Iterator[DocBatch]:
        """Windows of whole lines of about batch_bytes from `read(n)`; a line longer than
        --max-doc-mb is rejected and skipped as it streams by, never held in memory.
        `position[0]` follows the current line number (for error messages)."""
        settings = self.settings
        position = position if position is not None else [first_line]
        line, pending, pending_bytes, skipping = first_line, [], 0, False
        while True:
            block = read(settings.batch_bytes)
            if not block:
                break
            if skipping:  # inside an oversized line: drop bytes up to its newline
                newline = block.find(b"\n")
                if newline < 0:
                    continue
                block, skipping, line = block[newline + 1:], False, line + 1
                position[0] = line
            cut = block.rfind(b"\n") + 1
            if not cut:
                pending.append(block)
                pending_bytes += len(block)
                if pending_bytes > settings.max_doc_bytes:
                    batch = DocBatch(str(self.path), [], pending_bytes)
                    batch.rejects.append(self.too_large(f"{line}", pending_bytes, "line (at least)"))
                    yield batch
                    pending, pending_bytes, skipping = [], 0, True
                continue
            window = b"".join([*pending, block[:cut]]) if pending else block[:cut]
            pending, pending_bytes = [block[cut:]], len(block) - cut
            batch, line = self._chunk(memoryview(window), line)
            position[0] = line
            yield batch
        if pending_bytes and not skipping:
            batch, line = self._chunk(memoryview(b"".join(pending)), line)
            yield batch

    def _chunk(self, chunk, first_line: int) -> tuple[DocBatch, int]:
        from pytrain import _native

        starts = _native.index_lines(chunk, self.settings.threads)
        if not self.settings.documents.native_json:
            return self._python_chunk(chunk, starts, first_line)
        tally, path = self.tally, self.path
        texts, status, reasons = _native.extract_json_field(chunk, starts, self.settings.field_path, self.settings.threads)
        batch = DocBatch(str(path), [], len(chunk))
        oversized = np.flatnonzero(np.diff(np.asarray(starts, dtype=np.int64)) > self.settings.max_doc_bytes)
        for i in oversized:  # the line bounds the document (its text is never longer than its JSON line)
            batch.rejects.append(self.too_large(f"{first_line + i}", int(starts[i + 1] - starts[i]), "line"))
            texts[i], status[i] = None, TOO_LARGE
        if not np.any(status):  # the common case: every line is a good document
            batch.texts = texts
        else:
            tally.blank_lines += int(np.count_nonzero(status == BLANK))
            tally.empty_documents += int(np.count_nonzero(status == EMPTY_TEXT))
            batch.texts = [t for t in texts if t is not None]
            for i in np.flatnonzero((status >= BAD_JSON) & (status <= NOT_STRING)):
                raw = _raw_line(chunk, starts, i)
                batch.rejects.append(tally.reject(path, f"{first_line + i}", int(status[i]), reasons[i], raw))
        return batch, first_line + (len(starts) - 1)

    def _python_chunk(self, chunk, starts, first_line: int) -> tuple[DocBatch, int]:
        """Values the native extractor does not take apart (conversations are nested objects) go through
        Python's json (chat data is small)."""
        batch = DocBatch(str(self.path), [], len(chunk))
        for i in range(len(starts) - 1):
            where = f"{first_line + i}"
            if starts[i + 1] - starts[i] > self.settings.max_doc_bytes:
                batch.rejects.append(self.too_large(where, int(starts[i + 1] - starts[i]), "line"))
                continue
            text = _raw_line(chunk, starts, i)
            if not text.strip():
                self.tally.blank_lines += 1
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                batch.rejects.append(self.tally.reject(self.path, where, BAD_JSON, f"invalid JSON at column {error.colno}: {error.msg}", text))
                continue
            self.accept(where, value, self.settings.field_path, batch, text)
        return batch, first_line + (len(starts) - 1)


class JsonlReader(_JsonLines):
    """Plain JSONL, read (not memory-mapped: a file truncated while being packed must give an
    error naming it, not a SIGBUS), checking between windows that the file keeps its size. A shard's
    `part` is the byte range [start, end) of the file, both at line starts."""

    kind = "jsonl"
    splittable = True

    @property
    def size(self) -> int:
        return self.start_size if self.part is None else self.part.end - self.part.start

    def record(self) -> dict:
        return {**super().record(), "size": self.start_size}

    def _read(self) -> Iterator[DocBatch]:
        path, size = self.path, self.start_size  # as the command found it: a change since is refused, even before opening
        with open(path, "rb", buffering=0) as handle:
            if os.fstat(handle.fileno()).st_size != size:
                raise changed(path, size)
            start, end = (0, size) if self.part is None else (self.part.start, self.part.end)
            handle.seek(start)
            left = [end - start]

            def read(n: int) -> bytes:
                block = handle.read(min(n, left[0]))
                if os.fstat(handle.fileno()).st_size != size:  # after the read: what it returned may be cut short
                    raise changed(path, size)
                left[0] -= len(block)
                return block

            first_line = _LineNumber(_PrefixLines(path, start), 1) if start else 1
            yield from self._json_lines(read, first_line=first_line)
            if handle.tell() != end:
                raise changed(path, size)


class GzipJsonlReader(_JsonLines):
    kind = "jsonl.gz"

    def _read(self) -> Iterator[DocBatch]:
        position = [1]
        try:
            with gzip.open(self.path, "rb") as handle:
                yield from self._json_lines(handle.read, position)
        except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError; a bad deflate block a zlib.error
            raise PytrainError(f"{self.path}: corrupt or truncated gzip data near line {position[0]} ({error})") from None


class _PrefixLines:
    """The number of lines before byte `start` of a file, counted once and only when first asked for:
    counting reads the whole prefix, which a shard that starts deep inside a huge file should not pay for
    unless it has a line number to print."""

    def __init__(self, path: Path, start: int):
        self.path, self.start, self._count = path, start, None

    def count(self) -> int:
        if self._count is None:
            count, left = 0, self.start
            with open(self.path, "rb") as handle:
                while left:
                    block = handle.read(min(64 << 20, left))
                    if not block:
                        break
                    count, left = count + block.count(b"\n"), left - len(block)
            self._count = count
        return self._count


class _LineNumber:
    """A 1-based line number counted from a part's first line; it becomes the file's line number (prefix lines
    added) only when formatted into a message."""

    def __init__(self, prefix: _PrefixLines, line: int):
        self.prefix, self.line = prefix, line

    def __add__(self, lines: int) -> _LineNumber:
        return _LineNumber(self.prefix, self.line + lines)

    def __format__(self, spec: str) -> str:
        return format(self.prefix.count() + self.line, spec)

    def __str__(self) -> str:
        return format(self)


def _raw_line(chunk, starts, i: int) -> str:
    """Line i of a window as text, without its line ending (invalid UTF-8 replaced)."""
    return bytes(chunk[starts[i]:starts[i + 1]]).rstrip(b"\r\n").decode("utf-8", "replace")
