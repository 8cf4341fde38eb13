"""Plain text inputs: a whole file is one document, or (--txt-split paragraph) each blank-line-separated
paragraph is."""

from __future__ import annotations

import re
from typing import Iterator

from pytrain.data.readers.base import DocBatch, Reader

_PARAGRAPH_BREAK = re.compile(rb"\n[ \t\r\f\v]*\n")


class TextReader(Reader):
    kind = "txt"

    def _read(self) -> Iterator[DocBatch]:
        if self.settings.txt_split == "file":
            yield self._whole_file()
        else:
            yield from self._paragraphs()

    def _whole_file(self) -> DocBatch:
        size = self.start_size
        batch = DocBatch(str(self.path), [], size)
        if size > self.settings.max_doc_bytes:  # refused before it is read
            batch.rejects.append(self.too_large("1", size, "file"))
        else:
            self.accept("1", self.path.read_bytes().decode("utf-8", "replace"), [], batch, None)
        return batch

    def _paragraphs(self) -> Iterator[DocBatch]:
        limit = self.settings.max_doc_bytes
        carry, skipping = b"", False  # skipping: inside an oversized paragraph, dropped up to its end
        with open(self.path, "rb") as handle:
            while True:
                block = handle.read(self.settings.batch_bytes)
                data = carry + block
                batch = DocBatch(str(self.path), [], len(block))
                if skipping:
                    end = _PARAGRAPH_BREAK.search(data)
                    data, skipping = (data[end.end():], False) if end else (_break_start(data), True)
                pieces = _PARAGRAPH_BREAK.split(data)
                carry = pieces.pop() if block else b""
                if not block:
                    pieces.append(carry)
                elif len(carry) > limit:  # a paragraph still growing: refuse it now
                    batch.rejects.append(self.too_large("paragraph", len(carry), "paragraph (at least)"))
                    carry, skipping = b"", True
                for piece in pieces:
                    text = piece.decode("utf-8", "replace").strip()
                    if text:
                        self.accept("paragraph", text, [], batch, None)
                yield batch
                if not block:
                    return


def _break_start(data: bytes) -> bytes:
    """The tail of `data` that may begin a paragraph break completed by the next block."""
    newline = data.rfind(b"\n")
    return data[newline:] if newline >= 0 and not data[newline:].strip() else b""
