"""`pytrain verify DIR`: prove a packed dataset is intact, or say exactly what is wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pytrain.data import format as fmt
from pytrain.data.tokenizer import file_sha256, tokenizer_file
from pytrain.errors import PytrainError

_CHUNK_TOKENS = 1 << 24


def _check_split(root: Path, split: str, manifest: dict, full: bool = True) -> list[str]:
    problems = []
    expected = manifest["splits"][split]
    try:
        data = fmt.open_split(root, split, manifest)
    except PytrainError as error:
        return [str(error)]
    offsets = np.asarray(data.offsets)
    if offsets[0] != 0 or offsets[-1] != data.num_tokens:
        problems.append(f"{fmt.index_path(root, split)}: offsets run {offsets[0]}..{offsets[-1]}, expected 0..{data.num_tokens}")
    lengths = np.diff(offsets)
    if len(lengths) and lengths.min() <= 0:
        bad = int(np.argmax(lengths <= 0))
        problems.append(f"{fmt.index_path(root, split)}: document {bad} has {lengths[bad]} tokens (offsets must increase)")
        return problems  # the checks below index by these offsets
    if full and file_sha256(fmt.index_path(root, split)) != expected["index_sha256"]:
        problems.append(f"{fmt.index_path(root, split)}: checksum mismatch; the index was modified after packing")
    digest, top = hashlib.sha256(), 0
    for start in range(0, data.num_tokens, _CHUNK_TOKENS):
        chunk = np.asarray(data.tokens[start:start + _CHUNK_TOKENS])
        if full:
            digest.update(memoryview(chunk))
        top = max(top, int(chunk.max()))
    if full and digest.hexdigest() != expected["tokens_sha256"]:
        problems.append(f"{fmt.tokens_path(root, split)}: checksum mismatch; token data was modified after packing")
    if top >= manifest["vocab_size"]:
        problems.append(f"{fmt.tokens_path(root, split)}: token id {top} >= vocab size {manifest['vocab_size']}")
    if manifest["append_eos"]:
        wrong = np.flatnonzero(np.asarray(data.tokens[offsets[1:] - 1]) != manifest["eos_id"])
        if len(wrong):
            problems.append(f"{fmt.tokens_path(root, split)}: {len(wrong)} documents do not end with EOS "
                            f"(id {manifest['eos_id']}), first is document {wrong[0]}")
    if full and data.mask is not None:
        if file_sha256(fmt.mask_path(root, split)) != expected.get("mask_sha256"):
            problems.append(f"{fmt.mask_path(root, split)}: checksum mismatch; the loss mask was modified after packing")
    if manifest["prepend_bos"]:
        wrong = np.flatnonzero(np.asarray(data.tokens[offsets[:-1]]) != manifest["bos_id"])
        if len(wrong):
            problems.append(f"{fmt.tokens_path(root, split)}: {len(wrong)} documents do not start with BOS "
                            f"(id {manifest['bos_id']}), first is document {wrong[0]}")
    return problems


def verify_pack(root, mode: str = "full") -> list[str]:
    """Problems of the pack at `root` (empty when intact): "full" hashes every file, "quick" checks
    structure, offsets, token-id range and EOS/BOS placement only."""
    try:
        manifest = fmt.read_manifest(root)
    except PytrainError as error:
        return [str(error)]
    return [problem for split in manifest["splits"] for problem in _check_split(Path(root), split, manifest,
                                                                                   full=mode == "full")]


def verify_dataset(root, tokenizer=None) -> None:
    """Raise PytrainError listing every problem found; print a short OK report otherwise."""
    root = Path(root)
    manifest = fmt.read_manifest(root)
    problems = []
    packed_with = manifest["tokenizer"]["sha256"]
    copy = root / fmt.TOKENIZER
    if not copy.exists():
        problems.append(f"{copy}: missing")
    elif file_sha256(copy) != packed_with:
        problems.append(f"{copy}: differs from the tokenizer the data was packed with")
    if tokenizer is not None:
        given = tokenizer_file(tokenizer)
        if not given.exists():
            problems.append(f"{given}: no such tokenizer file")
        elif file_sha256(given) != packed_with:
            problems.append(f"{given}: stale tokenizer: the data was packed with a different tokenizer "
                            f"(sha256 {packed_with[:12]}...); re-pack with this one or use the copy in {copy}")
    for split in manifest["splits"]:
        problems += _check_split(root, split, manifest)
    if problems:
        raise PytrainError(f"{root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    counts = ", ".join(f"{name} {info['documents']} docs/{info['tokens']} tokens" for name, info in manifest["splits"].items())
    print(f"{root}: OK ({counts}; checksums, offsets, token ids < {manifest['vocab_size']}, "
          f"{'EOS placement' if manifest['append_eos'] else 'no EOS expected'})")
