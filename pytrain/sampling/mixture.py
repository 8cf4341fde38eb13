"""Weighted mixtures of packed sources: the run's data (`data.mixture`, and `data.path` as a mixture of one source).

A source is one pack directory, a directory written by `pytrain pack --shard` (its shard-K-of-N
packs), or a glob of either. Its shards are read as one collection of documents (in path order), so each
shard is sampled in proportion to its size. Source s of a mixture gets the share w_s / sum(w) of the
training samples, hence of the training tokens: a source smaller than its share repeats (one epoch
per pass over its samples), a larger one is subsampled. `data.path` is the mixture of that one source
with weight 1.

The stream is deterministic from (seed, sources, weights) and nothing in it grows with the number of
sources' documents, so 10,000 shards and 10^9 documents start in seconds (reading their manifests dominates):
- which source global sample g comes from, and which of that source's samples it is (counted across
  its epochs), is the blending index, built in C++ one chunk of about CHUNK samples at a time
  (`_native.blend_chunk`); a chunk depends on its number only, so any position is reached in
  O(sources + CHUNK log sources) without replaying the stream;
- a source's samples in epoch e are cut from its documents laid end to end in a shuffled order of
  their own, pi_e, seeded by (seed, source name, e) and evaluated lazily (pytrain.sampling.source_stream).

The resume state is one global counter; per-source token counts and epochs are derived from the index
at that counter, never tracked by hand.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytrain import _native
from pytrain.data import format as fmt
from pytrain.data.shard import SHARD_DIR, mixed_sharding
from pytrain.sampling.samples import SampleStream, sample_rows
from pytrain.sampling import source_stream
from pytrain.sampling.source_stream import ReadCache, SourceStream
from pytrain.errors import PytrainError

CHUNK = 1 << 20  # nominal samples per chunk of the blending index
WEIGHT_UNITS = 1 << 40  # weights are quantised to integers summing to about this, so quotas are exact
PATH_SOURCE = "data"  # the name of data.path's one source
SAMPLING = "shuffled-documents"  # in the resume state: how samples are cut (older pytrain had none)


@dataclass(frozen=True)
class Shard:
    path: Path
    manifest: dict


@dataclass(frozen=True)
class Source:
    """One mixture entry, resolved: its name, weight and pack directories (shards)."""

    label: str  # "data.mixture[i] (name)", for error messages
    name: str
    weight: float
    shards: tuple[Shard, ...]

    def checksum(self, split: str) -> str:
        """The sha256 of the split's own checksums (tokens, index and mask of each shard, as their manifests record
        them, in shard order): checkpoints record it, so a resume notices data re-packed with other documents."""
        digest = hashlib.sha256()
        for shard in self.shards:
            info = shard.manifest["splits"].get(split, {})
            digest.update(json.dumps({k: info[k] for k in sorted(info) if k.endswith("_sha256")}).encode() + b"\n")
        return digest.hexdigest()


def resolve_sources(entries: list[dict], labels: list[str] | None = None) -> list[Source]:
    """Expand each entry's path into pack directories and check that all share one tokenizer.

    `entries` are checked dicts {name, path, weight} (see pytrain.config); `labels` name them in errors
    (default: data.mixture[i] (name)).
    """
    sources, reference = [], None
    for i, entry in enumerate(entries):
        label = labels[i] if labels else f"data.mixture[{i}] ({entry['name']})"
        shards = tuple(Shard(path, _read_manifest(path, label)) for path in _pack_dirs(entry["path"], label))
        _check_one_sharding_per_folder(shards, label)
        for shard in shards:
            sha = shard.manifest["tokenizer"].get("sha256")
            if reference is None:
                reference = (sha, label, shard.path)
            elif sha != reference[0]:
                raise PytrainError(
                    f"{label}: {shard.path} was packed with another tokenizer (sha256 {str(sha)[:12]}...) than "
                    f"{reference[1]} {reference[2]} ({str(reference[0])[:12]}...); all sources must share one tokenizer")
        sources.append(Source(label, entry["name"], float(entry["weight"]), shards))
    return sources


def _read_manifest(path: Path, label: str) -> dict:
    try:
        return fmt.read_manifest(path)
    except PytrainError as error:
        raise PytrainError(f"{label}: {error}") from None


def _pack_dirs(pattern: str, label: str) -> list[Path]:
    """The pack directories of one entry: `pattern` is a pack, a `pack --shard` output folder, or a glob of them."""
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matches:
        raise PytrainError(f'{label}: path "{pattern}" matches nothing; give a pack directory or a glob of them')
    packs = []
    for match in map(Path, matches):
        if (match / fmt.MANIFEST).is_file() or not match.exists():
            packs.append(match)  # reading its manifest says what is wrong with it, if anything
        elif match.is_dir() and any(SHARD_DIR.match(p.name) for p in match.iterdir()):
            packs += sorted(p for p in match.iterdir() if SHARD_DIR.match(p.name))
        else:
            raise PytrainError(f"{label}: {match} is not a pack (no {fmt.MANIFEST}) nor a folder of "
                               "`pytrain pack --shard` outputs")
    _check_complete_shards(packs, label)
    return packs


def _check_complete_shards(packs: list[Path], label: str) -> None:
    """Every shard-K-of-N folder's siblings 0..N-1 must all be there (finished shards are renamed into place): a
    missing or still running shard would otherwise silently drop part of the source."""
    groups: dict[tuple[Path, int], set[int]] = {}
    for path in packs:
        match = SHARD_DIR.match(path.name)
        if match:
            groups.setdefault((path.parent, int(match.group(2))), set()).add(int(match.group(1)))
    for (parent, count), present in groups.items():
        missing = sorted(set(range(count)) - present)
        if missing:
            first = parent / f"shard-{missing[0]:05d}-of-{count:05d}"
            raise PytrainError(f"{label}: {len(missing)} of {count} shards are missing or unfinished under {parent} "
                               f"(first: {first}); finish `pytrain pack --shard` for them")


def _check_one_sharding_per_folder(shards: tuple[Shard, ...], label: str) -> None:
    by_folder: dict[Path, list[tuple[Path, dict]]] = {}
    for shard in shards:
        by_folder.setdefault(shard.path.parent, []).append((shard.path, shard.manifest))
    for found in by_folder.values():
        reason = mixed_sharding(found)
        if reason:
            raise PytrainError(f"{label}: {reason}")


def weight_units(weights: list[float]) -> np.ndarray:
    """Weights as positive integers proportional to them (summing to about WEIGHT_UNITS), for exact quotas."""
    total = sum(weights)
    units = np.array([max(1, int(w / total * WEIGHT_UNITS)) for w in weights], dtype=np.int64)
    return units


class BlendedDataset(SampleStream):
    """Fixed-length samples from weighted sources, as one global stream (see the module docstring).

    `get_batch`, `next_batch`, `state_dict`/`load_state_dict` with one global counter `consumed`, so resuming
    on another number of ranks continues the same stream. The streams share seq_len, seed and shuffle.
    """

    def __init__(self, streams: list[SourceStream], weights: list[float], rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise PytrainError(f"rank {rank} is outside world_size {world_size}")
        for stream in streams:
            if stream.samples_per_epoch == 0:
                raise PytrainError(f"{stream.label}: the {stream.split} split has {stream.num_tokens} tokens, too few "
                                   f"for one sample of seq_len {stream.seq_len}; add data or lower seq_len")
        self.streams, self.weights = streams, list(weights)
        self.checksums = {stream.name: stream.checksum for stream in streams}
        self.names = [s.name for s in streams]
        self.units = weight_units(self.weights)
        self.seq_len, self.seed, self.shuffle = streams[0].seq_len, streams[0].seed, streams[0].shuffle
        self.rank, self.world_size = rank, world_size
        self.consumed = 0
        self._chunks: OrderedDict[int, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._starts: dict[int, int] = {}
        self._counted: tuple[int, int, np.ndarray | None] = (-1, 0, None)  # samples_by_source's last answer

    # ------------------------------------------------------------------ the blending index
    def _chunk_start(self, c: int) -> int:
        """Global position of chunk c's first sample."""
        if c not in self._starts:
            self._starts[c] = int(_native.blend_quotas(self.units, c * CHUNK).sum())
        return self._starts[c]

    def _chunk(self, c: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(first global position, samples of each source before it, source of each sample, index in its source)."""
        if c not in self._chunks:
            before, sources, indices = _native.blend_chunk(self.units, c * CHUNK, (c + 1) * CHUNK)
            self._chunks[c] = (int(before.sum()), before, sources, indices)
            if len(self._chunks) > 2:  # a batch straddles at most two chunks
                self._chunks.popitem(last=False)
        return self._chunks[c]

    def _chunk_of(self, g: int) -> int:
        c = g // CHUNK  # chunk c starts at most len(sources) samples before c * CHUNK
        while self._chunk_start(c) > g:
            c -= 1
        while self._chunk_start(c + 1) <= g:
            c += 1
        return c

    def locate(self, g: int) -> tuple[int, int]:
        """(source, sample index within that source, counted across its epochs) of global sample g."""
        if g < 0:
            raise IndexError(g)
        start, _, sources, indices = self._chunk(self._chunk_of(g))
        return int(sources[g - start]), int(indices[g - start])

    def samples_by_source(self, g: int) -> np.ndarray:
        """How many samples of each source the first g global samples hold. Counted on from the last answer
        when it is in the same chunk and not after g (training asks at every logged step, and a chunk holds
        2^20 samples)."""
        start, before, sources, _ = self._chunk(self._chunk_of(g))
        last_start, last_g, last_counts = self._counted
        if last_start == start and last_g <= g:
            counts = last_counts + np.bincount(sources[last_g - start:g - start], minlength=len(self.streams))
        else:
            counts = before + np.bincount(sources[:g - start], minlength=len(self.streams))
        self._counted = (start, g, counts)
        return counts.copy()

    # ------------------------------------------------------------------ samples
    def rows(self, indices: list[int]) -> dict[str, np.ndarray]:
        """Global samples `indices` (pytrain.sampling.samples.sample_rows). Runs of them that are consecutive
        samples of one source in one epoch (a whole batch of `data.path`) are read as one window."""
        runs: list[list] = []  # [stream, epoch, first sample, count]
        for g in indices:
            s, i = self.locate(g)
            stream = self.streams[s]
            epoch, j = divmod(i, stream.samples_per_epoch)
            last = runs[-1] if runs else None
            if last and last[0] is stream and last[1] == epoch and last[2] + last[3] == j:
                last[3] += 1
            else:
                runs.append([stream, epoch, j, 1])
        parts = [stream.windows(epoch, j, count) for stream, epoch, j, count in runs]
        columns = [np.concatenate(column) for column in zip(*(part[:3] for part in parts))]
        masks = [part[3] for part in parts]
        if all(mask is None for mask in masks):
            return sample_rows(*columns, None)
        return sample_rows(*columns, np.concatenate([np.ones_like(part[0], np.uint8) if mask is None else mask
                                                     for part, mask in zip(parts, masks)]))

    # ------------------------------------------------------------------ progress and resume
    def progress(self) -> dict:
        """Training tokens (seq_len per sample) and epochs (passes over its samples) per source so far."""
        counts = self.samples_by_source(self.consumed)
        return {
            "tokens_by_source": {n: int(c) * self.seq_len for n, c in zip(self.names, counts)},
            "epoch_by_source": {n: round(int(c) / s.samples_per_epoch, 4)
                                for n, c, s in zip(self.names, counts, self.streams)},
        }

    def state_dict(self) -> dict:
        """The counter and what must match to continue it; "walks" only saves a resumed run from walking each
        source's document order from its epoch's start (it is derived from the counter)."""
        walks = {}
        for stream, count in zip(self.streams, self.samples_by_source(self.consumed).tolist()):
            epoch, j = divmod(count, stream.samples_per_epoch)
            if j:
                walks[stream.name] = [epoch, *stream.walk_position(epoch, j)]
        return {"consumed": self.consumed, "seed": self.seed, "seq_len": self.seq_len, "shuffle": self.shuffle,
                "sampling": SAMPLING,
                "sources": [[n, int(u), s.samples_per_epoch] for n, u, s in zip(self.names, self.units, self.streams)],
                "walks": {"block": source_stream.BLOCK, "at": walks}, "checksums": self.checksums}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        state = _from_older_pytrain(state, mine)
        for key in ("seed", "seq_len", "shuffle", "sources"):
            if state.get(key) != mine[key]:
                raise PytrainError(
                    f"cannot resume the data position: checkpoint has {key}={state.get(key)!r}, this run has "
                    f"{mine[key]!r} (the same sources, weights, seq_len and seed are needed for an exact resume)")
        self.consumed = int(state["consumed"])
        walks = state.get("walks", {})
        if walks.get("block") == source_stream.BLOCK:  # else (another block size) the walks start over
            streams = dict(zip(self.names, self.streams))
            for name, position in walks.get("at", {}).items():
                if name not in streams or not (isinstance(position, list) and len(position) == 3):
                    raise PytrainError(f"cannot resume the data position: the checkpoint's walk position {position!r} "
                                       f"for source {name!r} is malformed")
                streams[name].resume_walk(*map(int, position))


def _from_older_pytrain(state: dict, mine: dict) -> dict:
    """A resume state saved before samples were cut from shuffled documents (no "sampling" key), in today's form.

    Without shuffling the order is the same as today's (documents in pack order, windows in turn), so such a run
    continues exactly; a shuffled one cannot (its order was another), and is refused rather than continued on
    other samples. `data.path` states had samples_per_epoch instead of sources.
    """
    if "sampling" in state:
        return state
    if state.get("shuffle", True):
        raise PytrainError(
            "cannot resume the data position: the checkpoint was saved by an older pytrain, whose shuffled sample "
            "order this version no longer makes (documents are now reshuffled every epoch inside each source), so "
            "its continuation cannot be reproduced; finish that run with the pytrain that started it, or start a new "
            "run from its weights (`pytrain export`, then model.init_from)")
    if "sources" in state or len(mine["sources"]) != 1:
        return state
    name, units, _ = mine["sources"][0]
    return {**state, "sources": [[name, units, state.get("samples_per_epoch")]]}


class Mixture:
    """The resolved sources of a run (`data.mixture`, or `data.path` as one source), and datasets over their train
    and val splits."""

    def __init__(self, entries: list[dict], labels: list[str] | None = None):
        self.sources = resolve_sources(entries, labels)
        self._cache = ReadCache()

    @classmethod
    def of_path(cls, path, label: str = "data.path") -> Mixture:
        """`data.path`: the mixture of one source, named PATH_SOURCE, with weight 1."""
        return cls([{"name": PATH_SOURCE, "path": str(path), "weight": 1.0}], labels=[label])

    @property
    def first_pack(self) -> Path:
        """The pack whose manifest and tokenizer describe the whole mixture (all share the tokenizer)."""
        return self.sources[0].shards[0].path

    @property
    def manifest(self) -> dict:
        return self.sources[0].shards[0].manifest

    def train_dataset(self, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                      shuffle: bool = True) -> BlendedDataset:
        streams = [SourceStream(source, "train", seq_len, self._cache, seed, shuffle) for source in self.sources]
        return BlendedDataset(streams, [s.weight for s in self.sources], rank, world_size)

    def validation_datasets(self, seq_len: int, rank: int = 0,
                            world_size: int = 1) -> tuple[dict[str, tuple[float, BlendedDataset]], list[str]]:
        """({name: (weight, dataset over its val split, in order)}, notes on the sources left out)."""
        datasets, notes = {}, []
        for source in self.sources:
            stream = SourceStream(source, "val", seq_len, self._cache, shuffle=False)
            if stream.samples_per_epoch == 0:
                why = ("has no validation split" if not stream.shards else
                       f"has {stream.num_tokens} validation tokens, too few for one sample of seq_len {seq_len}")
                notes.append(f"{source.label} {why}: not evaluated on its own")
                continue
            datasets[source.name] = (source.weight, BlendedDataset([stream], [1.0], rank, world_size))
        return datasets, notes
