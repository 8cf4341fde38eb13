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


@pytest.fixture(scope="module")
def wide_tokenizer(tmp_path_factory):
    """A word-level tokenizer of 70,000 ids (EOS id 0): packs made with it hold uint32 ids."""
    from tokenizers import models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, 70_000)}},
                                     unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    path = tmp_path_factory.mktemp("wide") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_uint32_packs_to_megatron_and_back(tmp_path, wide_tokenizer):
    """ids past 65535: the pack is uint32, the Megatron files int32 (code 4, pointers in 4-byte units), which
    megatron-core's own IndexedDataset reads back as the pack's documents, and packing them again gives the
    same pack byte for byte."""
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(7)
    documents = [[rng.integers(65_000, 70_000, size=rng.integers(1, 60)).tolist()] for _ in range(40)]
    write_megatron(tmp_path / "source", documents, dtype=np.int32)
    first = tmp_path / "first"
    run_cli("pack", tmp_path / "source", "--tokenizer", wide_tokenizer, "--out", first, "--val-docs", 4)
    assert fmt.read_manifest(first)["dtype"] == "uint32"
    for split in ("train", "val"):
        prefix = tmp_path / "mega" / f"{split}_text_document"
        run_cli("convert", first, "--to", "megatron", prefix, "--split", split)
        assert prefix.with_suffix(".idx").read_bytes()[17] == 4  # int32: Megatron has no uint32
        dataset = indexed.IndexedDataset(str(prefix))
        data = fmt.open_split(first, split)
        assert len(dataset) == data.num_docs and dataset.index.dtype == np.int32
        assert [dataset[d].tolist() for d in range(len(dataset))] == [data.document(d).tolist()
                                                                      for d in range(data.num_docs)]
    again = tmp_path / "again"
    run_cli("pack", tmp_path / "mega" / "train_text_document", "--tokenizer", wide_tokenizer, "--out", again)
    for name in ("tokens.bin", "index.idx"):
        assert (again / "train" / name).read_bytes() == (first / "train" / name).read_bytes()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_a_bin_longer_than_its_idx_is_refused(tmp_path, wide_tokenizer, dtype):
    """Extra bytes after the last sequence (another dataset's .bin beside this .idx, or one appended to):
    every pointer is in range, but the pair does not match."""
    _, bin_path = write_megatron(tmp_path / "d", [[[5, 6, 7]], [[8, 9]]], dtype=dtype)
    bin_path.write_bytes(bin_path.read_bytes() + np.array([3, 4], dtype=dtype).tobytes())
    out = tmp_path / "out"
    proc = run_cli("pack", tmp_path / "d", "--tokenizer", wide_tokenizer, "--out", out, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(bin_path) in proc.stderr and "the pair does not match" in proc.stderr and not out.exists()


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


# ----------------------------------------------------------------------------- the native pass, against numpy
def numpy_frame_ready_ids(raw, lengths, keep, max_id, bos, eos, out_dtype):
    """What the reader computed with numpy before the native pass (check_ids, the keep filter, astype, then
    pack.frame's np.insert), kept here as the reference the native pass must match byte for byte."""
    wide = raw.astype(np.int64)
    bad = np.flatnonzero((wide < 0) | (wide > max_id))
    if len(bad):
        return None, None, (int(bad[0]), int(wide[bad[0]]))
    tokens, lengths = raw[np.repeat(keep, lengths)].astype(out_dtype), lengths[keep]
    if not len(lengths):
        return tokens, lengths, None
    ends = np.cumsum(lengths)
    starts = ends - lengths
    no = np.zeros(len(lengths), dtype=bool)
    need_eos = tokens[ends - 1] != eos if eos >= 0 else no
    need_bos = tokens[starts] != bos if bos >= 0 else no
    positions = np.concatenate([ends[need_eos], starts[need_bos]])
    values = np.concatenate([np.full(int(need_eos.sum()), eos), np.full(int(need_bos.sum()), bos)]).astype(out_dtype)
    return np.insert(tokens, positions, values), lengths + need_eos + need_bos, None


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16])
@pytest.mark.parametrize("out_dtype", [np.uint16, np.uint32])
def test_native_pass_matches_numpy_on_every_dtype(dtype, out_dtype):
    from pytrain import _native

    top = int(min(np.iinfo(dtype).max, np.iinfo(out_dtype).max))
    rng = np.random.default_rng(int(np.dtype(dtype).num) * 3 + np.dtype(out_dtype).itemsize)
    for trial in range(40):
        max_id = int(rng.integers(2, min(top, 70_000) + 1)) if trial % 4 else top
        # Documents of 0 to ~9,000 ids: empty ones, and ones spanning the native pass's 4,096-id blocks.
        lengths = rng.choice([0, 1, 2, 5, 4095, 4097, 9000], size=rng.integers(1, 12))
        raw = rng.integers(0, max_id + 1, size=int(lengths.sum())).astype(dtype)
        if len(raw) and trial % 3 == 0:
            raw[rng.integers(0, len(raw), size=3)] = max_id  # the largest id is accepted
        keep = (rng.random(len(lengths)) < 0.8) & (lengths > 0)  # the reader always drops empty documents
        bos, eos = (int(rng.integers(-1, max_id + 1)) for _ in range(2))
        expected = numpy_frame_ready_ids(raw, lengths, keep, max_id, bos, eos, out_dtype)
        for keep_arg in ([keep] if not keep.all() else [keep, None]):
            tokens, got_lengths, bad = _native.frame_ready_ids(raw, np.dtype(dtype).name, lengths, keep_arg, max_id,
                                                               bos, eos, np.dtype(out_dtype).name)
            assert bad is None and tokens.dtype == np.dtype(out_dtype)
            assert tokens.tobytes() == expected[0].tobytes() and got_lengths.tolist() == expected[1].tolist()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16])
def test_native_pass_refuses_the_first_id_out_of_range(dtype):
    from pytrain import _native

    max_id = int(min(np.iinfo(dtype).max - 1, 300))
    rng = np.random.default_rng(int(np.dtype(dtype).num))
    lengths = np.array([3, 0, 5000, 4096, 7])
    for position in (0, 2, 3, 4098, 5003 + 4095, int(lengths.sum()) - 1):
        raw = rng.integers(0, max_id + 1, size=int(lengths.sum())).astype(dtype)
        raw[position] = max_id + 1  # the vocabulary's size: one past the largest id
        if np.iinfo(dtype).min < 0 and position + 5 < len(raw):
            raw[position + 5] = -1  # a later negative id is not the first
        keep = np.ones(len(lengths), bool)
        keep[0] = False  # dropped documents are checked too: the error names the first bad id of the file
        expected = numpy_frame_ready_ids(raw, lengths, keep, max_id, -1, 0, np.uint16)
        assert _native.frame_ready_ids(raw, np.dtype(dtype).name, lengths, keep, max_id, -1, 0, "uint16") == (None, None, expected[2])
        assert expected[2] == (position, max_id + 1)
    if np.iinfo(dtype).min < 0:
        raw = np.array([4, -2, 5], dtype=dtype)
        assert _native.frame_ready_ids(raw, np.dtype(dtype).name, np.array([3]), None, max_id, -1, -1, "uint16")[2] == (1, -2)


def test_native_pass_refuses_lengths_that_do_not_match_the_bytes():
    from pytrain import _native

    with pytest.raises(ValueError, match="lengths sum to 4"):
        _native.frame_ready_ids(np.zeros(3, np.int32), "int32", np.array([4]), None, 10, -1, -1, "uint16")


def test_windows_and_a_bin_not_a_multiple_of_the_window(tmp_path, tokenizer_path, top_id, monkeypatch):
    """Small windows (the reader's buffer reused across them, a last window shorter than the others, a document
    larger than a window), empty documents, documents of several sequences: the pack holds exactly the
    documents, framed, and its checksums are those of its bytes."""
    import hashlib

    from pytrain import _native
    from pytrain.data import pack as pack_module
    from pytrain.data.readers import megatron as reader_module

    monkeypatch.setattr(reader_module, "WINDOW_BYTES", 0)  # windows of --batch-mb's minimum, 64 KiB
    rng = np.random.default_rng(5)
    documents = random_documents(rng, 300, top_id, max_sequences=4, max_len=300)
    documents[7] = [rng.integers(1, top_id + 1, size=50_001).tolist()]  # 100 KB of int16: over one window
    documents[8] = [[]]
    documents[9] = [[], [top_id]]
    documents[10][-1].append(0)
    write_megatron(tmp_path / "d", documents, dtype=np.int16 if top_id < 2**15 else np.int32)
    assert (tmp_path / "d.bin").stat().st_size % (1 << 16)
    out = tmp_path / "packed"
    pack_module.pack([tmp_path / "d"], tokenizer_path, out, pack_module.PackOptions(batch_bytes=1 << 16, progress=False))
    joined = [sum(doc, []) for doc in documents if sum(doc, [])]
    expected = [ids if ids[-1] == 0 else ids + [0] for ids in joined]
    assert pack_documents(out) == expected
    manifest = fmt.read_manifest(out)
    flat = np.array(sum(expected, []), dtype=manifest["dtype"])
    split = manifest["splits"]["train"]
    assert split["tokens_sha256"] == hashlib.sha256(flat.tobytes()).hexdigest()
    assert split["tokens_sum"] == int(flat.astype(np.uint64).sum()) == _native.token_sum(flat)
    assert manifest["empty_documents"] == 1
    run_cli("verify", out)
