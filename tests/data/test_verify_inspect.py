"""`pytrain verify` catches every kind of corruption; `pytrain inspect` shows what is there."""

from __future__ import annotations

import shutil

import pytest
from tokenizers import Tokenizer

from conftest import run_cli
from pytrain.data import format as fmt


@pytest.fixture()
def packed(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "packed"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--val-docs", 4)
    return out


def test_verify_accepts_a_good_pack(packed):
    proc = run_cli("verify", packed)
    assert "OK" in proc.stdout


def _flip_byte(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "train/tokens.bin").write_bytes((d / "train/tokens.bin").read_bytes()[:-6]), "truncated or corrupted"),
    (lambda d: _flip_byte(d / "train/tokens.bin", 1001), "checksum mismatch; token data was modified"),
    (lambda d: _flip_byte(d / "val/index.idx", 40), "val/index.idx: checksum mismatch; the index was modified"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "val/tokens.bin").unlink(), "val/tokens.bin: missing"),
    (lambda d: _flip_byte(d / "tokenizer.json", 30), "differs from the tokenizer the data was packed with"),
])
def test_verify_rejects_corruption(packed, damage, message):
    damage(packed)
    proc = run_cli("verify", packed, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_verify_catches_a_stale_tokenizer(packed, tmp_path, tokenizer_path):
    other = Tokenizer.from_file(str(tokenizer_path))
    other.add_tokens(["brand-new-token"])
    other.save(str(tmp_path / "other.json"))
    proc = run_cli("verify", packed, "--tokenizer", tmp_path / "other.json", check=False)
    assert proc.returncode == 2 and "stale tokenizer" in proc.stderr
    run_cli("verify", packed, "--tokenizer", tokenizer_path)


def test_verify_catches_a_wrong_eos_even_with_a_matching_checksum(packed):
    import json

    manifest = json.loads((packed / "manifest.json").read_text())
    manifest["eos_id"] = 1
    (packed / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("verify", packed, check=False)
    assert proc.returncode == 2 and "do not end with EOS" in proc.stderr


def test_inspect_prints_counts_histogram_and_document(packed, documents):
    proc = run_cli("inspect", packed, "--doc", 2)
    assert f'"vocab_size": 600' in proc.stdout
    assert f"split train: {len(documents) - 4} documents" in proc.stdout
    assert "document length (tokens)" in proc.stdout and "#" in proc.stdout
    assert documents[2] in proc.stdout
    proc = run_cli("inspect", packed, "--doc", 10**6, check=False)
    assert proc.returncode == 2 and "out of range" in proc.stderr


def _val_documents_in_index(root) -> int:
    """The document count in the val split's index.idx header (magic, version, width: 16 bytes, then uint64 docs)."""
    import numpy as np

    path = root / "val" / "index.idx"
    return int(np.fromfile(path, dtype="<u8", count=1, offset=16)[0]) if path.exists() else 0


@pytest.mark.parametrize("option", [("--val-fraction", "0.01"), ("--val-docs", "3"), ()])
def test_inspect_shows_how_many_validation_documents_there_are(tmp_path, corpus_jsonl, tokenizer_path, option):
    import json

    out = tmp_path / "packed"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, *option)
    shown = json.loads(run_cli("inspect", out).stdout.split("\nsources:")[0])["validation"]
    chosen_by = {option[0].lstrip("-").replace("-", "_"): float(option[1]) if "." in option[1] else int(option[1])} \
        if option else {}
    assert shown == {"documents": _val_documents_in_index(out), **chosen_by}
    assert shown["documents"] > 0 or not option
