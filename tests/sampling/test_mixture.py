"""Weighted mixtures (`data.mixture`): the C++ blending index and keyed permutation against independent
references, samples against the sources' token streams, shares, upsampling, lazy file opening, exact resume
(2 ranks onto 1, through torchrun), per-source logging, and a one-line error for every bad entry."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml

from _sampling import document_order, documents_seen, epoch_windows, write_pack
from _train_fixtures import BASE, ENV, losses, packed_data, torchrun, train  # noqa: F401
from pytrain import _native
from pytrain.config import load_config
from pytrain.data import format as fmt
from pytrain.sampling.mixture import CHUNK, BlendedDataset, Mixture, resolve_sources, weight_units
from pytrain.sampling.source_stream import MAX_OPEN_SPLITS
from pytrain.errors import PytrainError


# ----------------------------------------------------------------------------- synthetic packs
def random_docs(rng, count: int, base: int) -> list[np.ndarray]:
    """Documents whose tokens name their source (base) so every sample can be traced."""
    return [base + rng.integers(0, 100, size=int(rng.integers(1, 40))) for _ in range(count)]


def entry(name, path, weight):
    return {"name": name, "path": str(path), "weight": weight}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """web: 3 shards (a sharded-pack folder), code: one pack, tiny: a few tokens (upsampled)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("mixture")
    web = [random_docs(rng, 60, 100) for _ in range(3)]
    for k, docs in enumerate(web):
        write_pack(root / "web" / f"shard-{k:05d}-of-00003", docs, random_docs(rng, 8, 100))
    code = random_docs(rng, 80, 300)
    write_pack(root / "code", code)
    tiny = random_docs(rng, 3, 500)
    write_pack(root / "tiny", tiny)
    return root, {"web": [d for docs in web for d in docs], "code": code, "tiny": tiny}


# ----------------------------------------------------------------------------- the native index
def reference_chunk(units: list[int], begin: int, end: int) -> tuple[list[int], list[int]]:
    """Exact quotas with Python ints; virtual-time order with Fractions."""
    total = sum(units)
    before = [u * begin // total for u in units]
    counts = [u * end // total - b for u, b in zip(units, before)]
    events = sorted((Fraction(2 * j + 1, 2 * n), s) for s, n in enumerate(counts) for j in range(n))
    taken = [0] * len(units)
    sources, indices = [], []
    for _, s in events:
        sources.append(s)
        indices.append(before[s] + taken[s])
        taken[s] += 1
    return sources, indices


@pytest.mark.parametrize("seed", range(4))
def test_blend_chunk_matches_reference(seed):
    rng = np.random.default_rng(seed)
    units = [int(u) for u in rng.integers(1, 1 << 40, size=int(rng.integers(1, 12)))]
    begin = int(rng.integers(0, 1 << 45))
    end = begin + int(rng.integers(0, 3000))
    before, sources, indices = _native.blend_chunk(np.array(units), begin, end)
    ref_sources, ref_indices = reference_chunk(units, begin, end)
    assert before.tolist() == [u * begin // sum(units) for u in units]
    assert sources.tolist() == ref_sources and indices.tolist() == ref_indices
    assert _native.blend_quotas(np.array(units), end).tolist() == [u * end // sum(units) for u in units]


def test_consecutive_chunks_continue_each_source():
    units = np.array([5, 3, 1, 1], dtype=np.int64)
    seen = [[] for _ in units]
    for c in range(4):
        _, sources, indices = _native.blend_chunk(units, c * 1000, (c + 1) * 1000)
        for s, i in zip(sources.tolist(), indices.tolist()):
            seen[s].append(i)
    assert all(indices == list(range(len(indices))) for indices in seen)
    assert [len(x) for x in seen] == [2000, 1200, 400, 400]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_keyed_permutation_is_a_keyed_bijection(n):
    a = _native.keyed_permutation(np.arange(n), n, 12345)
    assert sorted(a.tolist()) == list(range(n))
    assert (a == _native.keyed_permutation(np.arange(n), n, 12345)).all()
    if n >= 64:
        assert (a != np.arange(n)).mean() > 0.9 and (a != _native.keyed_permutation(np.arange(n), n, 7)).mean() > 0.9
    with pytest.raises(ValueError, match="outside"):
        _native.keyed_permutation(np.array([n]), n, 1)


# ----------------------------------------------------------------------------- the dataset
def open_mixture(root, weights=(0.5, 0.3, 0.2), seq_len=16, **kwargs) -> BlendedDataset:
    mixture = Mixture([entry("web", root / "web", weights[0]), entry("code", root / "code", weights[1]),
                       entry("tiny", root / "tiny", weights[2])])
    return mixture.train_dataset(seq_len, **kwargs)


def test_samples_are_windows_of_their_sources_shuffled_documents(sources):
    root, docs = sources
    ds = open_mixture(root)
    windows = {}
    for g in range(0, 400, 7):
        s, i = ds.locate(g)
        name, (epoch, j) = ds.names[s], divmod(i, ds.streams[s].samples_per_epoch)
        if (name, epoch) not in windows:
            order = document_order(len(docs[name]), 0, name, epoch)
            windows[name, epoch] = epoch_windows(docs[name], order, 16)
        expected = windows[name, epoch][j]
        sample = ds[g]
        assert sample["input_ids"].tolist() == expected[:-1].tolist()
        assert sample["labels"].tolist() == expected[1:].tolist()


def test_every_source_sees_each_of_its_documents_once_per_epoch(tmp_path):
    rng = np.random.default_rng(3)
    seq_len, bases = 16, {"a": (300, 1), "b": (120, 1001)}  # token base + d names document d of each source
    for name, (count, base) in bases.items():
        lengths = rng.integers(1, 6, size=count)
        lengths[-1] += seq_len - (lengths.sum() - 1) % seq_len  # the epoch's windows cover every token
        write_pack(tmp_path / name, [np.full(n, base + d) for d, n in enumerate(lengths)])
    ds = Mixture([entry("a", tmp_path / "a", 2), entry("b", tmp_path / "b", 1)]).train_dataset(seq_len, seed=5)
    windows = [[], []]
    g = 0
    while min(len(w) // stream.samples_per_epoch for w, stream in zip(windows, ds.streams)) < 3:
        sample = ds[g]
        windows[ds.locate(g)[0]].append(np.concatenate([sample["input_ids"], sample["labels"][-1:]]))
        g += 1
    for (count, base), got, stream in zip(bases.values(), windows, ds.streams):
        n = stream.samples_per_epoch
        epochs = [documents_seen(got[e * n:(e + 1) * n]) for e in range(3)]
        assert all(sorted(seen) == list(range(base, base + count)) for seen in epochs)
        assert len({tuple(seen) for seen in epochs}) == 3
        assert sum(abs(a - b) == 1 for a, b in zip(epochs[0], epochs[0][1:])) < 0.05 * count


def test_positions_restart_at_document_starts(tmp_path):
    write_pack(tmp_path / "a", [np.arange(1, 6), np.arange(10, 13)])  # shard 0: docs of 5 and 3 tokens
    write_pack(tmp_path / "b", [np.arange(20, 24)])                     # shard 1: one doc of 4 tokens
    mixture = Mixture([entry("only", tmp_path / "[ab]", 1)])
    ds = mixture.train_dataset(seq_len=11, shuffle=False)
    sample = ds[0]  # the whole stream: 12 tokens across both shards
    assert sample["input_ids"].tolist() == [1, 2, 3, 4, 5, 10, 11, 12, 20, 21, 22]
    assert sample["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2]
    assert sample["segment_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_shares_follow_weights_and_a_tiny_source_repeats(sources):
    root, _ = sources
    ds = open_mixture(root, weights=(5, 3, 2))
    for n in (10, 100, 1000, 5000):
        counts = ds.samples_by_source(n)
        assert counts.sum() == n
        assert np.abs(counts - n * np.array([0.5, 0.3, 0.2])).max() <= 2  # smooth: within ~1 sample of the share
        found = Counter(ds.locate(g)[0] for g in range(n))
        assert [found[s] for s in range(3)] == counts.tolist()
    tiny = ds.streams[2]
    assert tiny.samples_per_epoch < 20 and ds.progress()["epoch_by_source"]["tiny"] == 0
    ds.consumed = 1000
    assert ds.progress()["epoch_by_source"]["tiny"] == pytest.approx(200 / tiny.samples_per_epoch, abs=1e-3)
    # Each epoch of the tiny source is one pass over its documents, in an order that changes per epoch.
    slots = [tuple(ds[g]["input_ids"]) for g in range(1000) if ds.locate(g)[0] == 2]
    per_epoch = [tuple(slots[e * tiny.samples_per_epoch:(e + 1) * tiny.samples_per_epoch]) for e in range(3)]
    assert len(set(per_epoch)) == 3


def test_chunk_boundaries_and_far_positions(sources):
    root, _ = sources
    ds = open_mixture(root, weights=(1, 1, 1))
    for g in (CHUNK - 2, CHUNK - 1, CHUNK, CHUNK + 1, 10**12 + 5):
        s, i = ds.locate(g)
        counts = ds.samples_by_source(g)
        assert i == counts[s]  # sample g is the next one of its source
        assert ds.samples_by_source(g + 1)[s] == counts[s] + 1


def test_ranks_split_each_global_batch_and_resume_across_world_sizes(sources):
    root, _ = sources
    one = open_mixture(root)
    two = [open_mixture(root, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole = one.next_batch(4)["input_ids"]
        halves = [ds.next_batch(2)["input_ids"] for ds in two]
        assert (np.concatenate(halves) == whole.numpy()).all()
    resumed = open_mixture(root)
    resumed.load_state_dict(two[0].state_dict())
    assert (resumed.next_batch(4)["input_ids"] == one.next_batch(4)["input_ids"]).all()
    with pytest.raises(PytrainError, match="cannot resume the data position: checkpoint has sources"):
        open_mixture(root, weights=(1, 1, 1)).load_state_dict(one.state_dict())


def test_thousands_of_shards_stay_under_a_low_open_file_limit(tmp_path):
    """400 shards (800 files) read by a process allowed 300 open files: shards are opened lazily, and only
    a bounded number stay open."""
    rng = np.random.default_rng(1)
    for k in range(400):
        write_pack(tmp_path / "many" / f"shard-{k:05d}-of-00400", random_docs(rng, 3, 0))
    script = f"""
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (300, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from pytrain.sampling.mixture import Mixture
ds = Mixture([{{"name": "many", "path": {str(tmp_path / 'many')!r}, "weight": 1}}]).train_dataset(8)
n = ds.streams[0].samples_per_epoch
seen = set(tuple(ds[g]["input_ids"].tolist()) for g in range(2 * n))
print(n, len(seen), len(ds.streams[0].files))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    n, distinct, still_open = map(int, proc.stdout.split())
    assert distinct >= n - 1 and still_open <= MAX_OPEN_SPLITS


# ----------------------------------------------------------------------------- bad input
def config_error(tmp_path, mixture, **data) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"mixture": mixture, **data}}))
    with pytest.raises(PytrainError) as error:
        load_config(path)
    return str(error.value)


def test_bad_config_entries(tmp_path, sources):
    root, _ = sources
    ok = entry("web", root / "web", 1)
    assert "duplicate name \"web\"" in config_error(tmp_path, [ok, entry("web", root / "code", 1)])
    assert "data.mixture[1] (code): weight must be a number > 0, got 0" in config_error(
        tmp_path, [ok, entry("code", root / "code", 0)])
    assert "weight must be a number > 0, got -1" in config_error(tmp_path, [entry("x", root, -1)])
    assert 'data.mixture[0]: unknown key "wieght" (did you mean "weight"?)' in config_error(
        tmp_path, [{"name": "x", "path": "p", "wieght": 1}])
    assert "data.mixture[0]: missing weight" in config_error(tmp_path, [{"name": "x", "path": "p"}])
    assert "not both" in config_error(tmp_path, [ok], path=str(root / "code"))
    assert "must be a mapping" in config_error(tmp_path, ["packs/web"])
    assert "\n" not in config_error(tmp_path, [ok, entry("web", root / "code", 1)])


def test_bad_sources(tmp_path, sources):
    root, _ = sources
    with pytest.raises(PytrainError, match=r'data.mixture\[1\] \(code\): path ".*nothing-\*" matches nothing'):
        resolve_sources([entry("web", root / "web", 1), entry("code", root / "nothing-*", 1)])
    write_pack(tmp_path / "other", random_docs(np.random.default_rng(2), 5, 0), tokenizer="tok-b")
    with pytest.raises(PytrainError, match=r"data.mixture\[1\] \(other\): .*other was packed with another tokenizer "
                                           r".*than data.mixture\[0\] \(code\)"):
        resolve_sources([entry("code", root / "code", 1), entry("other", tmp_path / "other", 1)])
    with pytest.raises(PytrainError, match=r"data.mixture\[2\] \(tiny\): the train split has \d+ tokens, too few for "
                                           r"one sample of seq_len 512"):
        open_mixture(root, seq_len=512)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "shard-00000-of-00002").symlink_to(root / "web" / "shard-00000-of-00003")
    with pytest.raises(PytrainError, match=r"1 of 2 shards are missing or unfinished .*shard-00001-of-00002"):
        resolve_sources([entry("half", tmp_path / "partial", 1)])
    with pytest.raises(PytrainError, match=r"data.mixture\[0\] \(plain\): .* is not a pack"):
        resolve_sources([entry("plain", tmp_path, 1)])
    assert weight_units([1, 1]).tolist() == [1 << 39, 1 << 39]


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def mixture_config(tmp_path_factory, packed_data, corpus_jsonl):
    """web: the corpus pack (with a val split); code: the same corpus re-packed as 2 shards without one."""
    root = tmp_path_factory.mktemp("mixture_run")
    tokenizer = packed_data / "tokenizer.json"
    for k in range(2):
        subprocess.run([sys.executable, "-m", "pytrain", "pack", str(corpus_jsonl), "--tokenizer", str(tokenizer),
                        "--out", str(root / "code"), "--shard", f"{k}/2"], check=True, capture_output=True, env=ENV)
    config = json.loads(json.dumps(BASE))
    config["data"]["mixture"] = [entry("web", packed_data, 3.0), entry("code", root / "code", 1.0)]
    config["train"].update(steps=4, eval_every=2)
    config["checkpoint"]["every"] = 2
    config["logging"].update(sample_every=0)
    path = root / "mixture.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_mixture_training_logs_per_source_and_resumes_on_one_rank_from_two(mixture_config, packed_data, tmp_path):
    two = tmp_path / "two"
    torchrun(mixture_config, f"train.run_dir={two}")
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    last = train_rows[-1]
    assert last["tokens_by_source"]["web"] + last["tokens_by_source"]["code"] == last["tokens"] == 4 * 8 * 64
    assert last["tokens_by_source"]["web"] / last["tokens"] == pytest.approx(0.75, abs=0.03)
    assert 0 < last["epoch_by_source"]["code"] < 1
    eval_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in eval_rows] == [2, 4]
    assert all(list(r["val_loss_by_source"]) == ["web"] and r["val_loss"] == r["val_loss_by_source"]["web"]
               for r in eval_rows)
    log = (two / "train.log").read_text()
    assert "note: data.mixture[1] (code) has no validation split: not evaluated on its own" in log
    for name, path, share in (("web", packed_data, 3 / (3 + 1)), ("code", mixture_config.parent / "code", 1 / (3 + 1))):
        (shown,) = [line for line in log.splitlines() if f"data.mixture {name}:" in line]  # once, at start-up
        assert f"{name}: {share:.1%} of samples" in shown and str(path) in shown, shown

    one = tmp_path / "one"
    train(mixture_config, f"train.run_dir={one}", f"checkpoint.resume={two}", "checkpoint.resume_step=2")
    got, expected = losses(one), losses(two)
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5)
    resumed = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in resumed if "loss" in r][-1]["tokens_by_source"] == last["tokens_by_source"]

    pytest.importorskip("matplotlib")
    from pytrain.plot import plot_runs

    png = plot_runs([str(two)]).read_bytes()
    assert png[12:16] == b"IHDR" and struct.unpack(">II", png[16:24]) == (1500, 1600)  # + the per-source row, + the evaluation row (val_bpb)


def test_tensorboard_and_wandb_get_one_scalar_per_source(tmp_path):
    from pytrain.config import LoggingSection
    from pytrain.train.log import RunLogger

    class Recorder:
        def __init__(self):
            self.rows = []

        def log(self, row, step):
            self.rows.append((step, row))

    logger = RunLogger(tmp_path, LoggingSection(progress="none", tensorboard=False), enabled=True, total_steps=2)
    logger._wandb = Recorder()
    logger.log_eval({"step": 2, "tokens": 64, "val_loss": 2.5, "val_ppl": 12.2,
                     "val_loss_by_source": {"web": 2.0, "code": 3.0}})
    assert logger._wandb.rows == [(2, {"val/val_loss": 2.5, "val/val_ppl": 12.2, "val/val_loss_by_source/web": 2.0,
                                       "val/val_loss_by_source/code": 3.0})]
    logger._wandb = None
    logger.close()
    assert "val_loss 2.5000 | val_ppl 12.20 | web 2.0000 | code 3.0000" in (tmp_path / "train.log").read_text()
