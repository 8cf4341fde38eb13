"""`pytrain pack hf:NAME[:CONFIG] --split S`: a dataset repository folder built here, read offline through
`datasets.load_dataset(..., streaming=True)`, packs exactly as the same texts from a JSONL file do."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.data.corpus import write_jsonl

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: test
    path: data/test-*.parquet
- config_name: other
  data_files:
  - split: train
    path: other/*.parquet
---
# a small dataset for pytrain's tests
"""


@pytest.fixture
def offline(tmp_path):
    return {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}


@pytest.fixture
def repo(tmp_path, documents):
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "other").mkdir()
    train, test = documents[:60], documents[60:75]
    pq.write_table(pa.table({"text": train[:25], "id": list(range(25))}), root / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": train[25:], "id": list(range(25, 60))}), root / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"text": test}), root / "data" / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"body": documents[75:80]}), root / "other" / "part.parquet")
    (root / "README.md").write_text(CARD)
    return root


def _same_pack(tmp_path, tokenizer_path, texts, packed):
    reference = tmp_path / f"reference-{packed.name}"
    write_jsonl(tmp_path / f"{packed.name}.jsonl", texts)
    run_cli("pack", tmp_path / f"{packed.name}.jsonl", "--tokenizer", tokenizer_path, "--out", reference)
    for name in ("tokens.bin", "index.idx"):
        assert (packed / "train" / name).read_bytes() == (reference / "train" / name).read_bytes()


def test_a_local_dataset_folder_by_name_split_and_config(tmp_path, tokenizer_path, documents, repo, offline):
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    out = tmp_path / "train"
    run_cli("pack", f"hf:{repo}", "--tokenizer", tokenizer_path, "--out", out, env=offline)
    _same_pack(tmp_path, tokenizer_path, documents[:60], out)
    (source,) = fmt.read_manifest(out)["sources"]
    assert (source["kind"], source["name"], source["config"], source["split"]) == ("hf", str(repo), None, "train")
    assert source["local_folder"] == str(repo.resolve()) and source["documents"] == 60

    test = tmp_path / "test"
    run_cli("pack", f"hf:{repo}", "--split", "test", "--tokenizer", tokenizer_path, "--out", test, env=offline)
    _same_pack(tmp_path, tokenizer_path, documents[60:75], test)
    other = tmp_path / "other"
    run_cli("pack", f"hf:{repo}:other", "--field", "body", "--tokenizer", tokenizer_path, "--out", other, env=offline)
    _same_pack(tmp_path, tokenizer_path, documents[75:80], other)
    assert fmt.read_manifest(other)["sources"][0]["config"] == "other"
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before  # nothing written into the dataset
    # Streamed: no split was prepared (converted to Arrow files) in the datasets cache before packing
    assert not [p for p in (tmp_path / "hf-home").rglob("*") if p.suffix == ".arrow"]


def _refused(proc, out, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not out.exists()


def test_bad_hf_inputs(tmp_path, tokenizer_path, repo, offline):
    out = tmp_path / "out"

    def pack(*args):
        return run_cli("pack", *args, "--tokenizer", tokenizer_path, "--out", out, check=False, env=offline)

    _refused(pack(f"hf:{repo}", "--split", "validation"), out, f"hf:{repo}", "validation")
    _refused(pack(f"hf:{repo}:nope"), out, f"hf:{repo}:nope", "nope")
    _refused(pack(f"hf:{repo}", "--field", "body"), out, "no column 'body'")
    _refused(pack(f"hf:{repo}", "--shard", "0/2"), out, f"hf:{repo}", "--shard")
    _refused(pack("hf:"), out, "no dataset name")
    _refused(pack("hf:nobody/no-such-dataset"), out, "hf:nobody/no-such-dataset")  # offline: not in the cache
    inside = repo / "packed"
    proc = run_cli("pack", f"hf:{repo}", "--tokenizer", tokenizer_path, "--out", inside, check=False, env=offline)
    _refused(proc, inside, "lies inside the input")


def test_without_datasets_installed_a_one_line_error(tmp_path, tokenizer_path, repo, offline):
    blocker = tmp_path / "blocker" / "datasets"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('datasets is not installed here')\n")
    env = {**offline, "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("pack", f"hf:{repo}", "--tokenizer", tokenizer_path, "--out", tmp_path / "out", check=False, env=env)
    _refused(proc, tmp_path / "out", "need the `datasets` package", "pip install datasets")
