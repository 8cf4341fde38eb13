"""Megatron-LM indexed datasets in and out of `pytrain pack`.

The Megatron files are written here by a small writer that follows the published layout
(megatron/core/datasets/indexed_dataset.py: `_IndexWriter`), not by pytrain's code; where megatron-core
is importable, its own `IndexedDataset` reads what `pytrain convert --to megatron` wrote.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import run_cli
from pytrain.data import format as fmt

CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}


def write_megatron(prefix, documents, dtype=np.int32, code=None, version=1, magic=b"MMIDIDX\x00\x00"):
    """documents: a list of documents, each a list of sequences (lists of ids). Returns (idx, bin) paths."""
    sequences = [np.asarray(seq, dtype=dtype) for doc in documents for seq in doc]
    doc_index = np.cumsum([0] + [len(doc) for doc in documents])
    bin_path, idx_path = prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")
    with open(bin_path, "wb") as handle:
        for seq in sequences:
            handle.write(seq.tobytes())
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * np.dtype(dtype).itemsize)[:-1]]).astype(np.int64) \
        if len(sequences) else np.zeros(0, np.int64)
    with open(idx_path, "wb") as handle:
        handle.write(magic)
        handle.write(struct.pack("<Q", version))
        handle.write(struct.pack("<B", CODES[dtype] if code is None else code))
        handle.write(struct.pack("<Q", len(sequences)))
        handle.write(struct.pack("<Q", len(doc_index)))
        handle.write(lengths.tobytes())
        handle.write(pointers.tobytes())
        handle.write(doc_index.astype(np.int64).tobytes())
    return idx_path, bin_path


def random_documents(rng, n_docs, top_id, max_sequences=3, max_len=40):
    return [[rng.integers(1, top_id + 1, size=rng.integers(1, max_len)).tolist()
             for _ in range(rng.integers(1, max_sequences + 1))] for _ in range(n_docs)]


def pack_documents(out, split="train"):
    data = fmt.open_split(out, split)
    return [data.document(d).tolist() for d in range(data.num_docs)]


@pytest.fixture(scope="module")
def top_id(tokenizer_path):
    return max(Tokenizer.from_file(str(tokenizer_path)).get_vocab(with_added_tokens=True).values())


def test_documents_join_their_sequences_and_end_with_one_eos(tmp_path, tokenizer_path, top_id):
    rng = np.random.default_rng(0)
    documents = random_documents(rng, 50, top_id)
    documents[3][-1].append(0)  # already ends with EOS (Megatron's --append-eod): not doubled
    write_megatron(tmp_path / "corpus_text_document", documents)
    out = tmp_path / "packed"
    run_cli("pack", tmp_path / "corpus_text_document", "--tokenizer", tokenizer_path, "--out", out)
    joined = [sum(doc, []) for doc in documents]
    assert pack_documents(out) == [ids if ids[-1] == 0 else ids + [0] for ids in joined]
    manifest = fmt.read_manifest(out)
    (source,) = manifest["sources"]
    assert source["kind"] == "megatron" and source["dtype"] == "int32" and source["documents"] == 50
    assert source["sequences"] == sum(len(doc) for doc in documents)
    run_cli("verify", out)

    bare = tmp_path / "bare"
    run_cli("pack", tmp_path / "corpus_text_document.idx", "--tokenizer", tokenizer_path, "--out", bare, "--no-eos")
    assert pack_documents(bare) == joined


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16])
def test_every_integer_dtype_narrows_to_the_pack_dtype(tmp_path, tokenizer_path, top_id, dtype):
    rng = np.random.default_rng(1)
    documents = random_documents(rng, 20, min(top_id, np.iinfo(dtype).max))
    write_megatron(tmp_path / "d", documents, dtype=dtype)
    out = tmp_path / "packed"
    run_cli("pack", tmp_path / "d.bin", "--tokenizer", tokenizer_path, "--out", out, "--no-eos")
    assert fmt.read_manifest(out)["dtype"] == "uint16"
    assert pack_documents(out) == [sum(doc, []) for doc in documents]


def test_validation_and_shards_work_as_for_text(tmp_path, tokenizer_path, top_id):
    rng = np.random.default_rng(2)
    documents = [sum(doc, []) + [0] for doc in random_documents(rng, 40, top_id)]
    write_megatron(tmp_path / "d", [[doc] for doc in documents])
    held = tmp_path / "held"
    run_cli("pack", tmp_path / "d", "--tokenizer", tokenizer_path, "--out", held, "--val-docs", 5)
    assert pack_documents(held) == documents[:-5] and pack_documents(held, "val") == documents[-5:]
    spread = tmp_path / "spread"
    run_cli("pack", tmp_path / "d", "--tokenizer", tokenizer_path, "--out", spread, "--val-fraction", 0.25)
    to_val = [np.floor((i + 1) * 0.25) > np.floor(i * 0.25) for i in range(40)]
    assert pack_documents(spread, "val") == [d for d, v in zip(documents, to_val) if v]
    assert pack_documents(spread) == [d for d, v in zip(documents, to_val) if not v]
    shards = []
    for k in range(3):
        run_cli("pack", tmp_path / "d", "--tokenizer", tokenizer_path, "--out", tmp_path / "sharded", "--shard", f"{k}/3")
        shards += pack_documents(tmp_path / "sharded" / f"shard-{k:05d}-of-00003")
    assert shards == documents


def test_pack_to_megatron_and_back_is_identical(tmp_path, corpus_jsonl, tokenizer_path):
    first = tmp_path / "first"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", first, "--val-docs", 7)
    run_cli("convert", first, "--to", "megatron", tmp_path / "mega" / "corpus_text_document")
    idx = (tmp_path / "mega" / "corpus_text_document.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00" and idx[17] == 8  # uint16 ids: Megatron's code 8
    again = tmp_path / "again"
    run_cli("pack", tmp_path / "mega" / "corpus_text_document", "--tokenizer", tokenizer_path, "--out", again)
    for name in ("tokens.bin", "index.idx"):
        assert (again / "train" / name).read_bytes() == (first / "train" / name).read_bytes()
    one, two = fmt.read_manifest(first)["splits"]["train"], fmt.read_manifest(again)["splits"]["train"]
    assert one == two
    # The published layout, read back by the test's own parser of it.
    _, _, code, sequences, entries = struct.unpack("<9sQBQQ", idx[:34])
    lengths = np.frombuffer(idx, "<i4", sequences, 34)
    pointers = np.frombuffer(idx, "<i8", sequences, 34 + 4 * sequences)
    doc_index = np.frombuffer(idx, "<i8", entries, 34 + 12 * sequences)
    data = fmt.open_split(first, "train")
    assert lengths.tolist() == np.diff(data.offsets).tolist() and (pointers == data.offsets[:-1] * 2).all()
    assert doc_index.tolist() == list(range(sequences + 1)) and code == 8


def test_convert_never_replaces_files(tmp_path, corpus_jsonl, tokenizer_path):
    pack = tmp_path / "pack"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", pack)
    (tmp_path / "x.idx").write_bytes(b"mine")
    proc = run_cli("convert", pack, "--to", "megatron", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "x.idx: exists" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / "x.idx").read_bytes() == b"mine" and not (tmp_path / "x.bin").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]


def test_megatron_core_reads_what_pytrain_wrote(tmp_path, corpus_jsonl, tokenizer_path):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    pack = tmp_path / "pack"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", pack)
    run_cli("convert", pack, "--to", "megatron", tmp_path / "corpus")
    dataset = indexed.IndexedDataset(str(tmp_path / "corpus"))
    data = fmt.open_split(pack, "train")
    assert len(dataset) == data.num_docs and len(dataset.document_indices) == data.num_docs + 1
    assert all(dataset[d].tolist() == data.document(d).tolist() for d in range(data.num_docs))


# ----------------------------------------------------------------------------- bad input
def _refused(tmp_path, tokenizer_path, given, *fragments):
    out = tmp_path / "out"
    proc = run_cli("pack", given, "--tokenizer", tokenizer_path, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return lines[0]


def test_truncated_bin(tmp_path, tokenizer_path):
    _, bin_path = write_megatron(tmp_path / "d", [[[5, 6, 7]], [[8, 9]]])
    bin_path.write_bytes(bin_path.read_bytes()[:-3])
    _refused(tmp_path, tokenizer_path, tmp_path / "d", str(bin_path), "truncated")


def test_pointers_past_the_bin(tmp_path, tokenizer_path):
    idx, _ = write_megatron(tmp_path / "d", [[[5, 6, 7], [1]], [[8, 9]]])
    raw = bytearray(idx.read_bytes())
    struct.pack_into("<q", raw, 34 + 4 * 3 + 8 * 2, 4096)  # the third sequence's pointer
    idx.write_bytes(bytes(raw))
    _refused(tmp_path, tokenizer_path, idx, str(idx), "sequence 2", "past the end")


@pytest.mark.parametrize("code", [0, 9, 255])
def test_unknown_dtype_code(tmp_path, tokenizer_path, code):
    write_megatron(tmp_path / "d", [[[5, 6]]], code=code)
    _refused(tmp_path, tokenizer_path, tmp_path / "d.bin", "d.idx", f"unknown dtype code {code}")


def test_float_dtype_and_negative_ids(tmp_path, tokenizer_path):
    write_megatron(tmp_path / "f", [[[5.0, 6.0]]], dtype=np.float32)
    _refused(tmp_path, tokenizer_path, tmp_path / "f", "f.idx", "float32", "integers")
    write_megatron(tmp_path / "n", [[[5, 6]], [[7, -3, 2]]], dtype=np.int16)
    _refused(tmp_path, tokenizer_path, tmp_path / "n", "n.bin", "token id -3 at token 3", "negative")


def test_wrong_magic_and_version(tmp_path, tokenizer_path):
    write_megatron(tmp_path / "m", [[[5, 6]]], magic=b"NOTMEGAT\x00")
    _refused(tmp_path, tokenizer_path, tmp_path / "m.idx", "m.idx", "not a Megatron index")
    write_megatron(tmp_path / "v", [[[5, 6]]], version=2)
    _refused(tmp_path, tokenizer_path, tmp_path / "v", "v.idx", "version 2")


def test_ids_past_the_vocabulary(tmp_path, tokenizer_path, top_id):
    write_megatron(tmp_path / "d", [[[5, 6]], [[7, top_id + 1, 2]]])
    _refused(tmp_path, tokenizer_path, tmp_path / "d", "d.bin", f"token id {top_id + 1} at token 3",
             f"largest id {top_id}")


def test_idx_without_bin_and_bin_without_idx(tmp_path, tokenizer_path):
    idx, bin_path = write_megatron(tmp_path / "d", [[[5, 6]]])
    bin_path.unlink()
    _refused(tmp_path, tokenizer_path, idx, "d.bin", "missing")
    write_megatron(tmp_path / "e", [[[5, 6]]])[0].unlink()
    _refused(tmp_path, tokenizer_path, tmp_path / "e.bin", "e.idx", "beside it")


@pytest.mark.parametrize("bos, eos", [(-1, 0), (1, -1), (1, 0), (0, 0), (-1, -1)])
def test_framing_ready_ids_adds_only_what_is_missing(bos, eos):
    from pytrain.data.pack import frame

    rng = np.random.default_rng(10 + bos + 7 * eos)
    for _ in range(50):
        lengths = rng.integers(1, 6, size=rng.integers(1, 30))
        tokens = rng.integers(0, 4, size=int(lengths.sum())).astype(np.uint16)
        expected, start = [], 0
        for length in lengths:
            doc = tokens[start:start + length].tolist()
            start += length
            doc = ([bos] if bos >= 0 and doc[0] != bos else []) + doc
            expected.append(doc + ([eos] if eos >= 0 and doc[-1] != eos else []))
        framed, framed_lengths = frame(tokens, lengths, bos, eos)
        assert framed.dtype == tokens.dtype and framed.tolist() == sum(expected, [])
        assert framed_lengths.tolist() == [len(doc) for doc in expected]
