"""For the sampling tests: synthetic packs, and independent references of the documented keyed permutation and
document order, written here in plain Python from their specification (csrc/blend_index.cpp's docstring,
pytrain.sampling.source_stream)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pytrain.data import format as fmt
from pytrain.data.format import SplitWriter

MASK64 = (1 << 64) - 1


def write_pack(root: Path, docs: list[np.ndarray], val_docs: list[np.ndarray] = (), tokenizer: str = "tok-a") -> Path:
    """A pack written with pytrain's own SplitWriter; `tokenizer` names the tokenizer (its sha256 is the name's)."""
    splits = {}
    for split, split_docs in (("train", docs), ("val", val_docs)):
        if split == "val" and not split_docs:
            continue
        writer = SplitWriter(root, split, np.dtype("<u2"))
        writer.write(np.concatenate(split_docs).astype("<u2"), np.array([len(d) for d in split_docs]))
        splits[split] = writer.close()
    manifest = {"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION, "dtype": "uint16",
                "vocab_size": 1000, "eos_id": 0, "bos_id": None, "append_eos": True, "prepend_bos": False,
                "tokenizer": {"file": fmt.TOKENIZER, "sha256": hashlib.sha256(tokenizer.encode()).hexdigest()},
                "splits": splits}
    (root / fmt.MANIFEST).write_text(json.dumps(manifest))
    return root


def mix64(z: int) -> int:
    """The SplitMix64 finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def keyed_permutation(x: int, n: int, key: int) -> int:
    """6-round balanced Feistel network on the smallest even number of bits covering n, cycle-walked into [0, n)."""
    bits = 1
    while bits < 64 and (1 << bits) < n:
        bits += 1
    half = (bits + 1) // 2
    mask = (1 << half) - 1
    while True:
        left, right = x >> half, x & mask
        for round_ in range(6):
            f = mix64((key + (round_ + 1) * 0x9E3779B97F4A7C15 + mix64(right)) & MASK64) & mask
            left, right = right, left ^ f
        x = (left << half) | right
        if x < n:
            return x


def document_order(n: int, seed: int, name: str, epoch: int, shuffle: bool = True) -> list[int]:
    """The documents of source `name` in the order epoch `epoch` lays them out."""
    if not shuffle:
        return list(range(n))
    key = int.from_bytes(hashlib.sha256(f"pytrain-documents:{seed}:{epoch}:{name}".encode()).digest()[:8], "little")
    return [keyed_permutation(k, n, key) for k in range(n)]


def epoch_windows(docs: list[np.ndarray], order: list[int], seq_len: int) -> list[np.ndarray]:
    """The epoch's samples: the documents end to end in `order`, cut into seq_len + 1 windows of stride seq_len."""
    stream = np.concatenate([docs[d] for d in order]).astype(np.int64)
    return [stream[s * seq_len: s * seq_len + seq_len + 1] for s in range((len(stream) - 1) // seq_len)]


def documents_seen(samples: list[np.ndarray]) -> list[int]:
    """For packs whose tokens name their document: the documents that an epoch's consecutive windows (neighbours
    share a token) hold, in order."""
    stream = np.concatenate([w[:-1] for w in samples] + [samples[-1][-1:]])
    return stream[np.concatenate([[0], np.flatnonzero(np.diff(stream)) + 1])].tolist()
