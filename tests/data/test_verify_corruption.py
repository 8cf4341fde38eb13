"""Issue 9, items 6 and 7: `verify` (quick and full) catches crafted corruption and edited manifests,
one line per problem, never a traceback; `verify_pack` is what the trainer calls."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.data.verify import check_pack, verify_pack
from pytrain.errors import PytrainError
from pytrain.fsutil import OUTPUT_MARKER


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, corpus_jsonl, tokenizer_path):
    out = tmp_path_factory.mktemp("verify") / "packed"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--val-docs", 4)
    return out


@pytest.fixture()
def packed(tmp_path, pristine):
    import shutil

    out = tmp_path / "packed"
    shutil.copytree(pristine, out)
    return out


def edit_manifest(root, edit):
    manifest = json.loads((root / fmt.MANIFEST).read_text())
    edit(manifest)
    (root / fmt.MANIFEST).write_text(json.dumps(manifest))


def rewrite_tokens(root, split, change):
    """Apply `change` to a split's token array and re-seal it (manifest checksums updated, the output
    marker removed), so that only the damage under test remains for verify to find."""
    manifest = json.loads((root / fmt.MANIFEST).read_text())
    path = fmt.tokens_path(root, split)
    tokens = np.fromfile(path, dtype=np.dtype(manifest["dtype"]).newbyteorder("<"))
    change(tokens)
    tokens.tofile(path)
    manifest["splits"][split]["tokens_sha256"] = hashlib.sha256(tokens.tobytes()).hexdigest()
    manifest["splits"][split]["tokens_sum"] = int(tokens.sum(dtype=np.uint64))
    (root / fmt.MANIFEST).write_text(json.dumps(manifest))
    (root / OUTPUT_MARKER).unlink(missing_ok=True)
    return tokens


def assert_cli_lists(root, *fragments, args=()):
    proc = run_cli("verify", root, *args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    problems = lines[1:] if len(lines) > 1 else lines
    for fragment in fragments:
        assert any(fragment in line for line in problems), (fragment, proc.stderr)
    return lines


def test_a_good_pack_passes_both_modes(packed):
    assert verify_pack(packed, "full") == [] and verify_pack(packed, "quick") == []
    assert "no checksums (quick)" in run_cli("verify", packed, "--mode", "quick").stdout
    with pytest.raises(PytrainError, match="verify mode must be one of full, quick"):
        verify_pack(packed, "fast")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format=None), "not a pytrain manifest"),
    (lambda m: m.update(splits=[]), "splits is list, expected an object"),
    (lambda m: m["splits"].update(train="x"), "splits.train is str, expected an object"),
    (lambda m: m["splits"]["train"].update(documents="many"), "splits.train.documents is 'many'"),
    (lambda m: m["splits"]["train"].pop("index_sha256"), "splits.train lacks index_sha256"),
    (lambda m: m["splits"]["train"].update(tokens_sha256=7), "splits.train.tokens_sha256 is not a sha256"),
    (lambda m: m.update(vocab_size="600"), "vocab_size is '600', expected a positive integer"),
    (lambda m: m.update(tokenizer="t.json"), "tokenizer is 't.json'"),
    (lambda m: m.update(append_eos="yes"), "append_eos is 'yes', expected true or false"),
    (lambda m: m.update(eos_id=-1), "eos_id is -1"),
    (lambda m: m.update(dtype="float64"), "dtype is 'float64'"),
    (lambda m: m.pop("dtype"), "lacks dtype"),
    (lambda m: m["splits"].update({"../x": m["splits"]["val"]}), "splits.../x: unknown split"),
    (lambda m: m["splits"].pop("train"), "splits has no 'train'"),
    (lambda m: m.update(validation=[1]), "validation is [1]"),
])
def test_a_manifest_edited_into_a_wrong_shape_is_one_line_per_problem(packed, edit, message):
    edit_manifest(packed, edit)
    assert_cli_lists(packed, message)
    with pytest.raises(PytrainError, match="manifest"):  # every reader: one PytrainError, never a TypeError
        fmt.read_manifest(packed)


def test_a_manifest_that_is_not_an_object(packed):
    (packed / fmt.MANIFEST).write_text("[1, 2]")
    assert_cli_lists(packed, "not a pytrain manifest (format='list')")


def test_several_shape_problems_are_listed_together(packed):
    edit_manifest(packed, lambda m: m.update(vocab_size=0, append_eos=1, splits={"train": {"documents": -2}}))
    lines = assert_cli_lists(packed, "vocab_size is 0", "append_eos is 1", "splits.train.documents is -2",
                             "splits.train lacks tokens_sha256")
    assert lines[0].endswith("problem(s) (full verify):")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["splits"].pop("val"), "val: a split on disk that the manifest does not list"),
    (lambda m: m.update(append_eos=False), "but the manifest says append_eos: false"),
    (lambda m: m["validation"].update(val_docs=5), "the val split has 4 documents, but --val-docs was 5"),
    (lambda m: m["splits"]["train"].update(documents=m["splits"]["train"]["documents"] - 1), "header says"),
    (lambda m: m.update(documents_read=3), "only 3 read"),
    (lambda m: m.update(prepend_bos=True, bos_id=1), "do not start with BOS"),
    (lambda m: m.update(eos_id=1), "do not end with EOS (id 1)"),
])
def test_a_manifest_whose_claims_the_data_contradicts_is_not_ok(packed, edit, message):
    edit_manifest(packed, edit)
    (packed / OUTPUT_MARKER).unlink()  # a pack from before output markers: the data itself must tell
    for mode in ("full", "quick"):
        assert any(message in problem for problem in verify_pack(packed, mode)), (mode, verify_pack(packed, mode))
    assert_cli_lists(packed, message)


def test_an_edited_manifest_is_caught_by_the_output_marker(packed):
    edit_manifest(packed, lambda m: m.update(pytrain_version="9.9"))
    assert any("manifest.json" in p and OUTPUT_MARKER in p or "when packed" in p for p in verify_pack(packed, "quick"))


def test_out_of_vocabulary_id(packed):
    vocab = fmt.read_manifest(packed)["vocab_size"]
    rewrite_tokens(packed, "train", lambda t: t.__setitem__(10, vocab + 5))
    for mode in ("full", "quick"):
        assert verify_pack(packed, mode) == [f"{fmt.tokens_path(packed, 'train')}: token id {vocab + 5} >= vocab size "
                                             f"{vocab} (out of vocabulary)"]
    with pytest.raises(PytrainError, match="out of vocabulary"):
        check_pack(packed, "quick")


def test_misplaced_bos(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "bos"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--bos", "--bos-token", "<pad>")
    offsets = np.asarray(fmt.open_split(out, "train").offsets)
    assert verify_pack(out) == []
    rewrite_tokens(out, "train", lambda t: t.__setitem__(offsets[3], 5))
    assert verify_pack(out, "quick") == [f"{fmt.tokens_path(out, 'train')}: 1 documents do not start with BOS (id 1), "
                                         "first is document 3"]


@pytest.mark.parametrize("offset, value, message", [
    (0, b"NOTANIDX", "not a pytrain index (bad magic"),
    (8, (7).to_bytes(4, "little"), "index format version 7"),
    (12, (3).to_bytes(4, "little"), "token width 3 bytes is not 2 or 4"),
    (16, (10**6).to_bytes(8, "little"), "header says 1000000 docs"),
])
def test_corrupted_index_header(packed, offset, value, message):
    path = fmt.index_path(packed, "val")
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(value)
    for mode in ("full", "quick"):
        assert any(message in problem for problem in verify_pack(packed, mode))
    assert_cli_lists(packed, message)


def test_offsets_past_the_tokens_are_reported_not_indexed(packed):
    path = fmt.index_path(packed, "train")
    offsets = np.fromfile(path, dtype="<i8", offset=fmt.INDEX_HEADER.size)
    offsets[5:-1] += 10**9  # increasing, but past the end of tokens.bin
    with open(path, "r+b") as handle:
        handle.seek(fmt.INDEX_HEADER.size)
        handle.write(offsets.tobytes())
    assert any("offsets must increase" in p or "past the" in p for p in verify_pack(packed, "quick"))


def test_missing_tokenizer_copy(packed):
    (packed / fmt.TOKENIZER).unlink()
    assert any(f"{packed / fmt.TOKENIZER}: missing; the tokenizer copy" in p for p in verify_pack(packed, "quick"))


def test_several_problems_at_once(packed):
    vocab = fmt.read_manifest(packed)["vocab_size"]
    rewrite_tokens(packed, "train", lambda t: t.__setitem__(0, vocab))
    (packed / fmt.TOKENIZER).unlink()
    with open(fmt.index_path(packed, "val"), "r+b") as handle:
        handle.write(b"XX")
    assert_cli_lists(packed, "out of vocabulary", "tokenizer.json: missing", "bad magic")


def test_quick_checks_a_token_sum_full_checks_sha256(packed):
    (packed / OUTPUT_MARKER).unlink()  # its sha256 of small files would catch these edits by itself
    path = fmt.tokens_path(packed, "train")
    tokens = np.fromfile(path, dtype="<u2")
    inside = np.asarray(fmt.open_split(packed, "train").offsets)[1] - 1  # document 0, before its EOS
    a, b = next((i, i + 1) for i in range(1, inside - 1) if tokens[i] != tokens[i + 1])
    tokens[[a, b]] = tokens[[b, a]]  # two ids swapped: same sum, same maximum, same EOS positions
    tokens.tofile(path)
    assert verify_pack(packed, "quick") == []
    assert verify_pack(packed, "full") == [f"{path}: checksum mismatch; token data was modified after packing"]
    tokens[:] = 0  # a zeroed file: every document still "ends with EOS" (id 0), the sum tells
    tokens.tofile(path)
    assert any("sum of its token ids differs" in p for p in verify_pack(packed, "quick"))


def test_a_pack_from_before_markers_and_token_sums_still_verifies(packed):
    (packed / OUTPUT_MARKER).unlink()
    edit_manifest(packed, lambda m: [s.pop("tokens_sum") for s in m["splits"].values()])
    assert verify_pack(packed, "full") == [] and verify_pack(packed, "quick") == []
