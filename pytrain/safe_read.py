"""Reading the files pytrain is handed, bounded by construction: every read of a JSON file goes through here.

- Only regular files are read (`open_regular`): a FIFO would block forever, /dev/zero never ends, a folder
  given as a file is an error, all in one line naming the path. The file is opened without blocking and
  checked with fstat on the open descriptor, so what is checked is what is read.
- A file larger than its kind's limit is refused before it is read (`read_bytes`), so a stray multi-GB file
  in the place of a tokenizer or a manifest cannot exhaust memory.
- JSON is checked to be nested at most MAX_JSON_DEPTH deep before it is parsed (`parse_json`): Python's
  parser would raise RecursionError (a traceback) on deeper input, and code walking a parsed value must be
  able to recurse over it. The check is a scan of the bytes at C speed (bytes.replace/translate and numpy),
  about a tenth of the parse's own time on a 10 MB tokenizer.json.
- YAML (configs) is checked from its event stream before anything is built from it (`check_yaml`): nested at
  most MAX_JSON_DEPTH deep (PyYAML's own parser takes minutes over 100k nested brackets), aliases expanding
  to at most MAX_YAML_NODES values (a 272-byte "billion laughs" expands to 4.8M), no alias inside its own
  anchor (a recursive value no code can walk).

Every problem is an `UnreadableInput`: a PytrainError (one line naming the file) that is also a
ValueError, as json's own errors are, so callers that treat malformed JSON as "not ours" keep doing so.
A missing or unreadable file stays an OSError, which callers already turn into their own message.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat

from pytrain.errors import PytrainError

MAX_JSON_DEPTH = 64                  # nesting of arrays and objects; pytrain's own files use at most 6
MAX_JSON_BYTES = 64 << 20            # manifests, checkpoint records, configs, run records, output markers
MAX_TOKENIZER_BYTES = 1 << 30        # tokenizer.json (the largest published ones are tens of MB)
MAX_LINE_BYTES = 16 << 20            # one line of a JSON Lines record pytrain reads back (metrics.jsonl)
MAX_YAML_NODES = 1_000_000           # values of a YAML document, aliases expanded


class UnreadableInput(PytrainError, ValueError):
    """A file (or text) pytrain cannot take: not a regular file, too large, not UTF-8, not JSON, too deep.
    `problem` is the message without the file's name, for callers that phrase their own."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem

    def __reduce__(self):  # pickled (errors cross process boundaries) with both arguments
        return type(self), (self.where, self.problem)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file"):
    """The file at `path` opened for binary reading, only if it is a regular file (symlinks to one are
    followed); UnreadableInput otherwise, OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableInput(str(path), f"is {_kind(mode)}, not a {what}; pass a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def require_regular(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse (UnreadableInput) a path that exists and is not a regular file (symlinks followed), before a reader
    that would block on a FIFO or read a device forever opens it; OSError when it cannot be examined."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise UnreadableInput(str(path), f"is {_kind(mode)}, not a {what}; pass a regular file")


def _size_text(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n} bytes"


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """All of a regular file's bytes, refused (UnreadableInput) when it holds more than `limit`."""
    with open_regular(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise UnreadableInput(str(path), f"{_size_text(size)}, more than a {what} can be "
                                             f"({_size_text(limit)}); is this the right file?")
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise UnreadableInput(str(path), f"more than a {what} can be ({_size_text(limit)})")
    return data


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableInput(where, f"not UTF-8 text (byte {error.start})") from None


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES, what: str = "JSON file", **options):
    """A regular file's JSON value, bounded in size and depth (see parse_json for `options`)."""
    return parse_json(read_bytes(path, limit, what), str(path), **options)


_BRACKETS_AND_QUOTES = b'"[]{}'
_OTHER_BYTES = bytes(b for b in range(256) if b not in _BRACKETS_AND_QUOTES)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text `data` (brackets inside strings do not count;
    malformed text gives some number, and the parser then rejects it). Text with at most MAX_JSON_DEPTH
    brackets is not scanned: their count, an upper bound, is returned."""
    openers = data.count(b"[") + data.count(b"{")
    if openers <= MAX_JSON_DEPTH:
        return openers
    import numpy as np

    # Drop escaped backslashes, then escaped quotes (left to right, as a JSON string's escapes pair up), then
    # every byte but quotes and brackets: what is left alternates string delimiters and structure.
    reduced = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _OTHER_BYTES)
    symbols = np.frombuffer(reduced, dtype=np.uint8)
    quotes = symbols == ord('"')
    outside = (np.cumsum(quotes) & 1) == 0  # after an even number of quotes: not inside a string
    structural = symbols[outside & ~quotes]
    steps = np.where((structural == ord("[")) | (structural == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def checked_json_text(data: bytes | str, where: str) -> str:
    """`data` as text, once it is UTF-8 and nested at most MAX_JSON_DEPTH deep (for a parser other than
    Python's, such as `tokenizers`', or before Python's)."""
    if isinstance(data, bytes):
        text = decode_utf8(data, where)
    else:
        text, data = data, data.encode("utf-8", "surrogatepass")
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise UnreadableInput(where, f"JSON nested {depth} levels deep, more than the {MAX_JSON_DEPTH} pytrain reads")
    return text


def parse_json(data: bytes | str, where: str, **options):
    """json.loads(data, **options) for text named `where` (a file, or file:line), nested at most
    MAX_JSON_DEPTH deep; every problem is one UnreadableInput naming `where`."""
    data = checked_json_text(data, where)
    try:
        return json.loads(data, **options)
    except json.JSONDecodeError as error:
        raise UnreadableInput(where, f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except UnreadableInput:
        raise
    except PytrainError as error:  # an object_pairs_hook's complaint (a key given twice, ...)
        raise UnreadableInput(where, str(error)) from None
    except (ValueError, RecursionError) as error:  # an integer of more than 4300 digits, ...
        raise UnreadableInput(where, f"not valid JSON ({' '.join(str(error).split())})") from None


def check_yaml(text: str, where: str) -> None:
    """Refuse YAML nested deeper than MAX_JSON_DEPTH, with an alias inside its own anchor, or whose aliases expand
    to more than MAX_YAML_NODES values, reading only its event stream (libyaml's parser where PyYAML has it), and
    stopping at the first event past a limit. Syntax errors are left to the loader, which names their line."""
    import yaml

    expanded, opened, sizes = 0, [], {}  # values so far (aliases expanded); open collections; anchor -> size
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(event, yaml.CollectionStartEvent):
                expanded += 1
                opened.append((event.anchor, expanded))
                if len(opened) > MAX_JSON_DEPTH:
                    raise UnreadableInput(where, f"YAML nested more than {MAX_JSON_DEPTH} levels deep (line "
                                                 f"{event.start_mark.line + 1})")
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, start = opened.pop()
                if anchor is not None:
                    sizes[anchor] = expanded - start + 1
            elif isinstance(event, yaml.ScalarEvent):
                expanded += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in opened):
                    raise UnreadableInput(where, f"line {event.start_mark.line + 1}: the alias *{event.anchor} is "
                                                 "inside its own anchor (a value that contains itself)")
                expanded += sizes.get(event.anchor, 1)
            if expanded > MAX_YAML_NODES:
                raise UnreadableInput(where, f"YAML whose aliases expand to more than {MAX_YAML_NODES} values (line "
                                             f"{event.start_mark.line + 1}); write the values out instead")
    except yaml.YAMLError as error:  # libyaml stops at 1000 levels, reading ahead of the events
        if getattr(error, "problem", None) == "exceeded maximum nesting depth":
            raise UnreadableInput(where, f"YAML nested more than {MAX_JSON_DEPTH} levels deep") from None


def read_text_lines(path: str | os.PathLike, max_line: int = MAX_LINE_BYTES) -> list[str]:
    """The lines of a regular file of UTF-8 text (undecodable bytes replaced), without their line ends; a line of
    more than `max_line` bytes is refused naming its number (so one endless line cannot exhaust memory)."""
    lines = []
    with open_regular(path, "text file") as handle:
        while raw := handle.readline(max_line + 1):
            if len(raw) > max_line and not raw.endswith(b"\n"):
                raise UnreadableInput(f"{path}:{len(lines) + 1}", f"a line of more than {_size_text(max_line)}")
            lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
    return lines
