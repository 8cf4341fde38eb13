"""The packed dataset's on-disk format: one place that writes and reads it.

    DIR/manifest.json        written last; a directory without it is incomplete
    DIR/tokenizer.json       the tokenizer the tokens were made with (for decode and stale checks)
    DIR/<split>/tokens.bin   little-endian token ids, uint16 or uint32, no header (a plain np.memmap)
    DIR/<split>/index.idx    32-byte header + int64 document start offsets (docs+1 entries)
    DIR/<split>/mask.bin     chat data only: uint8 per token, 1 where the loss is trained
    DIR/rejects.jsonl        skipped bad lines, when --on-bad-line skip rejected any

index.idx header: magic b"PYTRIDX\\0", uint32 format version, uint32 token width in bytes
(2 or 4), uint64 document count, uint64 token count; all little-endian. No pickle anywhere.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytrain.data.hashed_file import HashedFile
from pytrain.errors import PytrainError
from pytrain.fsutil import file_sha256
from pytrain.safe_read import UnreadableInput, read_json

FORMAT_NAME = "pytrain-packed"
FORMAT_VERSION = 1
INDEX_MAGIC = b"PYTRIDX\0"
INDEX_HEADER = struct.Struct("<8sIIQQ")  # magic, version, token width, docs, tokens
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("dtype", "vocab_size", "eos_id", "bos_id", "append_eos", "prepend_bos", "tokenizer", "splits")
SPLIT_KEYS = ("documents", "tokens", "tokens_sha256", "index_sha256")
SPLITS = ("train", "val")
TOKENIZER = "tokenizer.json"
REJECTS = "rejects.jsonl"


def dtype_for_vocab(max_token_id: int) -> np.dtype:
    """uint16 while every id fits, else uint32."""
    if max_token_id < 0:
        raise PytrainError("tokenizer has an empty vocabulary")
    if max_token_id < 1 << 16:
        return np.dtype("<u2")
    if max_token_id < 1 << 32:
        return np.dtype("<u4")
    raise PytrainError(f"token id {max_token_id} does not fit in uint32; no supported dtype holds this vocabulary")


def tokens_path(root: Path, split: str) -> Path:
    return Path(root) / split / "tokens.bin"


def index_path(root: Path, split: str) -> Path:
    return Path(root) / split / "index.idx"


def mask_path(root: Path, split: str) -> Path:
    return Path(root) / split / "mask.bin"


def index_header(token_width: int, doc_count: int, token_count: int) -> bytes:
    return INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, token_width, doc_count, token_count)


@dataclass(frozen=True)
class IndexHeader:
    token_width: int
    doc_count: int
    token_count: int


def read_index_header(path: Path) -> IndexHeader:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(INDEX_HEADER.size)
    except FileNotFoundError:
        raise PytrainError(f"{path}: missing; the dataset is incomplete, re-run `pytrain pack`") from None
    if len(raw) < INDEX_HEADER.size:
        raise PytrainError(f"{path}: truncated header ({len(raw)} bytes); re-run `pytrain pack`")
    magic, version, width, docs, tokens = INDEX_HEADER.unpack(raw)
    if magic != INDEX_MAGIC:
        raise PytrainError(f"{path}: not a pytrain index (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise PytrainError(f"{path}: index format version {version}, this pytrain reads {FORMAT_VERSION}; re-pack")
    if width not in (2, 4):
        raise PytrainError(f"{path}: token width {width} bytes is not 2 or 4")
    return IndexHeader(width, docs, tokens)


def load_manifest_json(root: str | Path) -> dict:
    """DIR/manifest.json parsed, refusing what is not a finished pytrain pack (no shape checks)."""
    from pytrain.fsutil import recover_interrupted_replace

    root = Path(root)
    recover_interrupted_replace(root)
    if not root.is_dir():
        raise PytrainError(f"{root}: no such dataset directory")
    path = root / MANIFEST
    if not path.exists():
        raise PytrainError(f"{root}: no {MANIFEST}; the pack did not finish (or this is not a packed dataset), re-run `pytrain pack`")
    try:
        manifest = read_json(path)
    except UnreadableInput as error:
        raise PytrainError(f"{path}: unreadable manifest ({error.problem}); re-run `pytrain pack`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PytrainError(f"{path}: not a pytrain manifest (format={found!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PytrainError(
            f"{path}: format version {manifest.get('format_version')}, this pytrain reads {FORMAT_VERSION}; re-pack"
        )
    return manifest


def _is_int(value) -> bool:
    return type(value) is int


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def manifest_problems(manifest: dict) -> list[str]:
    """Every way a manifest's shape is wrong (a missing key, a wrong type, an impossible value),
    one message each, so that no reader indexes into an edited manifest and crashes."""
    problems = [f"lacks {key}" for key in REQUIRED_KEYS if key not in manifest]

    def check(key, ok, expected):
        if key in manifest and not ok(manifest[key]):
            problems.append(f"{key} is {manifest[key]!r}, expected {expected}")

    check("dtype", lambda v: v in ("uint16", "uint32"), "'uint16' or 'uint32'")
    check("vocab_size", lambda v: _is_int(v) and v > 0, "a positive integer")
    for key in ("eos_id", "bos_id"):
        check(key, lambda v: v is None or (_is_int(v) and v >= 0), "a token id or null")
    for key in ("append_eos", "prepend_bos", "loss_mask"):
        check(key, lambda v: isinstance(v, bool), "true or false")
    check("tokenizer", lambda v: isinstance(v, dict) and _is_sha256(v.get("sha256")), "an object with a sha256")
    check("validation", lambda v: isinstance(v, dict) and _is_int(v.get("val_docs", 0)) and v.get("val_docs", 0) >= 0
          and isinstance(v.get("val_fraction", 0.0), (int, float)) and 0 <= v.get("val_fraction", 0.0) < 1,
          "an object with val_docs >= 0 and 0 <= val_fraction < 1")
    if manifest.get("append_eos") is True and not _is_int(manifest.get("eos_id")):
        problems.append("append_eos is true but eos_id is not a token id")
    if manifest.get("prepend_bos") is True and not _is_int(manifest.get("bos_id")):
        problems.append("prepend_bos is true but bos_id is not a token id")
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict):
        return problems + [f"splits is {type(splits).__name__}, expected an object"]
    if "splits" in manifest and "train" not in splits:
        problems.append(f"splits has no 'train' (has: {', '.join(map(str, splits)) or 'none'})")
    for name, split in splits.items():
        if name not in SPLITS:
            problems.append(f"splits.{name}: unknown split (pytrain writes {' and '.join(SPLITS)})")
            continue
        if not isinstance(split, dict):
            problems.append(f"splits.{name} is {type(split).__name__}, expected an object")
            continue
        problems += [f"splits.{name} lacks {key}" for key in SPLIT_KEYS if key not in split]
        problems += [f"splits.{name}.{key} is {split[key]!r}, expected an integer >= 0"
                     for key in ("documents", "tokens", "tokens_sum") if key in split and not (_is_int(split[key]) and split[key] >= 0)]
        hashes = [key for key in split if key.endswith("_sha256")]
        problems += [f"splits.{name}.{key} is not a sha256 hex digest" for key in hashes if not _is_sha256(split[key])]
        if manifest.get("loss_mask") is True and "mask_sha256" not in split:
            problems.append(f"splits.{name} lacks mask_sha256 (loss_mask is true)")
    return problems


def read_manifest(root: str | Path) -> dict:
    """Load DIR/manifest.json, refusing directories that are not complete pytrain datasets."""
    manifest = load_manifest_json(root)
    problems = manifest_problems(manifest)
    if problems:
        raise PytrainError(f"{Path(root) / MANIFEST}: {'; '.join(problems)}; it was edited or is damaged, re-pack")
    return manifest


@dataclass(frozen=True)
class PackedSplit:
    """Zero-copy views of one split: tokens[offsets[d]:offsets[d+1]] is document d."""

    tokens: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None = None  # chat data: 1 where the token's loss is trained

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def document(self, d: int) -> np.ndarray:
        if not 0 <= d < self.num_docs:
            raise PytrainError(f"document {d} out of range: the split has {self.num_docs} documents")
        return self.tokens[self.offsets[d] : self.offsets[d + 1]]


def _memmap(path: Path, dtype, offset: int, count: int, random_access: bool = False) -> np.ndarray:
    """A read-only array over `count` items of the file at byte `offset`, mapped (not read).

    mmap + np.frombuffer rather than np.memmap, which resolves the path on every call: a mixture of
    thousands of shards reopens maps often, and that made np.memmap half of the cost of reading a sample.
    """
    if count == 0:
        return np.zeros(0, dtype=dtype)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if random_access and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)  # no read-ahead: each access touches a page or two
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset)


def open_split(root: str | Path, split: str, manifest: dict | None = None,
               random_access: bool = False) -> PackedSplit:
    """Map one split after checking that file sizes agree with the manifest and index header.

    This is the cheap check every reader runs; `pytrain verify` does the full one. `random_access`: the reader
    jumps around (a mixture's binary searches and sample windows), so the kernel should not read ahead.
    """
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"]) or "none"
        raise PytrainError(f"{root}: no '{split}' split (has: {have}); pack with --val-docs/--val-fraction for one")
    expected = manifest["splits"][split]
    header = read_index_header(index_path(root, split))
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    if header.token_width != dtype.itemsize:
        raise PytrainError(f"{index_path(root, split)}: token width {header.token_width} disagrees with manifest dtype {manifest['dtype']}")
    if (header.doc_count, header.token_count) != (expected["documents"], expected["tokens"]):
        raise PytrainError(
            f"{index_path(root, split)}: header says {header.doc_count} docs/{header.token_count} tokens, "
            f"manifest says {expected['documents']}/{expected['tokens']}; the files are stale or mixed, re-pack"
        )
    idx = index_path(root, split)
    want_idx = INDEX_HEADER.size + 8 * (header.doc_count + 1)
    if idx.stat().st_size != want_idx:
        raise PytrainError(f"{idx}: {idx.stat().st_size} bytes, expected {want_idx}; truncated or corrupted, re-pack")
    bin_path = tokens_path(root, split)
    if not bin_path.exists():
        raise PytrainError(f"{bin_path}: missing; the dataset is incomplete, re-run `pytrain pack`")
    want_bin = header.token_count * dtype.itemsize
    if bin_path.stat().st_size != want_bin:
        raise PytrainError(f"{bin_path}: {bin_path.stat().st_size} bytes, expected {want_bin}; truncated or corrupted, re-pack")
    offsets = _memmap(idx, np.dtype("<i8"), INDEX_HEADER.size, header.doc_count + 1, random_access)
    tokens = _memmap(bin_path, dtype, 0, header.token_count, random_access)
    mask = None
    if manifest.get("loss_mask"):
        mask_file = mask_path(root, split)
        if not mask_file.exists() or mask_file.stat().st_size != header.token_count:
            raise PytrainError(f"{mask_file}: missing or not {header.token_count} bytes; truncated or corrupted, re-pack")
        mask = _memmap(mask_file, np.dtype("u1"), 0, header.token_count, random_access)
    return PackedSplit(tokens=tokens, offsets=offsets, mask=mask)


# ----------------------------------------------------------------------------- writing
class SplitWriter:
    """Appends documents to one split's tokens.bin and index.idx (and mask.bin), hashing as it goes."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, with_mask: bool = False):
        self.split = split
        self.dtype = dtype
        self.tokens_file = tokens_path(root, split)
        self.index_file = index_path(root, split)
        self.tokens_file.parent.mkdir(parents=True, exist_ok=True)
        self._tokens = HashedFile(open(self.tokens_file, "wb"))
        self._index = open(self.index_file, "wb")
        self._index.write(index_header(dtype.itemsize, 0, 0))  # rewritten on close
        self._index.write(np.zeros(1, dtype="<i8").tobytes())
        self._sum = 0  # sum of the ids mod 2**64: a checksum `verify --mode quick` computes at memory speed
        self._mask = HashedFile(open(mask_path(root, split), "wb")) if with_mask else None
        self.documents = 0
        self.tokens = 0

    def write(self, tokens: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> None:
        if len(lengths) == 0:
            return
        from pytrain import _native

        self._tokens.write(tokens)
        self._sum = (self._sum + _native.token_sum(tokens)) % 2**64
        if self._mask is not None:
            self._mask.write(mask)
        ends = self.tokens + np.cumsum(lengths, dtype=np.int64)
        self._index.write(ends.astype("<i8", copy=False).tobytes())
        self.tokens = int(ends[-1])
        self.documents += len(lengths)

    def close(self) -> dict:
        """Finish both files and make them durable before the directory is renamed into place."""
        _close_durably(self._tokens.handle)
        self._index.seek(0)
        self._index.write(index_header(self.dtype.itemsize, self.documents, self.tokens))
        _close_durably(self._index)
        info = {
            "documents": self.documents,
            "tokens": self.tokens,
            "tokens_sha256": self._tokens.hexdigest(),
            "tokens_sum": self._sum,
            "index_sha256": file_sha256(self.index_file),
        }
        if self._mask is not None:
            _close_durably(self._mask.handle)
            info["mask_sha256"] = self._mask.hexdigest()
        return info


def _close_durably(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
