"""`pytrain tokenizer train`: a byte-level BPE that HF libraries load and that round-trips text."""

import json

from tokenizers import Tokenizer

from conftest import one_line_refusal, run_cli, snapshot


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


def test_overwrite_replaces_only_a_tokenizer_this_command_wrote(tmp_path, corpus_jsonl):
    """--overwrite replaces a tokenizer file only while the record `tokenizer train` left beside it matches it: never
    an input, a file of the user's, the tokenizer inside an exported model, or one edited since."""
    import shutil

    from pytrain.export import export_model
    from pytrain.model import Llama, preset

    corpus = tmp_path / "c.jsonl"
    shutil.copy(corpus_jsonl, corpus)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    out = tmp_path / "tok.json"
    run_cli("tokenizer", "train", corpus, "--vocab-size", 300, "--out", out)
    model_config = preset("tiny", vocab_size=300)
    model = Llama(model_config)
    model.init_weights(seed=0)
    exported = export_model(model, model_config, out, tmp_path / "hf")  # holds a copy of tok.json, as tokenizer.json
    for target, reason in ((corpus, "it is one of this command's inputs"),
                           (notes, "it has no valid .notes.txt.pytrain-output.json beside it"),
                           (exported, "it has no valid .tokenizer.json.pytrain-output.json beside it"),
                           (run, "is the tokenizer a pack or run")):
        before = snapshot(tmp_path)
        proc = run_cli("tokenizer", "train", corpus, "--vocab-size", 300, "--out", target, "--overwrite", check=False)
        line = one_line_refusal(proc)
        assert reason in line and str(target) in line, line
        assert snapshot(tmp_path) == before
    run_cli("tokenizer", "train", corpus, "--vocab-size", 280, "--out", out, "--overwrite")  # its own output: fine
    assert Tokenizer.from_file(str(out)).get_vocab_size() == 280
    out.write_text(out.read_text().replace('"<pad>"', '"<PAD>"'))  # edited by hand since: the user's now
    before = snapshot(tmp_path)
    proc = run_cli("tokenizer", "train", corpus, "--vocab-size", 300, "--out", out, "--overwrite", check=False)
    assert "it changed since pytrain wrote it" in one_line_refusal(proc)
    assert snapshot(tmp_path) == before
