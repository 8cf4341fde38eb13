"""Megatron-LM's indexed dataset format (`NAME.bin` + `NAME.idx`), read and written from its published layout
(megatron/core/datasets/indexed_dataset.py). GPT-NeoX and Megatron preprocessing write it; Pythia's Pile is in it.

    NAME.idx   b"MMIDIDX\\x00\\x00", uint64 version (1), uint8 dtype code, uint64 sequence count S,
               uint64 document count D (entries of the document index, so D-1 documents), then
               int32 sequence lengths [S] (tokens), int64 sequence pointers [S] (byte offsets into .bin),
               int64 document indices [D] (0, ..., S: document d is sequences [idx[d], idx[d+1])),
               and, in multimodal datasets only, int8 sequence modes [S]. All little-endian.
    NAME.bin   the token ids of every sequence, in the dtype of the code, back to back.

Dtype codes: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16.
`read_index` checks everything a reader relies on before any token is read, so that a damaged pair fails
with one line naming the file instead of a wrong pack or a crash.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytrain.errors import PytrainError
from pytrain.safe_read import open_regular

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document index entries
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}
CODES = {np.dtype(dtype): code for code, dtype in DTYPES.items()}
_PYTRAIN_INDEX_MAGIC = b"PYTRIDX\0"


def pair_paths(given: str | os.PathLike) -> tuple[Path, Path] | None:
    """(NAME.idx, NAME.bin) when `given` names a Megatron dataset (either file or the common prefix), else None.

    A `.idx` or `.bin` file, or a prefix with either beside it, must be a pair whose .idx has Megatron's magic
    (anything else is refused here); the rest of both files is checked by `read_index`."""
    path = Path(given)
    if path.suffix in (".idx", ".bin") and path.is_file():
        prefix = path.with_suffix("")
    elif not path.exists() and (path.with_name(path.name + ".idx").exists() or path.with_name(path.name + ".bin").exists()):
        prefix = path
    else:
        return None
    idx, bin_ = prefix.with_name(prefix.name + ".idx"), prefix.with_name(prefix.name + ".bin")
    if not idx.exists():
        raise PytrainError(f"{bin_}: no {idx.name} beside it; a Megatron dataset is a NAME.bin + NAME.idx pair")
    with open_regular(idx, "Megatron index") as handle:
        magic = handle.read(len(MAGIC))
    if magic != MAGIC:
        what = ("a pytrain pack's index, not a Megatron one (a pack is read by training, not packed again)"
                if magic.startswith(_PYTRAIN_INDEX_MAGIC) else f"not a Megatron index (magic {magic!r}, expected {MAGIC!r})")
        raise PytrainError(f"{idx}: {what}")
    return idx, bin_


@dataclass(frozen=True)
class MegatronIndex:
    """A checked .idx: token dtype, and documents as token offsets into the .bin (documents + 1 entries)."""

    idx_path: Path
    bin_path: Path
    dtype: np.dtype
    sequences: int
    bin_size: int
    doc_offsets: np.ndarray  # int64 token offsets: document d is tokens [doc_offsets[d], doc_offsets[d+1])

    @property
    def documents(self) -> int:
        return len(self.doc_offsets) - 1


def read_index(idx: Path, bin_: Path) -> MegatronIndex:
    """Parse and check `idx` against `bin_`: header, sizes, document index, pointers; every failure one line."""
    if not bin_.is_file():
        raise PytrainError(f"{idx}: its data file {bin_} is missing; a Megatron dataset is a NAME.bin + NAME.idx pair")
    idx_size, bin_size = idx.stat().st_size, bin_.stat().st_size
    with open(idx, "rb") as handle:
        raw = handle.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise PytrainError(f"{idx}: truncated header ({len(raw)} of {HEADER.size} bytes)")
    magic, version, code, sequences, entries = HEADER.unpack(raw)
    if magic != MAGIC:
        raise PytrainError(f"{idx}: not a Megatron index (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PytrainError(f"{idx}: Megatron index version {version}; pytrain reads version {VERSION}")
    if code not in DTYPES:
        raise PytrainError(f"{idx}: unknown dtype code {code} (Megatron's codes are 1-8: "
                           + ", ".join(f"{c} {np.dtype(t).name}" for c, t in DTYPES.items()) + ")")
    dtype = np.dtype(DTYPES[code]).newbyteorder("<")
    if dtype.kind == "f":
        raise PytrainError(f"{idx}: dtype code {code} is {dtype.name}; token ids must be integers")
    body = HEADER.size + 12 * sequences + 8 * entries
    if idx_size not in (body, body + sequences):
        raise PytrainError(f"{idx}: {idx_size} bytes, but its header ({sequences} sequences, {entries} document index "
                           f"entries) needs {body}; truncated or not a Megatron index")
    if idx_size == body + sequences and sequences:
        raise PytrainError(f"{idx}: has per-sequence modes (a multimodal dataset); pytrain packs text token ids only")
    with open(idx, "rb") as handle:
        handle.seek(HEADER.size)
        lengths = np.fromfile(handle, dtype="<i4", count=sequences).astype(np.int64)
        pointers = np.fromfile(handle, dtype="<i8", count=sequences)
        doc_index = np.fromfile(handle, dtype="<i8", count=entries)
    if entries == 0 or doc_index[0] != 0 or doc_index[-1] != sequences or np.any(np.diff(doc_index) < 0):
        raise PytrainError(f"{idx}: the document index is not an ascending list from 0 to the sequence count {sequences}; damaged")
    if np.any(lengths < 0):
        raise PytrainError(f"{idx}: sequence {int(np.argmax(lengths < 0))} has a negative length; damaged")
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if sequences else 0
    if total * dtype.itemsize > bin_size:
        raise PytrainError(f"{bin_}: {bin_size} bytes, but {idx.name} describes {total} {dtype.name} tokens "
                           f"({total * dtype.itemsize} bytes); truncated")
    past = (pointers < 0) | (pointers + lengths * dtype.itemsize > bin_size)
    if np.any(past):
        i = int(np.argmax(past))
        raise PytrainError(f"{idx}: sequence {i} points at bytes [{pointers[i]}, {pointers[i] + lengths[i] * dtype.itemsize}), "
                           f"past the end of {bin_.name} ({bin_size} bytes); the pair does not match")
    if total * dtype.itemsize != bin_size:
        raise PytrainError(f"{bin_}: {bin_size} bytes, but {idx.name} describes {total * dtype.itemsize}; the pair does not match")
    starts = (ends - lengths) * dtype.itemsize
    if np.any(pointers != starts):
        i = int(np.argmax(pointers != starts))
        raise PytrainError(f"{idx}: sequence {i} is at byte {pointers[i]}, not {starts[i]} right after the previous one; "
                           "pytrain reads sequences stored back to back, as Megatron's builder writes them")
    token_starts = np.concatenate([[0], ends])
    return MegatronIndex(idx, bin_, dtype, sequences, bin_size, token_starts[doc_index])


def bad_id(path: Path, value: int, position: int, max_id: int) -> PytrainError:
    """The error for token id `value` outside [0, max_id] at token `position` of `path`."""
    why = "is negative" if value < 0 else f"is past the tokenizer's vocabulary (largest id {max_id})"
    return PytrainError(f"{path}: token id {value} at token {position} {why}; "
                        "pack with the tokenizer the dataset was made with")


# ----------------------------------------------------------------------------- writing
def dtype_for(pack_dtype: np.dtype, max_id: int) -> np.dtype:
    """The Megatron dtype for a pack's ids: uint16 stays, uint32 becomes int32 (Megatron has no uint32)."""
    if np.dtype(pack_dtype).itemsize == 2:
        return np.dtype("<u2")
    if max_id >= 1 << 31:
        raise PytrainError(f"token id {max_id} does not fit Megatron's int32; such a vocabulary cannot be written")
    return np.dtype("<i4")


def index_header(dtype: np.dtype, sequences: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, CODES[np.dtype(dtype).newbyteorder("=")], sequences, sequences + 1)


def write_pack(root: str | os.PathLike, split: str, prefix: str | os.PathLike) -> dict:
    """Write split `split` of the pack at `root` as PREFIX.bin + PREFIX.idx, one Megatron document (of one
    sequence) per pack document, ids as they are (EOS included when the pack appended it).

    Both files are written under temporary names and renamed when complete (the .bin first, so an .idx
    under its final name always has its data); an existing PREFIX.bin or PREFIX.idx is never replaced.
    The tokens are hashed as they are copied (on a second core) and must match the manifest's sha256.
    One conversion per prefix at a time: a second one is refused (pytrain.fsutil.output_lock)."""
    from pytrain.fsutil import output_lock

    with output_lock(prefix, "convert"):
        return _write_pack(Path(root), split, Path(prefix))


def _write_pack(root: Path, split: str, prefix: Path) -> dict:
    from pytrain.data import format as fmt
    from pytrain.data.hashed_file import HashedFile
    from pytrain.fsutil import atomic_file

    manifest = fmt.read_manifest(root)
    if manifest.get("loss_mask"):
        raise PytrainError(f"{root}: a chat pack with a loss mask; Megatron's format has no mask, so it cannot carry it")
    data = fmt.open_split(root, split, manifest)
    idx, bin_ = prefix.with_name(prefix.name + ".idx"), prefix.with_name(prefix.name + ".bin")
    for path in (bin_, idx):
        if path.exists() or path.is_symlink():
            raise PytrainError(f"{path}: exists; pytrain never replaces a Megatron file, choose another prefix or remove it")
    dtype = dtype_for(data.tokens.dtype, manifest["vocab_size"] - 1)
    lengths = np.diff(data.offsets)
    if data.num_docs and int(lengths.max()) >= 1 << 31:
        raise PytrainError(f"{root}: a document of {int(lengths.max())} tokens does not fit Megatron's int32 sequence lengths")
    with atomic_file(idx) as idx_out:
        with atomic_file(bin_) as bin_out:
            copy = HashedFile(bin_out)  # the bytes written are the pack's own (a view), so their hash is the pack's
            for start in range(0, data.num_tokens, _WINDOW):
                window = data.tokens[start:start + _WINDOW]
                if dtype != window.dtype and len(window) and int(window.max()) >= 1 << 31:
                    raise PytrainError(f"{root}: token id {int(window.max())} does not fit Megatron's int32")
                copy.write(window.view(dtype))
            if copy.hexdigest() != manifest["splits"][split]["tokens_sha256"]:
                raise PytrainError(f"{fmt.tokens_path(root, split)}: sha256 differs from the manifest; the pack is "
                                   "corrupted, run `pytrain verify` and re-pack")
        idx_out.write(index_header(dtype, data.num_docs))
        for start in range(0, data.num_docs, _WINDOW):
            idx_out.write(lengths[start:start + _WINDOW].astype("<i4").tobytes())
        for start in range(0, data.num_docs, _WINDOW):
            idx_out.write((data.offsets[start:min(start + _WINDOW, data.num_docs)] * dtype.itemsize).astype("<i8").tobytes())
        for start in range(0, data.num_docs + 1, _WINDOW):
            idx_out.write(np.arange(start, min(start + _WINDOW, data.num_docs + 1), dtype="<i8").tobytes())
    return {"bin": str(bin_), "idx": str(idx), "documents": data.num_docs, "tokens": data.num_tokens, "dtype": dtype.name}


_WINDOW = 1 << 23  # tokens (or documents) per write: bounded memory for any pack size
