"""The inputs of one run: documents in bounded batches, one reader per input (see pytrain.data.readers).

Every input kind yields `DocBatch`es of roughly `batch_bytes` of input, so memory stays flat however large
a file is. Bad lines raise `file:line: reason` or, with `on_bad_line="skip"`, become reject records
counted by reason. Also here: `--field` / `--jq` parsed into the field path every reader follows.
"""

from __future__ import annotations

import json
import re
from typing import Iterator

from pytrain.data.readers import input_kind, open_reader
from pytrain.data.readers.base import DEFAULT_MAX_DOC_BYTES, DocBatch, Part, ReadSettings, Tally, describe_path
from pytrain.errors import PytrainError

__all__ = ["DEFAULT_MAX_DOC_BYTES", "DocBatch", "Part", "ReadSettings", "Sources", "describe_path", "input_kind",
           "open_sources", "parse_field_path"]

_PATH_TOKEN = re.compile(r'\.([A-Za-z_][A-Za-z0-9_\-]*)|\.?\["((?:[^"\\]|\\.)*)"\]|\.?\[(\d+)\]')


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
            if any("\ud800" <= c <= "\udfff" for c in key):
                raise PytrainError(f"--jq {jq!r}: the key [\"{quoted}\"] holds a lone surrogate, which no key of the "
                                   "input can hold once read (the reader turns lone surrogates into U+FFFD)")
        path.append(key if key is not None else int(index))
        pos = match.end()
    if not path:
        raise PytrainError(f"--jq {jq!r}: empty path; use a path like .text")
    return path


class Sources:
    """All inputs of one run, read in order, one reader per input; counts what was taken and what was rejected."""

    def __init__(self, inputs, settings: ReadSettings, parts: list[Part | None] | None = None):
        self.tally = Tally(settings.on_bad_line)
        parts = list(parts) if parts is not None else [None] * len(inputs)  # None: the whole input
        self.readers = [open_reader(given, settings, self.tally, part) for given, part in zip(inputs, parts)]
        self.total_bytes = sum(reader.size for reader in self.readers)
        self.per_source: list[dict] = []

    def batches(self) -> Iterator[DocBatch]:
        for reader in self.readers:
            yield from reader.batches()
            self.per_source.append(reader.record())

    def texts(self) -> Iterator[str]:
        """Every document's text, in order (what tokenizer training reads)."""
        for batch in self.batches():
            yield from batch.texts

    @property
    def guarded(self) -> list:
        """What the output must neither be, hold, nor lie inside: every input's files."""
        return [path for reader in self.readers for path in reader.guarded]

    @property
    def documents(self) -> int:
        return sum(reader.documents for reader in self.readers)

    @property
    def empty_documents(self) -> int:
        return self.tally.empty_documents

    @property
    def blank_lines(self) -> int:
        return self.tally.blank_lines

    @property
    def rejected(self):
        return self.tally.rejected


def open_sources(inputs, settings: ReadSettings, parts=None) -> Sources:
    if not inputs:
        raise PytrainError("no inputs given")
    return Sources(inputs, settings, parts)
