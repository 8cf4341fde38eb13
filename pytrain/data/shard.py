"""`pytrain pack --shard K/N`: pack the K-th of N disjoint, balanced parts of the inputs, on any machine.

K is 0-based (0 <= K < N), as torchrun's RANK and a Slurm array `--array=0-(N-1)` number their tasks.
The inputs, in the order given, are laid end to end by size and cut into N equal byte ranges; shard K
reads what falls in range K:
- plain JSONL is cut inside files at line starts (a line belongs to the range holding its first byte),
  so one huge file splits evenly;
- parquet files and datasets folders are cut by rows, and Megatron datasets by documents, in proportion to
  their size;
- `hf:` datasets are streamed, with no size to cut: refused (pack them whole);
- `.gz` files (which cannot seek) and `.txt` files are never cut: each goes whole to the shard
  holding its middle byte, so a shard may get no input when there are fewer such files than shards.
Every shard computes the same cuts from the same input list (paths, sizes), so together the N
shards read every document exactly once. Validation options apply per shard (each shard holds out
its own --val-docs / --val-fraction).

One OUT folder holds one sharding: shards of another N already there are refused when writing, and
readers refuse a folder whose shards come from different shardings (other N, inputs, tokenizer or
options), which would otherwise be read as one dataset holding every document twice.

Shard K of N is written to OUT/shard-KKKKK-of-NNNNN/, an ordinary pack. Its manifest records the
shard, the inputs (path, size, mtime), the tokenizer's sha256 and the options; a rerun whose shard
output is complete and matches is skipped, so a job array can simply be resubmitted and only killed
or failed shards are packed again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pytrain.data import format as fmt
from pytrain.data.readers import READERS, input_bytes, input_kind
from pytrain.data.readers.base import Part
from pytrain.errors import PytrainError, shown

_SPEC = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")
MAX_SHARDS = 99_999  # the folder names' five digits; a count like a pasted job id is refused before any work
SHARD_DIR = re.compile(r"shard-([0-9]+)-of-([0-9]+)$")
# PackOptions fields that cannot change the packed bytes (the rest are part of a shard's identity).
_NEUTRAL_OPTIONS = ("threads", "batch_bytes", "overwrite", "progress")


@dataclass(frozen=True)
class ShardSpec:
    index: int  # 0-based
    count: int

    @property
    def dir_name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"


def parse_shard(text: str, environ=os.environ) -> ShardSpec:
    """`K/N` (0-based K) or `auto` (from torchrun's or a Slurm array's environment)."""
    if text.strip() == "auto":
        return _from_environment(environ)
    match = _SPEC.match(text)
    if not match:
        raise PytrainError(f"--shard {text!r}: expected K/N with 0 <= K < N (0-based, e.g. 0/8 ... 7/8) or auto")
    index, count = (int(digits) if len(digits) <= 18 else 10**18 for digits in match.groups())  # no 5000-digit ints
    return _checked(index, count, f"--shard {text.strip() if len(text) <= 40 else shown(text.strip(), 40)}")


def _checked(index: int, count: int, where: str) -> ShardSpec:
    if count > MAX_SHARDS:
        raise PytrainError(f"{where}: {shown(count)} shards; pack splits its inputs into at most {MAX_SHARDS} shards")
    if count < 1 or not 0 <= index < count:
        raise PytrainError(f"{where}: shard {shown(index)} of {count} is out of range; K is 0-based, 0 <= K < N")
    return ShardSpec(index, count)


def _env_int(environ, name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PytrainError(f"--shard auto: ${name}={value!r} is not an integer") from None


def _from_environment(environ) -> ShardSpec:
    """Slurm array task (ID - MIN) / STEP of COUNT, and/or torchrun RANK of WORLD_SIZE; both: rank within task."""
    shards = []
    if "SLURM_ARRAY_TASK_ID" in environ:
        first, step = _env_int(environ, "SLURM_ARRAY_TASK_MIN", 0), _env_int(environ, "SLURM_ARRAY_TASK_STEP", 1)
        shards.append(((_env_int(environ, "SLURM_ARRAY_TASK_ID") - first) // max(step, 1),
                       _env_int(environ, "SLURM_ARRAY_TASK_COUNT")))
    if "RANK" in environ and "WORLD_SIZE" in environ:
        shards.append((_env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")))
    if not shards:
        raise PytrainError("--shard auto: neither torchrun's RANK/WORLD_SIZE nor a Slurm array's SLURM_ARRAY_TASK_ID/"
                           "SLURM_ARRAY_TASK_COUNT is set; launch under torchrun or sbatch --array, or pass --shard K/N")
    index, count = shards[0]
    for inner_index, inner_count in shards[1:]:
        index, count = index * inner_count + inner_index, count * inner_count
    return _checked(index, count, "--shard auto (" + ", ".join(
        f"{name}={environ[name]}" for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT",
                                               "RANK", "WORLD_SIZE") if name in environ) + ")")


# ----------------------------------------------------------------------------- the plan
def plan_shard(inputs, spec: ShardSpec) -> tuple[list[Path], list[Part | None]]:
    """The inputs shard `spec` reads and the part of each (None: the whole file)."""
    paths = [Path(p) for p in inputs]
    kinds = [input_kind(p) for p in paths]
    sizes = [input_bytes(p) for p in paths]
    total = sum(sizes)
    lo, hi = _bound(spec.index, total, spec.count), _bound(spec.index + 1, total, spec.count)
    chosen, parts, start = [], [], 0
    for path, kind, size in zip(paths, kinds, sizes):
        if READERS[kind].splittable:
            a, b = min(max(lo - start, 0), size), min(max(hi - start, 0), size)
            part = _line_part(path, a, b, size) if kind == "jsonl" else _row_part(path, kind, a, b, size)
            if part is not None:
                chosen.append(path)
                parts.append(part)
        elif _shard_holding(start + size // 2, total, spec.count) == spec.index:
            chosen.append(path)
            parts.append(None)
        start += size
    return chosen, parts


def _bound(k: int, total: int, count: int) -> int:
    """Where byte range k of `count` equal ranges of `total` bytes starts (range k is [bound k, bound k+1))."""
    return k * total // count


def _shard_holding(byte: int, total: int, count: int) -> int:
    """The range of `count` equal ranges of `total` bytes that holds `byte` (the last one for bytes at or past the
    end): the largest k with _bound(k) <= byte, computed, not searched, so no list of `count` bounds is built."""
    if total == 0:
        return count - 1
    return min(((byte + 1) * count + total - 1) // total - 1, count - 1)


def _line_part(path: Path, a: int, b: int, size: int) -> Part | None:
    start, end = _line_start(path, a, size), _line_start(path, b, size)
    return Part(start, end) if start < end else None


def _line_start(path: Path, position: int, size: int) -> int:
    """The first line start at or after `position`: the byte after the first newline at or after position - 1."""
    if position <= 0 or position >= size:
        return min(max(position, 0), size)
    with open(path, "rb") as handle:
        handle.seek(position - 1)
        offset = position - 1
        while block := handle.read(1 << 16):
            newline = block.find(b"\n")
            if newline >= 0:
                return offset + newline + 1
            offset += len(block)
    return size


def _row_part(path: Path, kind: str, a: int, b: int, size: int) -> Part | None:
    rows = READERS[kind].row_count(path)
    first, last = a * rows // max(size, 1), b * rows // max(size, 1)
    return Part(first, last) if first < last else None


# ----------------------------------------------------------------------------- packing one shard
def shard_identity(inputs, tokenizer, options, spec: ShardSpec) -> dict:
    """What a shard's output must match to be reused: its place, every input (a change anywhere moves the
    cuts), the tokenizer's bytes and the options that shape the output."""
    from pytrain.fsutil import file_sha256

    files = []
    for path in map(Path, inputs):
        size = input_bytes(path)  # refuses what no reader reads
        data = path if path.exists() else path.with_name(path.name + ".bin")  # a Megatron prefix: its .bin
        files.append({"path": str(path.resolve()), "size": size, "mtime": data.stat().st_mtime})
    return {"index": spec.index, "count": spec.count, "inputs": files,
            "tokenizer_sha256": file_sha256(Path(tokenizer)) if Path(tokenizer).is_file() else None,
            "options": {k: v for k, v in asdict(options).items() if k not in _NEUTRAL_OPTIONS}}


def pack_shard(inputs, tokenizer, out, options, spec: ShardSpec) -> Path:
    """Pack shard `spec` of `inputs` into OUT/shard-K-of-N (skipped when already there from the same inputs)."""
    from pytrain.data.pack import pack
    from pytrain.fsutil import output_lock

    options.validate()
    final = Path(out) / spec.dir_name
    identity = shard_identity(inputs, tokenizer, options, spec)
    with output_lock(final, "pack"):  # held through pack's own atomic_directory: one writer per shard
        _refuse_another_sharding(Path(out), spec)
        if (final / fmt.MANIFEST).is_file() and not options.overwrite:
            if fmt.read_manifest(final).get("shard") == identity:
                print(f"{final}: already packed from the same inputs and options; skipped")
                return final
            raise PytrainError(f"{final}: exists, packed from other inputs or options; pass --overwrite to repack it")
        paths, parts = plan_shard(inputs, spec)
        if not paths:
            raise PytrainError(f"--shard {spec.index}/{spec.count}: no input falls in this shard (.gz and .txt files "
                               "are never split, each goes whole to one shard); use fewer shards")
        pack(paths, tokenizer, final, options, parts=parts, manifest_extra={"shard": identity})
    return final


def _refuse_another_sharding(out: Path, spec: ShardSpec) -> None:
    """OUT may already hold shards of this sharding (N), never finished shards of another N."""
    if not out.is_dir():
        return
    for entry in sorted(out.iterdir()):
        match = SHARD_DIR.match(entry.name)
        if match and int(match.group(2)) != spec.count and (entry / fmt.MANIFEST).is_file():
            raise PytrainError(f"{out}: already holds {entry.name}, a shard of a {int(match.group(2))}-way sharding; "
                               f"a {spec.count}-way one beside it would be read with it (every document twice): "
                               "choose another OUT, or remove the other sharding's folders first")


# ----------------------------------------------------------------------------- reading a shard folder
def _sharding(manifest: dict) -> str | None:
    """What every shard of one `pack --shard` run shares: N, the inputs' names and sizes, the tokenizer and the
    options. Not the index, nor where the inputs were mounted or their mtimes (machines differ there)."""
    identity = manifest.get("shard")
    if not isinstance(identity, dict):
        return None
    inputs = [(Path(str(f.get("path"))).name, f.get("size")) for f in identity.get("inputs") or []
              if isinstance(f, dict)]
    return json.dumps([identity.get("count"), inputs, identity.get("tokenizer_sha256"), identity.get("options")],
                      sort_keys=True, default=str)


def mixed_sharding(shards: list[tuple[Path, dict]]) -> str | None:
    """Why the shard folders `shards` ((path, manifest), all in one folder) are not one sharding, or None."""
    first_of: dict[int, Path] = {}
    for path, _ in shards:
        match = SHARD_DIR.match(path.name)
        if match:
            first_of.setdefault(int(match.group(2)), path)
    if len(first_of) > 1:
        (n, a), (m, b) = sorted(first_of.items())[:2]
        return (f"{a.parent} holds a {n}-way and a {m}-way `pytrain pack --shard` output ({a.name}, {b.name}); read "
                "together they hold every document twice: keep one sharding per folder")
    keyed = [(path, _sharding(manifest)) for path, manifest in shards if SHARD_DIR.match(path.name)]
    for path, key in keyed[1:]:
        if key != keyed[0][1]:
            return (f"{path} was packed from other inputs, tokenizer or options than {keyed[0][0]} (its manifest's "
                    "\"shard\" record differs); finish re-packing every shard of that folder the same way")
    return None
