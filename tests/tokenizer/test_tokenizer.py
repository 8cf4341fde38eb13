"""`pytrain tokenizer train`: a byte-level BPE that HF libraries load and that round-trips text."""

import json

from tokenizers import Tokenizer

from conftest import run_cli


def test_trained_tokenizer_round_trips_and_has_specials(tokenizer_path, documents):
    tok = Tokenizer.from_file(str(tokenizer_path))
    assert tok.get_vocab_size() == 600
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<pad>") == 1
    for text in documents[:50] + ["naïve café ☃ 𝄞 \x00 tabs\tand\nnewlines"]:
        assert tok.decode(tok.encode(text).ids) == text


def test_transformers_loads_it(tokenizer_path, documents):
    import pytest

    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path))
    assert fast.decode(fast(documents[3])["input_ids"]) == documents[3]


def test_too_small_vocab_and_missing_input_are_one_line_errors(tmp_path, corpus_jsonl):
    proc = run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", 100, "--out", tmp_path / "t.json", check=False)
    assert proc.returncode == 2 and "--vocab-size 100 is too small" in proc.stderr
    proc = run_cli("tokenizer", "train", tmp_path / "nope.jsonl", "--vocab-size", 300, "--out", tmp_path / "t.json", check=False)
    assert proc.returncode == 2 and "nope.jsonl: no such file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_custom_special_tokens(tmp_path, corpus_jsonl):
    out = tmp_path / "t.json"
    run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", 400, "--out", out,
            "--eos-token", "</s>", "--special-tokens", "<pad>", "<|user|>", "--max-documents", 50)
    vocab = json.loads(out.read_text())["added_tokens"]
    assert [t["content"] for t in vocab] == ["</s>", "<pad>", "<|user|>"]


def test_overwrite_replaces_only_a_tokenizer_that_is_not_in_use(tmp_path, corpus_jsonl):
    import shutil

    corpus = tmp_path / "c.jsonl"
    shutil.copy(corpus_jsonl, corpus)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    out = tmp_path / "tok.json"
    run_cli("tokenizer", "train", corpus, "--vocab-size", 300, "--out", out)
    for target, reason in ((corpus, "is one of the inputs"), (notes, "is not a tokenizer.json"),
                           (run, "is the tokenizer a pack or run")):
        before = target.read_bytes() if target.is_file() else None
        proc = run_cli("tokenizer", "train", corpus, "--vocab-size", 300, "--out", target, "--overwrite", check=False)
        assert proc.returncode == 2 and reason in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert before is None or target.read_bytes() == before
    assert not (run / "tokenizer.json").exists()
    run_cli("tokenizer", "train", corpus, "--vocab-size", 300, "--out", out, "--overwrite")  # its own output: fine
