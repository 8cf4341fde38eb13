"""PackedDataset: samples match the packed stream, sharding covers every sample once, resume is exact."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.data.dataset import PackedDataset
from pytrain.errors import PytrainError


@pytest.fixture(scope="module")
def packed(tmp_path_factory, corpus_jsonl, tokenizer_path):
    out = tmp_path_factory.mktemp("ds") / "packed"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--val-docs", 5)
    return out


def reference_samples(data, doc_order, seq_len):
    """Lay documents end to end in `doc_order` and cut seq_len+1 windows with stride seq_len."""
    stream = np.concatenate([data.document(int(d)) for d in doc_order]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum([len(data.document(int(d))) for d in doc_order])])
    n = (len(stream) - 1) // seq_len
    return [stream[s * seq_len : s * seq_len + seq_len + 1] for s in range(n)], starts


@pytest.mark.parametrize("shuffle", [False, True])
def test_samples_match_the_document_stream(packed, shuffle):
    seq_len = 37
    ds = PackedDataset(packed, seq_len, seed=3, shuffle=shuffle)
    epoch = ds._epoch(0)
    windows, doc_starts = reference_samples(ds.data, epoch.doc_order, seq_len)
    assert len(ds) == len(windows)
    assert sorted(epoch.sample_order.tolist()) == list(range(len(windows)))
    for g in range(0, len(ds), 7):
        s = int(epoch.sample_order[g])
        sample = ds[g]
        np.testing.assert_array_equal(sample["input_ids"], windows[s][:-1])
        np.testing.assert_array_equal(sample["labels"], windows[s][1:])
        # position ids restart at every document start inside the window; segment ids count documents
        absolute = s * seq_len + np.arange(seq_len)
        doc_of = np.searchsorted(doc_starts, absolute, side="right") - 1
        segment = doc_of - doc_of[0]
        position = np.where(segment == 0, np.arange(seq_len), absolute - doc_starts[doc_of])
        np.testing.assert_array_equal(sample["segment_ids"], segment)
        np.testing.assert_array_equal(sample["position_ids"], position)


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


def test_epochs_reshuffle_and_seeds_differ(packed):
    ds = PackedDataset(packed, 32, seed=1)
    n = len(ds)
    assert not np.array_equal(ds[0]["input_ids"], ds[n]["input_ids"]) or not np.array_equal(ds[1]["input_ids"], ds[n + 1]["input_ids"])
    other = PackedDataset(packed, 32, seed=2)
    assert any(not np.array_equal(ds[g]["input_ids"], other[g]["input_ids"]) for g in range(5))


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
