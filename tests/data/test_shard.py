"""`pytrain pack --shard K/N`: N shards hold exactly the unsharded pack's documents, balanced, idempotent,
resumable after a kill, from any input kind; and every bad --shard gets a one-line error."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.data.pack import PackOptions, pack
from pytrain.data.shard import ShardSpec, pack_shard, parse_shard, plan_shard
from pytrain.errors import PytrainError


def documents_of(pack_dir: Path) -> Counter:
    """Every document of a pack (train and val) as a tuple of token ids, with multiplicity."""
    manifest = fmt.read_manifest(pack_dir)
    found = Counter()
    for split in manifest["splits"]:
        data = fmt.open_split(pack_dir, split, manifest)
        found.update(tuple(data.document(d).tolist()) for d in range(data.num_docs))
    return found


def quiet(inputs, tokenizer, out, spec=None, **options):
    options = PackOptions(progress=False, threads=1, **options)
    if spec is None:
        pack(inputs, tokenizer, out, options)
    else:
        pack_shard(inputs, tokenizer, out, options, spec)


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, documents):
    """The corpus spread over a plain JSONL (most of it), a .jsonl.gz, a parquet file and a datasets folder."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("shard_inputs")
    docs = documents[:200]
    with open(root / "big.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": d}) + "\n" for d in docs[:120])
    with gzip.open(root / "small.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": d}) + "\n" for d in docs[120:140])
    pq.write_table(pa.table({"text": docs[140:170]}), root / "rows.parquet", row_group_size=7)
    datasets.Dataset.from_dict({"text": docs[170:200]}).save_to_disk(str(root / "arrow"))
    return [root / "big.jsonl", root / "small.jsonl.gz", root / "rows.parquet", root / "arrow"]


@pytest.mark.parametrize("count", [3, 5])
def test_shards_together_are_the_unsharded_pack(mixed_inputs, tokenizer_path, tmp_path, count):
    quiet(mixed_inputs, tokenizer_path, tmp_path / "whole", val_fraction=0.2)
    for k in range(count):
        quiet(mixed_inputs, tokenizer_path, tmp_path / "sharded", ShardSpec(k, count), val_fraction=0.2)
    shards = sorted((tmp_path / "sharded").iterdir())
    assert [p.name for p in shards] == [f"shard-{k:05d}-of-{count:05d}" for k in range(count)]
    union = Counter()
    for shard in shards:
        union += documents_of(shard)
        # Each shard is an ordinary pack whose val split holds floor(n * F) of its own n documents.
        assert run_cli("verify", shard).returncode == 0
        splits = fmt.read_manifest(shard)["splits"]
        n = splits["train"]["documents"] + splits["val"]["documents"]
        assert splits["val"]["documents"] == int(n * 0.2 + 1e-9)
    assert union == documents_of(tmp_path / "whole")


def test_one_big_jsonl_splits_evenly_at_line_starts(tmp_path):
    lines = [json.dumps({"text": "x" * (1 + (i * 37) % 300)}) + "\n" for i in range(2000)]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(lines))
    size, longest = path.stat().st_size, max(map(len, lines))
    starts = set(np.cumsum([0] + [len(line) for line in lines]).tolist())
    previous_end = 0
    for k in range(7):
        paths, parts = plan_shard([path], ShardSpec(k, 7))
        (part,) = parts
        assert part.start == previous_end and part.start in starts and part.end in starts
        assert abs((part.end - part.start) - size / 7) <= longest
        previous_end = part.end
    assert previous_end == size


def test_gz_files_go_whole_to_one_shard_and_an_empty_shard_says_so(tmp_path, tokenizer_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"part{i}.jsonl.gz")
        with gzip.open(paths[-1], "wt") as handle:
            handle.write(json.dumps({"text": f"document number {i}"}) + "\n")
    owners = [plan_shard(paths, ShardSpec(k, 4))[0] for k in range(4)]
    assert sorted(p for found in owners for p in found) == sorted(paths)
    empty = next(k for k, found in enumerate(owners) if not found)
    with pytest.raises(PytrainError, match=f"--shard {empty}/4: no input falls in this shard"):
        quiet(paths, tokenizer_path, tmp_path / "out", ShardSpec(empty, 4))


def test_rerun_skips_a_complete_shard_and_refuses_changed_inputs(mixed_inputs, tokenizer_path, tmp_path, capsys):
    inputs = mixed_inputs[:1]
    quiet(inputs, tokenizer_path, tmp_path / "out", ShardSpec(1, 2))
    manifest = tmp_path / "out" / "shard-00001-of-00002" / fmt.MANIFEST
    written = manifest.stat().st_mtime_ns
    capsys.readouterr()
    quiet(inputs, tokenizer_path, tmp_path / "out", ShardSpec(1, 2))
    assert "already packed from the same inputs and options; skipped" in capsys.readouterr().out
    assert manifest.stat().st_mtime_ns == written
    with pytest.raises(PytrainError, match="packed from other inputs or options; pass --overwrite"):
        quiet(inputs, tokenizer_path, tmp_path / "out", ShardSpec(1, 2), val_docs=3)
    quiet(inputs, tokenizer_path, tmp_path / "out", ShardSpec(1, 2), val_docs=3, overwrite=True)
    assert fmt.read_manifest(manifest.parent)["splits"]["val"]["documents"] == 3


def test_one_folder_holds_one_sharding(documents, tokenizer_path, tmp_path):
    """A 3-way sharding into a folder holding a 2-way one is refused (one line, nothing written); a folder holding
    two shardings anyway (moved there by hand), or shards of other inputs, is refused by readers, naming them."""
    from conftest import one_line_refusal, run_cli, snapshot

    from pytrain.sampling.mixture import Mixture

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[:60]))
    out = tmp_path / "out"
    for k in range(2):
        quiet([corpus], tokenizer_path, out, ShardSpec(k, 2))
    before = snapshot(tmp_path)
    line = one_line_refusal(run_cli("pack", corpus, "--tokenizer", tokenizer_path, "--out", out, "--shard", "0/3",
                                    check=False))
    assert f"{out}: already holds shard-00000-of-00002, a shard of a 2-way sharding" in line, line
    assert snapshot(tmp_path) == before
    for k in range(3):
        quiet([corpus], tokenizer_path, tmp_path / "three", ShardSpec(k, 3))
        (tmp_path / "three" / f"shard-0000{k}-of-00003").rename(out / f"shard-0000{k}-of-00003")
    with pytest.raises(PytrainError, match=f"data.path: {out} holds a 2-way and a 3-way `pytrain pack --shard` output "
                                           r"\(shard-00000-of-00002, shard-00000-of-00003\)"):
        Mixture.of_path(out)
    for k in range(3):
        shutil.rmtree(out / f"shard-0000{k}-of-00003")
    Mixture.of_path(out)  # one sharding again
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": d.upper()}) + "\n" for d in documents[:60]))
    quiet([other], tokenizer_path, out, ShardSpec(1, 2), overwrite=True)  # half of a re-pack of other inputs
    with pytest.raises(PytrainError, match=r"data.mixture\[0\] \(web\): .*shard-00001-of-00002 was packed from other "
                                           r"inputs, tokenizer or options than .*shard-00000-of-00002"):
        Mixture([{"name": "web", "path": str(out), "weight": 1.0}])


def test_a_killed_shard_reruns_alone(documents, tokenizer_path, tmp_path):
    path = tmp_path / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for copy in range(6):
            handle.writelines(json.dumps({"text": f"{copy} {d}"}) + "\n" for d in documents)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pytrain", "pack", str(path), "--tokenizer", str(tokenizer_path), "--out",
               str(out), "--threads", "1"]
    run_cli(*command[3:], "--shard", "0/2")
    victim = subprocess.Popen([*command, "--shard", "1/2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob(".shard-00001-of-00002.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert list(out.glob(".shard-00001-of-00002.tmp-*"))  # killed mid-pack
    assert not (out / "shard-00001-of-00002").exists()  # only hidden debris, which readers refuse
    rerun = [run_cli(*command[3:], "--shard", f"{k}/2").stdout for k in range(2)]
    assert "skipped" in rerun[0] and "skipped" not in rerun[1]
    total = sum(fmt.read_manifest(out / f"shard-{k:05d}-of-00002")["splits"]["train"]["documents"] for k in range(2))
    assert total == 6 * len(documents)
    assert run_cli("verify", out / "shard-00001-of-00002").returncode == 0


def test_errors_in_a_later_shard_name_the_files_line(tmp_path, tokenizer_path):
    lines = [json.dumps({"text": f"line {i}"}) for i in range(200)]
    lines[150] = "{not json"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PytrainError, match=rf"{path}:151: invalid JSON"):
        quiet([path], tokenizer_path, tmp_path / "out", ShardSpec(1, 2))


@pytest.mark.parametrize("environ, expected", [
    ({"RANK": "3", "WORLD_SIZE": "8"}, ShardSpec(3, 8)),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}, ShardSpec(2, 4)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "8"}, ShardSpec(4, 8)),
    ({"SLURM_ARRAY_TASK_ID": "10", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "5",
      "SLURM_ARRAY_TASK_COUNT": "3"}, ShardSpec(2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1", "WORLD_SIZE": "4"}, ShardSpec(5, 8)),
])
def test_shard_auto_reads_the_launcher(environ, expected):
    assert parse_shard("auto", environ) == expected
    assert parse_shard(f"{expected.index}/{expected.count}") == expected


@pytest.mark.parametrize("text, environ, message", [
    ("3/3", {}, "shard 3 of 3 is out of range; K is 0-based"),
    ("1/0", {}, "shard 1 of 0 is out of range"),
    ("a/b", {}, "expected K/N with 0 <= K < N"),
    ("2", {}, "expected K/N"),
    ("auto", {}, "neither torchrun's RANK/WORLD_SIZE nor a Slurm array"),
    ("auto", {"RANK": "x", "WORLD_SIZE": "2"}, r"\$RANK='x' is not an integer"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"}, "shard 9 of 4 is out of range"),
])
def test_bad_shard_specs(text, environ, message):
    with pytest.raises(PytrainError, match=message):
        parse_shard(text, environ)


def test_cli_shard_error_is_one_line(tmp_path, tokenizer_path, corpus_jsonl):
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID")}
    proc = subprocess.run([sys.executable, "-m", "pytrain", "pack", str(corpus_jsonl), "--tokenizer",
                           str(tokenizer_path), "--out", str(tmp_path / "o"), "--shard", "auto"],
                          capture_output=True, text=True, env=environ)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--shard auto" in proc.stderr


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 10**6), st.integers(1, 200), st.data())
def test_the_shard_holding_a_byte_is_computed_as_the_list_of_bounds_would_give_it(total, count, data):
    """No list of N bounds is built (a count like 10^11 was OOM-killed building it); the reference builds it."""
    import bisect

    from pytrain.data.shard import _shard_holding

    byte = data.draw(st.integers(0, total + 5))
    bounds = [k * total // count for k in range(count + 1)]
    assert _shard_holding(byte, total, count) == min(bisect.bisect_right(bounds, byte) - 1, count - 1)
