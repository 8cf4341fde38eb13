"""One source's split as samples: its documents in a new shuffled order every epoch, cut into fixed-length samples.

A source's split is the documents of its shards (in path order), N of them holding T tokens. Epoch e lays them
end to end in the order pi_e (pi_e(k) is the k-th document of the epoch) and cuts that token stream into samples
of seq_len + 1 tokens: sample j is stream tokens [j*seq_len, j*seq_len + seq_len] (neighbours share one token),
so a sample packs whole and cut documents across their boundaries, and every epoch has the same
(T - 1) // seq_len samples whatever the order.

pi_e is a keyed pseudo-random bijection of [0, N) (`_native.keyed_permutation`, a Feistel network keyed by the
run seed, the source name and e), evaluated at any position on its own: no order of size N is ever built, and
documents that are neighbours in the pack are scattered over the epoch. The price is finding sample j: its first
token lies in the document where the lengths of pi_e(0), pi_e(1), ... first pass j*seq_len. So each epoch is
cut into blocks of BLOCK consecutive positions, and the token count at the end of every block reached so far is
kept (8 bytes per BLOCK documents), found by evaluating pi_e and the documents' lengths block after block.
Training reads a source's samples in increasing order, so this walk advances with it, about one block per BLOCK
documents trained on. A checkpoint records where each walk stood (`walk_position`), so a resumed run starts
there (`resume_walk`); from the counter alone, reaching sample j walks once from the start of j's epoch (timed
in benchmarks/bench_data.py). The documents of at most MAX_BLOCKS blocks are held, shared by all sources.
With shuffle off, pi_e is the identity: the pack's own order, every epoch.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable
import numpy as np

from pytrain.data import format as fmt
from pytrain.errors import PytrainError

BLOCK = 1024  # positions of an epoch's document order per block
MAX_BLOCKS = 256  # blocks whose documents stay in memory (16 KB each), all sources together
MAX_OPEN_SPLITS = 128  # pack splits kept mapped, 2 (chat: 3) open files each
MAX_WALK = 1024  # blocks evaluated at once while walking (the step doubles from 1 up to this)
EPOCHS_KEPT = 2  # epochs whose block ends each source keeps (a batch straddles at most two)


class LeastRecentlyUsed:
    """At most `limit` values, each made on first use; beyond the limit the least recently used is dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self._values: OrderedDict = OrderedDict()

    def get(self, key, make: Callable):
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = self._values[key] = make()
        if len(self._values) > self.limit:
            self._values.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._values)


class ReadCache:
    """What the sources of one mixture share: mapped pack splits (mapped on first use, without read-ahead since
    reads jump around, and unmapped least recently used first, so 10,000 shards never approach the usual limit of
    1,024 open files) and evaluated blocks of document order."""

    def __init__(self):
        self.files = LeastRecentlyUsed(MAX_OPEN_SPLITS)
        self.blocks = LeastRecentlyUsed(MAX_BLOCKS)


def document_order_key(seed: int, name: str, epoch: int) -> int:
    """The key of source `name`'s document order in `epoch` (a 64-bit integer)."""
    digest = hashlib.sha256(f"pytrain-documents:{seed}:{epoch}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SourceStream:
    """Samples of one source's split, epoch by epoch (see the module docstring)."""

    def __init__(self, source, split: str, seq_len: int, cache: ReadCache, seed: int = 0, shuffle: bool = True):
        self.name, self.label = source.name, source.label
        self.split, self.seq_len, self.seed, self.shuffle = split, seq_len, seed, shuffle
        self.cache, self.files = cache, cache.files
        self.shards = [s for s in source.shards if s.manifest["splits"].get(split, {}).get("tokens", 0) > 0]
        splits = [s.manifest["splits"][split] for s in self.shards]
        self.doc_starts = np.concatenate(([0], np.cumsum([int(s["documents"]) for s in splits], dtype=np.int64)))
        self.num_docs = int(self.doc_starts[-1])
        self.num_tokens = sum(int(s["tokens"]) for s in splits)
        self.samples_per_epoch = (self.num_tokens - 1) // seq_len if self.num_tokens >= 2 else 0
        self.has_mask = any(s.manifest.get("loss_mask") for s in self.shards)
        self.checksum = source.checksum(split)
        self._ends: OrderedDict[int, array] = OrderedDict()  # epoch -> token count at the end of each block reached
        self._known: dict[int, int] = {}  # epoch -> its first block whose end is known (where a resumed walk began)

    @property
    def walked_documents(self) -> int:
        """Documents whose place and length the walk has evaluated, in the epochs kept."""
        return sum(min((len(ends) - self._known.get(e, 0)) * BLOCK, self.num_docs) for e, ends in self._ends.items())

    # ------------------------------------------------------------------ documents
    def _split(self, k: int) -> fmt.PackedSplit:
        shard = self.shards[k]
        return self.files.get((shard.path, self.split),
                              lambda: fmt.open_split(shard.path, self.split, shard.manifest, random_access=True))

    def _shard_of(self, docs: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.doc_starts, docs, side="right") - 1

    def document_order(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """pi_epoch(positions): the documents (numbered across the shards) at those positions of the epoch."""
        from pytrain import _native

        if not self.shuffle:
            return positions
        return _native.keyed_permutation(positions, self.num_docs, document_order_key(self.seed, self.name, epoch))

    def _by_shard(self, docs: np.ndarray):
        """(shard k, which of `docs` are in it, their numbers inside it) for every shard that `docs` touch."""
        if len(self.shards) == 1:
            yield 0, slice(None), docs
            return
        shard_of = self._shard_of(docs)
        order = np.argsort(shard_of, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(shard_of, minlength=len(self.shards)))))
        for k in np.flatnonzero(np.diff(bounds)).tolist():
            chosen = order[bounds[k]:bounds[k + 1]]
            yield k, chosen, docs[chosen] - self.doc_starts[k]

    def _lengths(self, docs: np.ndarray) -> np.ndarray:
        """Token counts of documents `docs`."""
        lengths = np.empty(len(docs), dtype=np.int64)
        for k, chosen, local in self._by_shard(docs):
            offsets = self._split(k).offsets
            lengths[chosen] = offsets[local + 1] - offsets[local]
        return lengths

    def _evaluate(self, epoch: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Documents and lengths at positions [first*BLOCK, (first+count)*BLOCK) of the epoch's order."""
        positions = np.arange(first * BLOCK, min((first + count) * BLOCK, self.num_docs), dtype=np.int64)
        docs = self.document_order(epoch, positions)
        return docs, self._lengths(docs)

    # ------------------------------------------------------------------ blocks
    def _block_ends(self, epoch: int) -> array:
        if epoch not in self._ends:
            self._ends[epoch] = array("q")
            if len(self._ends) > EPOCHS_KEPT:
                self._known.pop(self._ends.popitem(last=False)[0], None)
        return self._ends[epoch]

    def _block_of(self, epoch: int, position: int) -> int:
        """The block of the epoch holding stream token `position` (< num_tokens), walking the order as needed."""
        ends = self._block_ends(epoch)
        known = self._known.get(epoch, 0)
        if known and position < ends[known - 1]:  # before where a resumed walk began: walk from the start
            del ends[:]
            del self._known[epoch]
        step = 1
        while not ends or ends[-1] <= position:
            first = len(ends)
            docs, lengths = self._evaluate(epoch, first, step)
            sums = np.add.reduceat(lengths, np.arange(0, len(lengths), BLOCK))
            ends.extend((np.cumsum(sums) + (ends[-1] if ends else 0)).tolist())
            last = len(ends) - 1  # the block the walk ends on is the one read next
            self.cache.blocks.get(self._block_key(epoch, last), lambda: self._block_arrays(
                ends, last, docs[(last - first) * BLOCK:], lengths[(last - first) * BLOCK:]))
            step = min(2 * step, MAX_WALK)
        return bisect.bisect_right(ends, position)

    def walk_position(self, epoch: int, j: int) -> list[int]:
        """[block, tokens before it] of sample j's first token in the epoch: where a walk to it can start again
        (`resume_walk`), so that a resumed run need not walk the epoch from its start."""
        b = self._block_of(epoch, j * self.seq_len)
        return [b, self._ends[epoch][b - 1] if b else 0]

    def resume_walk(self, epoch: int, block: int, before: int) -> None:
        """Start the epoch's walk at `block`, `before` stream tokens in (a `walk_position` saved with a checkpoint),
        unless the walk already got there. The ends of the blocks before it are unknown: they read as `before`,
        which keeps the bisect right for every position from there on (earlier ones walk from the start)."""
        if not (0 <= block and block * BLOCK < self.num_docs and 0 <= before < self.num_tokens):
            raise PytrainError(f"cannot resume the data position: the checkpoint's walk position {[block, before]} "
                               f"is outside {self.label}'s {self.num_docs} documents / {self.num_tokens} tokens")
        ends = self._block_ends(epoch)
        if block and len(ends) < block:
            ends[:] = array("q", [before]) * block
            self._known[epoch] = block

    def _block_key(self, epoch: int, b: int) -> tuple:
        return self.name, self.split, self.seed, self.shuffle, epoch, b

    def _block(self, epoch: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block b of the epoch (already reached): its documents and the stream positions where each starts and ends."""
        ends = self._block_ends(epoch)
        return self.cache.blocks.get(self._block_key(epoch, b),
                                     lambda: self._block_arrays(ends, b, *self._evaluate(epoch, b, 1)))

    @staticmethod
    def _block_arrays(ends: array, b: int, docs: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
        doc_ends = np.cumsum(lengths) + (ends[b - 1] if b else 0)
        return docs, doc_ends - lengths, doc_ends

    def _documents_between(self, epoch: int, first: int, end: int) -> tuple[np.ndarray, ...]:
        """The documents holding stream tokens [first, end) of the epoch: their numbers, starts and ends."""
        parts, position = [], first
        while position < end:
            docs, starts, ends = self._block(epoch, self._block_of(epoch, position))
            lo, hi = np.searchsorted(ends, position, side="right"), np.searchsorted(starts, end, side="left")
            parts.append((docs[lo:hi], starts[lo:hi], ends[lo:hi]))
            position = int(ends[-1])
        return tuple(np.concatenate(column) for column in zip(*parts))

    # ------------------------------------------------------------------ samples
    def windows(self, epoch: int, j: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Samples j .. j + count - 1 of the epoch (count >= 1, all in the epoch), read at once: each one's
        seq_len + 1 stream tokens, for each token the document piece it is in (numbered along the stream, empty
        documents skipped) and its offset in that document, and their loss mask when any shard has one; each
        [count, seq_len + 1]."""
        first, end = j * self.seq_len, (j + count) * self.seq_len + 1
        docs, starts, ends = self._documents_between(epoch, first, end)
        lo, hi = np.maximum(starts, first), np.minimum(ends, end)
        kept = hi > lo  # empty documents hold no piece
        docs, starts, skip, take = docs[kept], starts[kept], (lo - starts)[kept], (hi - lo)[kept]
        place = np.cumsum(take) - take  # where each piece goes in the range
        tokens = np.empty(end - first, dtype=np.int64)
        mask = np.empty(end - first, dtype=np.uint8) if self.has_mask else None
        for k, chosen, local in self._by_shard(docs):
            data = self._split(k)
            source, target = _ranges(data.offsets[local] + skip[chosen], take[chosen]), _ranges(place[chosen], take[chosen])
            tokens[target] = data.tokens[source]
            if mask is not None:
                mask[target] = 1 if data.mask is None else data.mask[source]
        piece = np.repeat(np.arange(len(take)), take)
        offset = np.arange(first, end) - starts[piece]
        rows = np.arange(count)[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        return tokens[rows], piece[rows], offset[rows], None if mask is None else mask[rows]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The integers of [starts[i], starts[i] + counts[i]) for every i, concatenated."""
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
