"""`pytrain tokenizer train --style llama2` and `--like REF.json`: the pipeline kept, new merges trained."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from _bpe_cases import assert_same_ids, fast_pair, llama3_tokenizer_json, published_family_json
from _sp_cases import SP_TEXTS, metaspace, sentencepiece_json, train_model
from conftest import run_cli
from pytrain.tokenizer.bpe_support import BYTE_TOKENS

PIPELINE = ("normalizer", "pre_tokenizer", "decoder")
FLAGS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _train(tmp_path, corpus_jsonl, *options) -> dict:
    out = tmp_path / "tokenizer.json"
    run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", 900, "--out", out, "--max-documents", 120, *options)
    return json.loads(out.read_text(encoding="utf-8"))


def _assert_fast_and_exact(config: dict, texts: list[str]) -> None:
    assert_same_ids(*fast_pair(json.dumps(config)), texts)


def test_llama2_style_has_llamas_layout_and_is_on_the_fast_path(tmp_path, corpus_jsonl, documents):
    config = _train(tmp_path, corpus_jsonl, "--style", "llama2")
    vocab = config["model"]["vocab"]
    assert [vocab[t] for t in ["<unk>", "<s>", "</s>", *BYTE_TOKENS]] == list(range(259))
    assert [t["content"] for t in config["added_tokens"]] == ["<unk>", "<s>", "</s>"]
    assert config["model"]["byte_fallback"] and config["pre_tokenizer"] is None
    assert [s["type"] for s in config["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
    assert Tokenizer.from_str(json.dumps(config)).encode("x").ids[0] == 1  # the <s> template
    _assert_fast_and_exact(config, SP_TEXTS + documents[120:220])


def test_pack_uses_the_fast_encoder_for_a_llama2_style_tokenizer(tmp_path, corpus_jsonl):
    _train(tmp_path, corpus_jsonl, "--style", "llama2")
    proc = run_cli("pack", corpus_jsonl, "--tokenizer", tmp_path / "tokenizer.json", "--out", tmp_path / "packed",
                   "--encoder", "fast")
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["encoder"] == "fast" and manifest["eos_id"] == 2, proc.stdout


def _references(documents) -> dict[str, str]:
    """Llama-2's pipeline (Prepend + Replace, <s> template), Mistral v0.3's (Metaspace first, no split) and
    Llama-3's (Split + ByteLevel, a <|begin_of_text|> template), Qwen3's published layout (NFC, special and
    non-special added tokens), each over a vocabulary trained here."""
    model = train_model(documents[:30], 500, words=True)
    return {"llama2": sentencepiece_json(model), "mistral-v0.3": sentencepiece_json(model, metaspace("first", False)),
            "llama3": llama3_tokenizer_json(600), "qwen3": published_family_json("qwen3", 600)}


@pytest.mark.parametrize("name", ["llama2", "mistral-v0.3", "llama3", "qwen3"])
def test_like_keeps_the_references_pipeline_and_added_tokens(tmp_path, corpus_jsonl, documents, name):
    reference = json.loads(_references(documents)[name])
    ref_path = tmp_path / "ref.json"
    ref_path.write_text(json.dumps(reference), encoding="utf-8")
    config = _train(tmp_path, corpus_jsonl, "--like", ref_path)
    assert Tokenizer.from_str(json.dumps(config)).get_vocab_size() == 900  # --vocab-size, added tokens included
    assert {k: config[k] for k in PIPELINE} == {k: reference[k] for k in PIPELINE}
    ref_flags = [[t.get(f) for f in FLAGS] for t in reference["added_tokens"]]
    assert [[t.get(f) for f in FLAGS] for t in config["added_tokens"]] == ref_flags
    options = ("byte_fallback", "fuse_unk", "unk_token", "ignore_merges")
    assert {k: config["model"].get(k) for k in options} == {k: reference["model"].get(k) for k in options}
    assert config["model"]["merges"] != reference["model"]["merges"]
    vocab = config["model"]["vocab"]
    if reference["model"].get("byte_fallback"):  # Llama-2's layout: <unk> <s> </s> <0x00>..<0xFF> keep ids 0-258
        layout = ["<unk>", "<s>", "</s>", *BYTE_TOKENS]
        assert [vocab[t] for t in layout] == [reference["model"]["vocab"][t] for t in layout] == list(range(259))
    for token, spec in reference["post_processor"].get("special_tokens", {}).items():
        ours = config["post_processor"]["special_tokens"][token]
        assert ours["tokens"] == spec["tokens"] and ours["ids"] == [vocab[t] for t in spec["tokens"]]
    _assert_fast_and_exact(config, SP_TEXTS + documents[120:200])


def test_bad_reference_is_a_one_line_error(tmp_path, corpus_jsonl):
    wordpiece = tmp_path / "wordpiece.json"
    from tokenizers import models

    wordpiece.write_text(Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]")).to_str(), encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"type": "BPE", "vocab"', encoding="utf-8")
    for ref, message in ((wordpiece, "--like needs a BPE tokenizer.json; its model is 'WordPiece'"),
                         (broken, "broken.json: not a valid tokenizer.json"),
                         (tmp_path / "missing.json", "missing.json: no such tokenizer file")):
        proc = run_cli("tokenizer", "train", corpus_jsonl, "--vocab-size", 900, "--out", tmp_path / "out.json",
                       "--like", ref, check=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out.json").exists()
