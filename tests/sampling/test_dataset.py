"""PackedDataset (data.path, a mixture of one source): samples are windows of the documents in a per-epoch shuffled
order (checked against a plain-Python reference of the documented order), each document once per epoch, neighbours
scattered, sharding covers every sample once, resume is exact from any sample, older resume states are handled."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from _sampling import document_order, documents_seen, epoch_windows, write_pack
from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.sampling import source_stream
from pytrain.sampling.dataset import PackedDataset
from pytrain.sampling.mixture import PATH_SOURCE
from pytrain.errors import PytrainError


@pytest.fixture(scope="module")
def packed(tmp_path_factory, corpus_jsonl, tokenizer_path):
    out = tmp_path_factory.mktemp("ds") / "packed"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--val-docs", 5)
    return out


def pack_documents(path, split="train") -> list[np.ndarray]:
    data = fmt.open_split(path, split)
    return [data.document(d) for d in range(data.num_docs)]


def check_sample(sample, window, doc_starts, s, seq_len):
    """input_ids/labels from the window; position ids restart at every document start inside it, segment ids count
    its documents (doc_starts: the stream position where each document of the epoch starts)."""
    np.testing.assert_array_equal(sample["input_ids"], window[:-1])
    np.testing.assert_array_equal(sample["labels"], window[1:])
    absolute = s * seq_len + np.arange(seq_len)
    doc_of = np.searchsorted(doc_starts, absolute, side="right") - 1
    segment = doc_of - doc_of[0]
    position = np.where(segment == 0, np.arange(seq_len), absolute - doc_starts[doc_of])
    np.testing.assert_array_equal(sample["segment_ids"], segment)
    np.testing.assert_array_equal(sample["position_ids"], position)


@pytest.mark.parametrize("shuffle", [False, True])
def test_samples_are_windows_of_the_epochs_document_order(packed, shuffle):
    seq_len, seed = 37, 3
    docs = pack_documents(packed)
    ds = PackedDataset(packed, seq_len, seed=seed, shuffle=shuffle)
    for epoch in (0, 1):
        order = document_order(len(docs), seed, PATH_SOURCE, epoch, shuffle)
        windows = epoch_windows(docs, order, seq_len)
        starts = np.concatenate([[0], np.cumsum([len(docs[d]) for d in order])])
        assert len(ds) == len(windows)
        for s in range(0, len(windows), 5):
            check_sample(ds[epoch * len(ds) + s], windows[s], starts, s, seq_len)


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_batch_is_read_at_once_and_each_row_is_its_sample(packed, shuffle):
    """get_batch reads consecutive samples as one window: every row is still its own sample (positions and
    segments restart per row), also for batches across an epoch's end and across walk blocks."""
    seq_len, seed = 37, 3
    docs = pack_documents(packed)
    ds = PackedDataset(packed, seq_len, seed=seed, shuffle=shuffle)
    references = {}
    for epoch in (0, 1):
        order = document_order(len(docs), seed, PATH_SOURCE, epoch, shuffle)
        references[epoch] = (epoch_windows(docs, order, seq_len),
                             np.concatenate([[0], np.cumsum([len(docs[d]) for d in order])]))
    n = len(ds)
    for indices in (range(1), range(7), range(3, 19), range(n - 5, n + 4), range(2 * n - 4, 2 * n),
                    [4, n + 5, 6, 7, n + 8]):  # any samples: neighbours in the stream, not in the epoch, are not a run
        batch = ds.get_batch(indices)
        assert all(rows.shape == (len(indices), seq_len) and rows.is_contiguous() for rows in batch.values())
        for row, g in enumerate(indices):
            windows, starts = references[g // len(ds)]
            check_sample({key: rows[row].numpy() for key, rows in batch.items()}, windows[g % len(ds)], starts,
                         g % len(ds), seq_len)


def id_pack(root, lengths) -> list[np.ndarray]:
    """A pack whose document d is len(d) copies of token d + 1, so every token names its document."""
    docs = [np.full(n, d + 1) for d, n in enumerate(lengths)]
    write_pack(root, docs)
    return docs


def test_each_document_once_per_epoch_scattered_and_reordered_every_epoch(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=3000).tolist()
    seq_len = 64
    lengths[-1] += seq_len - (sum(lengths) - 1) % seq_len  # the epoch's windows cover every token
    id_pack(tmp_path / "ids", lengths)
    ds = PackedDataset(tmp_path / "ids", seq_len, seed=11)
    n = len(ds)
    epochs = [documents_seen([np.concatenate([ds[e * n + j]["input_ids"], ds[e * n + j]["labels"][-1:]])
                              for j in range(n)]) for e in range(3)]
    for seen in epochs:
        assert sorted(seen) == list(range(1, len(lengths) + 1))  # every document exactly once
        adjacent = sum(abs(a - b) == 1 for a, b in zip(seen, seen[1:]))
        assert adjacent < 0.01 * len(seen)  # pack neighbours are no longer neighbours (in order: 100%)
    assert len({tuple(seen) for seen in epochs}) == 3  # a new order every epoch
    again = PackedDataset(tmp_path / "ids", seq_len, seed=11)
    assert all(np.array_equal(again[g]["input_ids"], ds[g]["input_ids"]) for g in range(0, 3 * n, 17))
    other = PackedDataset(tmp_path / "ids", seq_len, seed=12)
    assert sum(np.array_equal(other[g]["input_ids"], ds[g]["input_ids"]) for g in range(n)) < 0.05 * n


def test_walk_across_small_blocks_and_a_tiny_cache(tmp_path, monkeypatch):
    """Blocks of 3 documents, 2 cached: windows spanning many blocks, walks back and forth, still the reference."""
    monkeypatch.setattr(source_stream, "BLOCK", 3)
    monkeypatch.setattr(source_stream, "MAX_BLOCKS", 2)
    monkeypatch.setattr(source_stream, "MAX_WALK", 4)
    lengths = [0, 5, 1, 0, 0, 7, 2, 1, 1, 3, 0, 9, 4, 1, 6, 2, 2, 8, 1, 1]  # empty documents too
    docs = id_pack(tmp_path / "ids", lengths)
    seq_len = 11
    ds = PackedDataset(tmp_path / "ids", seq_len, seed=4)
    for epoch in (0, 1):
        windows = epoch_windows(docs, document_order(len(docs), 4, PATH_SOURCE, epoch), seq_len)
        for s in [*range(len(windows)), *reversed(range(len(windows)))]:
            assert ds[epoch * len(ds) + s]["input_ids"].tolist() == windows[s][:-1].tolist()
        stream = np.concatenate([w[:-1] for w in windows] + [windows[-1][-1:]])  # a whole epoch as one batch:
        starts = np.concatenate([[0], np.flatnonzero(np.diff(stream)) + 1])  # its documents (tokens name them)
        batch = ds.get_batch(range(epoch * len(ds), (epoch + 1) * len(ds)))  # one window over many blocks
        for row, window in enumerate(windows):
            check_sample({key: rows[row].numpy() for key, rows in batch.items()}, window, starts, row, seq_len)


@pytest.mark.parametrize("world_size, batch_size", [(1, 4), (2, 3), (3, 5)])
def test_sharding_covers_every_sample_exactly_once(packed, world_size, batch_size):
    seq_len = 64
    shards = [PackedDataset(packed, seq_len, rank=r, world_size=world_size, seed=9) for r in range(world_size)]
    n = len(shards[0])
    steps = n // (world_size * batch_size)
    seen = []
    for _ in range(steps):
        for ds in shards:
            batch = ds.next_batch(batch_size)
            seen += [tuple(row) for row in batch["input_ids"].tolist()]
    consumed = steps * world_size * batch_size
    assert consumed > n - world_size * batch_size  # the steps cover the epoch up to one global batch
    expected = [tuple(shards[0][g]["input_ids"].tolist()) for g in range(consumed)]
    assert Counter(seen) == Counter(expected)  # every sample once, none twice (as a multiset: texts repeat)


def test_resume_is_exact_even_with_another_world_size(packed):
    full = PackedDataset(packed, 32, seed=5)
    expected = [full.next_batch(4)["input_ids"] for _ in range(len(full) // 4 + 3)]  # crosses an epoch
    first = PackedDataset(packed, 32, seed=5)
    for _ in range(5):
        first.next_batch(4)
    state = first.state_dict()
    resumed = [PackedDataset(packed, 32, seed=5, rank=r, world_size=2) for r in range(2)]
    for ds in resumed:
        ds.load_state_dict(state)
    for step in range(5, len(expected)):
        halves = [ds.next_batch(2)["input_ids"] for ds in resumed]
        np.testing.assert_array_equal(np.concatenate(halves), expected[step])
    assert resumed[0].epoch >= 1 and resumed[0].state_dict() == resumed[1].state_dict()


def test_resume_at_any_sample_continues_identically(packed):
    full = PackedDataset(packed, 16, seed=8)
    n = len(full)
    stream = [full[g]["input_ids"] for g in range(2 * n)]
    for start in (1, 7, n - 3, n, n + 5):
        fresh = PackedDataset(packed, 16, seed=8)
        fresh.load_state_dict({**full.state_dict(), "consumed": start})
        got = fresh.next_batch(6)["input_ids"].numpy()
        np.testing.assert_array_equal(got, np.stack(stream[start:start + 6]))


def test_resume_starts_each_walk_where_the_checkpoint_left_it(tmp_path, monkeypatch):
    """The state carries where each source's walk of its document order stood: a resumed dataset starts there
    (walking few documents) and continues identically; a position before it walks from the start, still right."""
    monkeypatch.setattr(source_stream, "BLOCK", 4)
    lengths = np.random.default_rng(5).integers(0, 9, size=400).tolist()
    id_pack(tmp_path / "ids", lengths)
    ds = PackedDataset(tmp_path / "ids", 8, seed=2)
    n = len(ds)
    expected = [ds[g]["input_ids"].tolist() for g in range(2 * n)]
    for start in (n // 2, n + n // 3):
        ds.consumed = start
        resumed = PackedDataset(tmp_path / "ids", 8, seed=2, rank=1, world_size=2)
        resumed.load_state_dict(ds.state_dict())
        assert resumed.next_batch(3)["input_ids"].tolist() == expected[start + 3:start + 6]
        walked_from_start = PackedDataset(tmp_path / "ids", 8, seed=2, rank=1, world_size=2)
        walked_from_start.consumed = start  # the counter alone: the walk starts at the epoch's start
        assert walked_from_start.next_batch(3)["input_ids"].tolist() == expected[start + 3:start + 6]
        assert resumed.streams[0].walked_documents <= 8 * 4 < 80 <= walked_from_start.streams[0].walked_documents
        assert resumed[start - 7]["input_ids"].tolist() == expected[start - 7]
    assert ds.state_dict()["walks"]["at"]["data"][0] == 1  # the position in epoch 1


def test_older_resume_states(packed):
    """Before samples were cut from shuffled documents: an unshuffled data.path state continues exactly (the order
    was the pack's then too), a shuffled one is refused in one line."""
    seq_len = 24
    ds = PackedDataset(packed, seq_len, shuffle=False)
    older = {"consumed": 10, "seed": 0, "seq_len": seq_len, "split": "train", "shuffle": False,
             "samples_per_epoch": len(ds)}
    ds.load_state_dict(older)
    windows = epoch_windows(pack_documents(packed), list(range(len(pack_documents(packed)))), seq_len)
    assert ds.next_batch(2)["input_ids"].tolist() == [w[:-1].tolist() for w in windows[10:12]]
    with pytest.raises(PytrainError, match="cannot resume the data position: checkpoint has sources"):
        ds.load_state_dict({**older, "samples_per_epoch": len(ds) + 1})
    with pytest.raises(PytrainError) as refused:
        PackedDataset(packed, seq_len).load_state_dict({**older, "shuffle": True})
    assert "saved by an older pytrain" in str(refused.value) and "\n" not in str(refused.value)


def test_val_split_and_errors(packed, tmp_path):
    val = PackedDataset(packed, 16, split="val", shuffle=False)
    data = fmt.open_split(packed, "val")
    assert val[0]["input_ids"].tolist() == data.tokens[:16].astype(np.int64).tolist()
    with pytest.raises(PytrainError, match="too few for one sample"):
        PackedDataset(packed, 10**9, split="val")
    with pytest.raises(PytrainError, match="cannot resume the data position"):
        PackedDataset(packed, 16).load_state_dict(PackedDataset(packed, 32).state_dict())
    with pytest.raises(PytrainError, match="no manifest.json"):
        PackedDataset(tmp_path, 16)


def _val_windows_read_with_numpy(pack, seq_len: int) -> list[np.ndarray]:
    """The val split's samples in pack order, from the files alone: index.idx's 32-byte header and int64 document
    offsets, tokens.bin's ids laid end to end, cut into windows of seq_len + 1 tokens that share one token."""
    header = np.fromfile(pack / "val" / "index.idx", dtype=np.uint8, count=32)
    width, docs = int(header[12:16].view("<u4")[0]), int(header[16:24].view("<u8")[0])
    offsets = np.fromfile(pack / "val" / "index.idx", dtype="<i8", offset=32)
    tokens = np.fromfile(pack / "val" / "tokens.bin", dtype={2: "<u2", 4: "<u4"}[width]).astype(np.int64)
    assert len(offsets) == docs + 1 and offsets[-1] == len(tokens)
    return [tokens[j * seq_len:(j + 1) * seq_len + 1] for j in range((len(tokens) - 1) // seq_len)]


@pytest.mark.parametrize("mixture", [False, True])
def test_training_evaluates_on_the_val_split_in_pack_order(packed, mixture):
    """What a run evaluates on (data.path, or each source of data.mixture) is the val split as packed, never
    shuffled like training: the same tokens at every evaluation, comparable between runs and seeds."""
    import torch

    from pytrain.config import DataSection
    from pytrain.train.data import RunData
    from pytrain.train.distributed import Distributed

    seq_len, micro, batches = 16, 3, 4
    section = (DataSection(mixture=[{"name": "a", "path": str(packed), "weight": 1.0},
                                    {"name": "b", "path": str(packed), "weight": 3.0}]) if mixture else
               DataSection(path=str(packed)))
    evaluator = RunData(section).evaluator(seq_len, Distributed(0, 1, 0, 1, torch.device("cpu")), micro, batches)
    datasets = [e.dataset for _, e in evaluator.evaluators.values()] if mixture else [evaluator.dataset]
    windows = _val_windows_read_with_numpy(packed, seq_len)
    assert len(windows) >= micro * batches
    for dataset in datasets:
        got = torch.cat([dataset.next_batch(micro)["input_ids"] for _ in range(batches)])
        assert got.tolist() == [w[:-1].tolist() for w in windows[:micro * batches]]


def test_a_path_may_be_a_glob_or_a_folder_of_shards(tmp_path):
    """data.path is a mixture of one source, so it takes what a mixture entry takes: shards are one source."""
    first = id_pack(tmp_path / "shards" / "shard-00000-of-00002", [3, 1, 4, 1, 5])
    second = id_pack(tmp_path / "shards" / "shard-00001-of-00002", [9, 2, 6])
    docs, seq_len = first + second, 4
    for path in (tmp_path / "shards", tmp_path / "shards" / "shard-*"):
        ds = PackedDataset(path, seq_len, seed=1)
        windows = epoch_windows(docs, document_order(len(docs), 1, PATH_SOURCE, 0), seq_len)
        assert [ds[j]["input_ids"].tolist() for j in range(len(ds))] == [w[:-1].tolist() for w in windows]
