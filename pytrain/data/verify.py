"""`pytrain verify DIR`: prove a packed dataset is intact, or say exactly what is wrong.

Two depths, one function (`verify_pack`) that `pytrain verify` and the trainer both call:

    quick   manifest shape and its claims against the files: sizes, index headers, offsets,
            split and document counts, EOS/BOS placement against append_eos/prepend_bos,
            token ids < vocab_size, their sum against the manifest's tokens_sum and mask values
            (a streamed numpy max and sum), the tokenizer copy
    full    quick, plus the sha256 of every token, index and mask file against the manifest

Files are read in bounded chunks with ordinary reads (never a memory map that a shrinking file
would turn into SIGBUS), and the files of all splits are scanned in parallel threads (hashlib
and numpy release the GIL), so a full check costs about what reading and hashing the bytes
costs: see benchmarks/bench_verify.py.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pytrain.data import format as fmt
from pytrain.tokenizer.files import tokenizer_file
from pytrain.errors import PytrainError
from pytrain.fsutil import OUTPUT_MARKER, file_sha256, read_output_marker

MODES = ("full", "quick")
_CHUNK_BYTES = 16 << 20
_CHUNK_ENTRIES = 1 << 21  # index entries per chunk for the offset and EOS/BOS checks


def _scan(path: Path, dtype: np.dtype | None, want_hash: bool) -> tuple[str | None, int, int]:
    """(sha256 hex or None, largest value or -1, sum of values mod 2**64) of a file read as
    `dtype`, streamed in chunks."""
    digest = hashlib.sha256() if want_hash else None
    top, total = -1, 0
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            if digest is not None:
                digest.update(view[:n])
            if dtype is not None and n >= dtype.itemsize:
                values = np.frombuffer(buffer, dtype=dtype, count=n // dtype.itemsize)
                top = max(top, int(values.max()))
                total = (total + int(values.sum(dtype=np.uint64))) % 2**64
    return (digest.hexdigest() if digest is not None else None), top, total


def _check_token_range(root: Path, split: str, manifest: dict) -> list[str]:
    """Token ids < vocab_size, and their sum against the manifest's tokens_sum (quick and full)."""
    path = fmt.tokens_path(root, split)
    _, top, total = _scan(path, np.dtype(manifest["dtype"]).newbyteorder("<"), False)
    expected = manifest["splits"][split]
    problems = []
    if "tokens_sum" in expected and total != expected["tokens_sum"]:  # packs from before tokens_sum lack it
        problems.append(f"{path}: the sum of its token ids differs from the manifest's; token data was modified after packing")
    if top >= manifest["vocab_size"]:
        problems.append(f"{path}: token id {top} >= vocab size {manifest['vocab_size']} (out of vocabulary)")
    return problems


def _check_token_hash(root: Path, split: str, manifest: dict) -> list[str]:
    """A task of its own, so that on several cores hashing overlaps the range scan of the same file."""
    path = fmt.tokens_path(root, split)
    if _scan(path, None, True)[0] != manifest["splits"][split]["tokens_sha256"]:
        return [f"{path}: checksum mismatch; token data was modified after packing"]
    return []


def _check_index_hash(root: Path, split: str, manifest: dict) -> list[str]:
    path = fmt.index_path(root, split)
    if _scan(path, None, True)[0] != manifest["splits"][split]["index_sha256"]:
        return [f"{path}: checksum mismatch; the index was modified after packing"]
    return []


def _check_mask(root: Path, split: str, manifest: dict, full: bool) -> list[str]:
    path = fmt.mask_path(root, split)
    digest, top, _ = _scan(path, np.dtype("u1"), full)
    problems = []
    if full and digest != manifest["splits"][split]["mask_sha256"]:
        problems.append(f"{path}: checksum mismatch; the loss mask was modified after packing")
    if top > 1:
        problems.append(f"{path}: mask value {top}; a loss mask holds only 0 and 1")
    return problems


def _placement(name: str, expected: bool, token_id, hits: int, docs: int, first_miss: int | None, path: Path) -> list[str]:
    """Compare where a special token sits with what the manifest claims (append_eos / prepend_bos)."""
    end = "end with EOS" if name == "EOS" else "start with BOS"
    flag = "append_eos" if name == "EOS" else "prepend_bos"
    if expected and hits != docs:
        return [f"{path}: {docs - hits} documents do not {end} (id {token_id}), first is document {first_miss}"]
    if not expected and token_id is not None and docs and hits == docs:
        return [f"{path}: all {docs} documents {end} (id {token_id}) but the manifest says {flag}: false; "
                "the manifest was edited, re-pack"]
    return []


def _check_structure(root: Path, split: str, manifest: dict, data: fmt.PackedSplit) -> list[str]:
    """Offsets start at 0, increase and end at the token count; EOS/BOS sit where the manifest says."""
    index, tokens_file = fmt.index_path(root, split), fmt.tokens_path(root, split)
    offsets, tokens = data.offsets, data.tokens
    docs = data.num_docs
    if docs == 0:
        return [] if data.num_tokens == 0 else [f"{index}: no documents but {data.num_tokens} tokens"]
    if offsets[0] != 0 or offsets[-1] != len(tokens):
        return [f"{index}: offsets run {offsets[0]}..{offsets[-1]}, expected 0..{len(tokens)}"]
    eos, bos = manifest["eos_id"], manifest["bos_id"]
    eos_hits = bos_hits = 0
    eos_miss = bos_miss = None
    for start in range(0, docs, _CHUNK_ENTRIES):
        bounds = np.asarray(offsets[start:start + _CHUNK_ENTRIES + 1])
        lengths = np.diff(bounds)
        if lengths.min() <= 0:
            bad = start + int(np.argmax(lengths <= 0))
            return [f"{index}: document {bad} has {int(lengths[bad - start])} tokens (offsets must increase)"]
        if bounds[-1] > len(tokens):
            return [f"{index}: offset {int(bounds[-1])} of document {start + len(lengths)} is past the "
                    f"{len(tokens)} tokens"]
        if eos is not None:
            hit = np.asarray(tokens[bounds[1:] - 1]) == eos
            eos_hits += int(hit.sum())
            if eos_miss is None and not hit.all():
                eos_miss = start + int(np.argmin(hit))
        if bos is not None:
            hit = np.asarray(tokens[bounds[:-1]]) == bos
            bos_hits += int(hit.sum())
            if bos_miss is None and not hit.all():
                bos_miss = start + int(np.argmin(hit))
    return (_placement("EOS", manifest["append_eos"], eos, eos_hits, docs, eos_miss, tokens_file)
            + _placement("BOS", manifest["prepend_bos"], bos, bos_hits, docs, bos_miss, tokens_file))


def _split_tasks(root: Path, split: str, manifest: dict, full: bool) -> tuple[list[str], list]:
    """Problems found opening the split, and the (function, args) scans to run on it."""
    try:
        data = fmt.open_split(root, split, manifest)
    except PytrainError as error:
        return [str(error)], []
    tasks = [(_check_structure, (root, split, manifest, data)), (_check_token_range, (root, split, manifest))]
    if full:
        tasks += [(_check_token_hash, (root, split, manifest)), (_check_index_hash, (root, split, manifest))]
    if data.mask is not None:
        tasks.append((_check_mask, (root, split, manifest, full)))
    return [], tasks


def _manifest_claims(root: Path, manifest: dict) -> list[str]:
    """Claims of the manifest that the directory can contradict: splits and their counts."""
    problems = []
    splits = manifest["splits"]
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and (entry / "index.idx").exists() and entry.name not in splits:
            problems.append(f"{entry}: a split on disk that the manifest does not list (manifest edited?)")
    for name in splits:
        if not (root / name).is_dir():
            problems.append(f"{root / name}: missing, but the manifest lists a '{name}' split")
    validation = manifest.get("validation") or {}
    val_docs, val_fraction = validation.get("val_docs", 0), validation.get("val_fraction", 0.0)
    if (val_docs or val_fraction) and "val" not in splits:
        problems.append(f"{root / fmt.MANIFEST}: packed with a validation split (validation: {validation}) but lists none")
    if "val" in splits and not (val_docs or val_fraction):
        problems.append(f"{root / fmt.MANIFEST}: lists a 'val' split but was packed without --val-docs/--val-fraction")
    total = sum(s["documents"] for s in splits.values())
    if "val" in splits and val_docs and splits["val"]["documents"] != val_docs:
        problems.append(f"{root / fmt.MANIFEST}: the val split has {splits['val']['documents']} documents, "
                        f"but --val-docs was {val_docs}")
    if "val" in splits and val_fraction and splits["val"]["documents"] != int(np.floor(np.float64(total) * val_fraction)):
        problems.append(f"{root / fmt.MANIFEST}: the val split has {splits['val']['documents']} of {total} documents, "
                        f"not the {int(np.floor(np.float64(total) * val_fraction))} --val-fraction {val_fraction} gives")
    read = manifest.get("documents_read")
    if _is_count(read) and total > read:
        problems.append(f"{root / fmt.MANIFEST}: {total} documents in the splits but only {read} read")
    sources = manifest.get("sources")
    if _is_count(read) and isinstance(sources, list) and all(isinstance(s, dict) and _is_count(s.get("documents")) for s in sources):
        if sum(s["documents"] for s in sources) != read:
            problems.append(f"{root / fmt.MANIFEST}: its sources add up to {sum(s['documents'] for s in sources)} "
                            f"documents, but documents_read is {read}")
    return problems


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _marker_problems(root: Path) -> list[str]:
    """Files the output marker lists that are now missing, resized or (small ones) edited."""
    marker = read_output_marker(root)
    if marker is None:
        return []  # a pack written before markers; the manifest's checksums still apply
    problems = []
    for entry in marker["files"]:
        path = root / entry["path"]
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {OUTPUT_MARKER})")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, but {entry['size']} when packed (changed since)")
        elif "sha256" in entry and file_sha256(path) != entry["sha256"]:
            problems.append(f"{path}: changed since it was packed (sha256 differs from {OUTPUT_MARKER})")
    return problems


def _tokenizer_problems(root: Path, manifest: dict, tokenizer) -> list[str]:
    problems = []
    packed_with = manifest["tokenizer"]["sha256"]
    copy = root / fmt.TOKENIZER
    if not copy.is_file():
        problems.append(f"{copy}: missing; the tokenizer copy is needed to decode and to train")
    elif file_sha256(copy) != packed_with:
        problems.append(f"{copy}: differs from the tokenizer the data was packed with")
    if tokenizer is not None:
        given = tokenizer_file(tokenizer)
        if not given.is_file():
            problems.append(f"{given}: no such tokenizer file")
        elif file_sha256(given) != packed_with:
            problems.append(f"{given}: stale tokenizer: the data was packed with a different tokenizer "
                            f"(sha256 {packed_with[:12]}...); re-pack with this one or use the copy in {copy}")
    return problems


def verify_pack(root, mode: str = "full", tokenizer=None, threads: int | None = None) -> list[str]:
    """Every problem found in the packed dataset `root`, one line each ([] when intact)."""
    if mode not in MODES:
        raise PytrainError(f"verify mode must be one of {', '.join(MODES)}, not {mode!r}")
    root = Path(root)
    try:
        manifest = fmt.load_manifest_json(root)
    except PytrainError as error:
        return [str(error)]
    problems = [f"{root / fmt.MANIFEST}: {problem}" for problem in fmt.manifest_problems(manifest)]
    if problems:
        return problems  # the checks below rely on the manifest's shape
    problems += _marker_problems(root)
    problems += _manifest_claims(root, manifest)
    problems += _tokenizer_problems(root, manifest, tokenizer)
    tasks = []
    for split in manifest["splits"]:
        found, split_tasks = _split_tasks(root, split, manifest, mode == "full")
        problems += found
        tasks += split_tasks
    workers = threads or min(len(tasks), os.cpu_count() or 1, 8) or 1
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pytrain-verify") as pool:
            for found in pool.map(lambda task: task[0](*task[1]), tasks):
                problems += found
    except OSError as error:
        problems.append(f"{error.filename}: unreadable ({error.strerror})")
    return list(dict.fromkeys(problems))


def check_pack(root, mode: str = "full", tokenizer=None) -> None:
    """Raise PytrainError listing every problem verify_pack finds (the trainer's `data.verify`)."""
    problems = verify_pack(root, mode, tokenizer)
    if len(problems) == 1:
        raise PytrainError(problems[0])  # each problem names its file
    if problems:
        lines = "\n  ".join(problems)
        raise PytrainError(f"{root}: {len(problems)} problem(s) ({mode} verify):\n  {lines}")


def verify_dataset(root, tokenizer=None, mode: str = "full") -> None:
    """`pytrain verify`: raise PytrainError listing every problem found; print a short OK report otherwise."""
    check_pack(root, mode, tokenizer)
    manifest = fmt.read_manifest(root)
    counts = ", ".join(f"{name} {info['documents']} docs/{info['tokens']} tokens" for name, info in manifest["splits"].items())
    what = "checksums, " if mode == "full" else "no checksums (quick), "
    print(f"{root}: OK ({counts}; {what}offsets, token ids < {manifest['vocab_size']}, "
          f"{'EOS placement' if manifest['append_eos'] else 'no EOS expected'})")
