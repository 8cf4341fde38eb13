"""Read documents from the user's inputs in bounded batches.

Every input kind yields `DocBatch`es of roughly `batch_bytes` of input, so memory stays
flat however large a file is. JSONL is memory-mapped and parsed by the native extractor
(GIL released, multithreaded); parquet and `datasets.save_to_disk` folders go through
pyarrow a record batch at a time. Bad lines raise `file:line: reason` or, with
`on_bad_line="skip"`, become reject records counted by reason.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pytrain.data import chat
from pytrain.errors import PytrainError, did_you_mean

OK, BLANK, BAD_JSON, MISSING_FIELD, NOT_STRING, EMPTY_TEXT, BAD_CONVERSATION, TOO_LARGE = range(8)
REASON_NAMES = {BAD_JSON: "bad_json", MISSING_FIELD: "missing_field", NOT_STRING: "not_a_string",
                BAD_CONVERSATION: "bad_conversation", TOO_LARGE: "too_large"}
# A document larger than this is refused before it reaches the tokenizer: HF tokenizers hold
# ~150 bytes per input byte while encoding one text (ids, offsets, token strings; measured:
# 16 MB -> 2.3 GB peak), so 16 MB keeps one document under ~2.5 GB. A whole book is ~1 MB.
DEFAULT_MAX_DOC_BYTES = 16 << 20
ROWS_PER_BATCH = 4096
_PATH_TOKEN = re.compile(r'\.([A-Za-z_][A-Za-z0-9_\-]*)|\.?\["((?:[^"\\]|\\.)*)"\]|\.?\[(\d+)\]')
_PARAGRAPH_BREAK = re.compile(rb"\n[ \t\r\f\v]*\n")


def parse_field_path(field_name: str | None = "text", jq: str | None = None, chat: bool = False) -> list[str | int]:
    """`--field text` -> ["text"]; `--jq .a.b[0]["x y"]` -> ["a", "b", 0, "x y"].

    Without either, the field is `text`, or `messages` for chat data.
    """
    if jq is None:
        field_name = field_name if field_name is not None else ("messages" if chat else "text")
        if not field_name:
            raise PytrainError("--field must not be empty")
        return [field_name]
    path, pos = [], 0
    while pos < len(jq):
        match = _PATH_TOKEN.match(jq, pos)
        if match is None:
            raise PytrainError(f"--jq {jq!r}: cannot parse at character {pos + 1}; use a path like .meta.body or .messages[0].content")
        key, quoted, index = match.groups()
        if index is not None and int(index) >= 1 << 31:
            raise PytrainError(f"--jq {jq!r}: index {index} is too large")
        if quoted is not None:
            try:
                key = json.loads(f'"{quoted}"')
            except json.JSONDecodeError as error:
                raise PytrainError(f"--jq {jq!r}: bad escape in [\"{quoted}\"] ({error.msg}); "
                                   f"write keys as JSON strings, e.g. .[\"a b\"]") from None
        path.append(key if key is not None else int(index))
        pos = match.end()
    if not path:
        raise PytrainError(f"--jq {jq!r}: empty path; use a path like .text")
    return path


def describe_path(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


@dataclass(frozen=True)
class Part:
    """A slice of one input (see pytrain.data.shard): bytes [start, end) of a plain JSONL file, both ends at line
    starts, or rows [start, end) of a parquet file or datasets folder."""

    start: int
    end: int


@dataclass
class DocBatch:
    """Documents of one input window: strings, or for chat data lists of (text, trained) segments."""

    source: str
    texts: list
    nbytes: int  # input bytes this batch consumed (progress)
    rejects: list[dict] = field(default_factory=list)


def input_kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise PytrainError(f"{path}: a DatasetDict with splits {', '.join(splits)}; pass one split, e.g. {path / splits[0]}" if splits else f"{path}: an empty DatasetDict")
        if (path / "state.json").exists() or (path / "dataset_info.json").exists():
            return "arrow"
        raise PytrainError(f"{path}: a directory that is not a datasets.save_to_disk folder (no state.json)")
    if name.endswith((".jsonl.gz", ".json.gz", ".ndjson.gz")):
        return "jsonl.gz"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    if name.endswith(".parquet"):
        return "parquet"
    raise PytrainError(f"{path}: unknown input type; expected .jsonl, .jsonl.gz, .txt, .parquet or a datasets folder")


def input_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.arrow"))
    return path.stat().st_size


class Sources:
    """All inputs of one run, read in order; counts what was taken and what was rejected."""

    def __init__(self, paths, field_path, txt_split="file", on_bad_line="error", batch_bytes=2 << 20, threads=0,
                 chat_eos_token: str | None = None, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
                 parts: list[Part | None] | None = None):
        self.paths = [Path(p) for p in paths]
        for path in self.paths:
            if not path.exists():
                raise PytrainError(f"{path}: no such file or directory")
        self.kinds = [input_kind(p) for p in self.paths]
        self.parts = list(parts) if parts is not None else [None] * len(self.paths)  # None: the whole input
        self.field_path = list(field_path)
        self.txt_split = txt_split
        self.on_bad_line = on_bad_line
        self.batch_bytes = max(1 << 16, int(batch_bytes))
        self.max_doc_bytes = int(max_doc_bytes)
        self.threads = threads
        self.chat_eos_token = chat_eos_token  # set: documents are conversations (see pytrain.data.chat)
        self.total_bytes = sum(input_bytes(p) if part is None or kind != "jsonl" else part.end - part.start
                               for p, kind, part in zip(self.paths, self.kinds, self.parts))
        self.documents = 0
        self.empty_documents = 0
        self.blank_lines = 0
        self.rejected: Counter[str] = Counter()
        self.per_source: list[dict] = []
        # Sizes when the command started: every reader compares against these, so a file cut or grown at any
        # moment after is reported as changed (not as a bad last line, nor a SIGBUS).
        self._start_size = {path: path.stat().st_size for path in self.paths if path.is_file()}

    def batches(self) -> Iterator[DocBatch]:
        readers = {"jsonl": self._jsonl, "jsonl.gz": self._jsonl_gz, "txt": self._txt,
                   "parquet": self._parquet, "arrow": self._arrow}
        for path, kind, part in zip(self.paths, self.kinds, self.parts):
            stat = path.stat()
            before = self.documents
            for batch in readers[kind](path) if part is None else readers[kind](path, part):
                self.documents += len(batch.texts)
                yield batch
            if not path.is_dir() and path.stat().st_size != self._start_size[path]:
                raise _changed(path, self._start_size[path])
            self.per_source.append({
                "path": str(path.resolve()), "kind": kind, "size": input_bytes(path),
                "mtime": stat.st_mtime, "documents": self.documents - before,
                **({"part": [part.start, part.end]} if part is not None else {}),
            })

    # ------------------------------------------------------------------ bad input
    def _reject(self, path: Path, where: str, reason_code: int, reason: str, raw: str | None) -> dict:
        if self.on_bad_line == "error":
            fix = "raise --max-doc-mb" if reason_code == TOO_LARGE else "fix it"
            raise PytrainError(f"{path}:{where}: {reason} ({fix}, or pass --on-bad-line skip to skip such lines)")
        name = REASON_NAMES[reason_code]
        self.rejected[name] += 1
        record = {"source": str(path), "location": where, "reason": name, "detail": reason}
        if raw is not None:
            record["raw"] = raw
        return record

    # ------------------------------------------------------------------ JSONL
    def _too_large(self, path: Path, where: str, size: int, what: str = "document") -> dict:
        return self._reject(path, where, TOO_LARGE,
                            f"{what} of {_size(size)} is over the --max-doc-mb limit ({_size(self.max_doc_bytes)})", None)

    def _json_chunk(self, path: Path, chunk, first_line: int) -> tuple[DocBatch, int]:
        from pytrain import _native

        starts = _native.index_lines(chunk, self.threads)
        if self.chat_eos_token is not None:
            return self._chat_json_chunk(path, chunk, starts, first_line)
        texts, status, reasons = _native.extract_json_field(chunk, starts, self.field_path, self.threads)
        n_lines = len(starts) - 1
        batch = DocBatch(str(path), [], len(chunk))
        oversized = np.flatnonzero(np.diff(np.asarray(starts, dtype=np.int64)) > self.max_doc_bytes)
        for i in oversized:  # the line bounds the document (its text is never longer than its JSON line)
            batch.rejects.append(self._too_large(path, f"{first_line + i}", int(starts[i + 1] - starts[i]), "line"))
            texts[i], status[i] = None, TOO_LARGE
        if not np.any(status):  # the common case: every line is a good document
            batch.texts = texts
        else:
            self.blank_lines += int(np.count_nonzero(status == BLANK))
            self.empty_documents += int(np.count_nonzero(status == EMPTY_TEXT))
            batch.texts = [t for t in texts if t is not None]
            for i in np.flatnonzero((status >= BAD_JSON) & (status <= NOT_STRING)):
                raw = _raw_line(chunk, starts, i)
                batch.rejects.append(self._reject(path, f"{first_line + i}", int(status[i]), reasons[i], raw))
        return batch, first_line + n_lines

    def _chat_json_chunk(self, path: Path, chunk, starts, first_line: int) -> tuple[DocBatch, int]:
        """Conversations are nested objects, so lines go through Python's json (chat data is small)."""
        batch = DocBatch(str(path), [], len(chunk))
        for i in range(len(starts) - 1):
            where = f"{first_line + i}"
            if starts[i + 1] - starts[i] > self.max_doc_bytes:
                batch.rejects.append(self._too_large(path, where, int(starts[i + 1] - starts[i]), "line"))
                continue
            text = _raw_line(chunk, starts, i)
            if not text.strip():
                self.blank_lines += 1
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                batch.rejects.append(self._reject(path, where, BAD_JSON, f"invalid JSON at column {error.colno}: {error.msg}", text))
                continue
            self._accept(path, where, value, self.field_path, batch, text)
        return batch, first_line + len(starts) - 1

    def _jsonl(self, path: Path, part: Part | None = None) -> Iterator[DocBatch]:
        """Plain JSONL, read (not memory-mapped: a file truncated while being packed must give an
        error naming it, not a SIGBUS), checking between windows that the file keeps its size. A shard's
        `part` is the byte range [start, end) of the file, both at line starts."""
        size = self._start_size[path]  # as the command found it: a change since is refused, even before opening
        with open(path, "rb", buffering=0) as handle:
            if os.fstat(handle.fileno()).st_size != size:
                raise _changed(path, size)
            start, end = (0, size) if part is None else (part.start, part.end)
            handle.seek(start)
            left = [end - start]

            def read(n: int) -> bytes:
                block = handle.read(min(n, left[0]))
                if os.fstat(handle.fileno()).st_size != size:  # after the read: what it returned may be cut short
                    raise _changed(path, size)
                left[0] -= len(block)
                return block

            first_line = _LineNumber(_PrefixLines(path, start), 1) if start else 1
            yield from self._json_lines(path, read, first_line=first_line)
            if handle.tell() != end:
                raise _changed(path, size)

    def _jsonl_gz(self, path: Path) -> Iterator[DocBatch]:
        position = [1]
        try:
            with gzip.open(path, "rb") as handle:
                yield from self._json_lines(path, handle.read, position)
        except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError; a bad deflate block a zlib.error
            raise PytrainError(f"{path}: corrupt or truncated gzip data near line {position[0]} ({error})") from None

    def _json_lines(self, path: Path, read, position: list[int] | None = None, first_line=1) -> Iterator[DocBatch]:
        """Windows of whole lines of about batch_bytes from `read(n)`; a line longer than
        --max-doc-mb is rejected and skipped as it streams by, never held in memory.
        `position[0]` follows the current line number (for error messages)."""
        position = position if position is not None else [first_line]
        line, pending, pending_bytes, skipping = first_line, [], 0, False
        while True:
            block = read(self.batch_bytes)
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
                if pending_bytes > self.max_doc_bytes:
                    batch = DocBatch(str(path), [], pending_bytes)
                    batch.rejects.append(self._too_large(path, f"{line}", pending_bytes, "line (at least)"))
                    yield batch
                    pending, pending_bytes, skipping = [], 0, True
                continue
            window = b"".join([*pending, block[:cut]]) if pending else block[:cut]
            pending, pending_bytes = [block[cut:]], len(block) - cut
            batch, line = self._json_chunk(path, memoryview(window), line)
            position[0] = line
            yield batch
        if pending_bytes and not skipping:
            batch, line = self._json_chunk(path, memoryview(b"".join(pending)), line)
            yield batch

    # ------------------------------------------------------------------ text
    def _txt(self, path: Path) -> Iterator[DocBatch]:
        if self.txt_split == "file":
            batch = DocBatch(str(path), [], input_bytes(path))
            if input_bytes(path) > self.max_doc_bytes:  # refused before it is read
                batch.rejects.append(self._too_large(path, "1", input_bytes(path), "file"))
            else:
                self._accept(path, "1", path.read_bytes().decode("utf-8", "replace"), [], batch, None)
            yield batch
            return
        carry, skipping = b"", False  # skipping: inside an oversized paragraph, dropped up to its end
        with open(path, "rb") as handle:
            while True:
                block = handle.read(self.batch_bytes)
                data = carry + block
                batch = DocBatch(str(path), [], len(block))
                if skipping:
                    end = _PARAGRAPH_BREAK.search(data)
                    data, skipping = (data[end.end():], False) if end else (_break_start(data), True)
                pieces = _PARAGRAPH_BREAK.split(data)
                carry = pieces.pop() if block else b""
                if not block:
                    pieces.append(carry)
                elif len(carry) > self.max_doc_bytes:  # a paragraph still growing: refuse it now
                    batch.rejects.append(self._too_large(path, "paragraph", len(carry), "paragraph (at least)"))
                    carry, skipping = b"", True
                for piece in pieces:
                    text = piece.decode("utf-8", "replace").strip()
                    if text:
                        self._accept(path, "paragraph", text, [], batch, None)
                yield batch
                if not block:
                    return

    # ------------------------------------------------------------------ columnar
    def _accept(self, path: Path, where: str, value, field_path: list, batch: DocBatch, raw: str | None) -> None:
        """Follow `field_path` (a tail of self.field_path) into `value`; add the document or reject it."""
        walked = len(self.field_path) - len(field_path)
        for depth, key in enumerate(field_path, start=walked + 1):
            # An index step needs a list and a key step an object, as in the native JSON extractor.
            if isinstance(key, int):
                value = value[key] if isinstance(value, list) and key < len(value) else None
            else:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                batch.rejects.append(self._reject(path, where, MISSING_FIELD, f"missing or null field {describe_path(self.field_path[:depth])}", raw))
                return
        if value is None:
            batch.rejects.append(self._reject(path, where, MISSING_FIELD, f"field {describe_path(self.field_path)} is null", raw))
            return
        if self.chat_eos_token is not None:
            try:
                turns = chat.messages_to_turns(value) if not isinstance(value, str) else chat.text_to_turns(value, self.chat_eos_token)
                batch.texts.append(chat.render(turns))
            except chat.ChatFormatError as error:
                batch.rejects.append(self._reject(path, where, BAD_CONVERSATION, str(error), raw))
        elif not isinstance(value, str):
            batch.rejects.append(self._reject(path, where, NOT_STRING, f"field {describe_path(self.field_path)} is a {type(value).__name__}, not a string", raw))
        elif not value:
            self.empty_documents += 1
        elif len(value) > self.max_doc_bytes // 4 and len(value.encode("utf-8", "replace")) > self.max_doc_bytes:
            batch.rejects.append(self._too_large(path, where, len(value.encode("utf-8", "replace"))))
        else:
            batch.texts.append(value)

    def _rows(self, path: Path, values: list, first_row: int) -> DocBatch:
        """Documents from one column batch of a parquet file or datasets folder."""
        batch = DocBatch(str(path), [], 0)
        for i, value in enumerate(values):
            self._accept(path, f"row {first_row + i}", value, self.field_path[1:], batch, None)
        return batch

    def _column_name(self, path: Path, names) -> str:
        column = self.field_path[0]
        if column not in names:
            raise PytrainError(f"{path}: no column {column!r}{did_you_mean(str(column), names)}; columns: {', '.join(names)}")
        return column

    def _parquet(self, path: Path, part: Part | None = None) -> Iterator[DocBatch]:
        parquet = open_parquet(path)
        column = self._column_name(path, parquet.schema_arrow.names)
        metadata = parquet.metadata
        total = max(1, metadata.num_rows)
        first, last = (0, metadata.num_rows) if part is None else (part.start, part.end)
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
                batch = self._rows(path, record_batch.column(0).slice(lo, hi - lo).to_pylist(), row + lo)
                batch.nbytes = input_bytes(path) * (hi - lo) // total
                yield batch
            row += record_batch.num_rows
            if row >= last:
                return

    def _arrow(self, path: Path, part: Part | None = None) -> Iterator[DocBatch]:
        import datasets

        dataset = datasets.load_from_disk(str(path))
        column = self._column_name(path, dataset.column_names)
        total = max(1, len(dataset))
        first, last = (0, len(dataset)) if part is None else (part.start, part.end)
        table = dataset.select_columns([column]).with_format("arrow")
        for row in range(first, last, ROWS_PER_BATCH):
            rows = table[row:min(row + ROWS_PER_BATCH, last)]
            batch = self._rows(path, rows.column(0).to_pylist(), row)
            batch.nbytes = input_bytes(path) * rows.num_rows // total
            yield batch


def open_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as error:
        raise PytrainError(f"{path}: not a readable parquet file ({error})") from None


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


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


def _break_start(data: bytes) -> bytes:
    """The tail of `data` that may begin a paragraph break completed by the next block."""
    newline = data.rfind(b"\n")
    return data[newline:] if newline >= 0 and not data[newline:].strip() else b""


def _changed(path: Path, size: int) -> PytrainError:
    now = path.stat().st_size if path.exists() else "no"
    return PytrainError(f"{path}: changed while being packed ({size} bytes at the start, {now} bytes now); "
                        "pack a file that nothing is writing to")


def open_sources(paths, field_path, **options) -> Sources:
    if not paths:
        raise PytrainError("no inputs given")
    return Sources(paths, field_path, **options)
