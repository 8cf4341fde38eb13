"""`pytrain pack --encoder`: the fast encoder writes exactly what the tokenizers path writes."""

from __future__ import annotations

import json

from tokenizers import Tokenizer, normalizers

from _bpe_cases import generated_texts, llama3_tokenizer_json
from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.data.corpus import write_jsonl

FILES = ["train/tokens.bin", "train/index.idx", "train/mask.bin", "val/tokens.bin", "val/index.idx"]


def _pack(corpus, tokenizer, out, encoder, *args):
    proc = run_cli("pack", corpus, "--tokenizer", tokenizer, "--out", out, "--encoder", encoder, *args)
    manifest = fmt.read_manifest(out)
    files = {name: (out / name).read_bytes() for name in FILES if (out / name).exists()}
    return files, manifest, proc.stderr


def _comparable(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("created_unix", "options", "encoder")}


def test_fast_and_tokenizers_write_identical_datasets(tmp_path, tokenizer_path, documents):
    llama = tmp_path / "llama.json"
    llama.write_text(llama3_tokenizer_json(1200))
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, documents[:300] + [t for t in generated_texts(seed=3, count=300) if t])
    for tokenizer, extra in ((tokenizer_path, ["--val-fraction", "0.1"]), (llama, ["--bos", "--val-docs", "7"])):
        fast = _pack(corpus, tokenizer, tmp_path / f"{tokenizer.stem}-fast", "fast", "--threads", "2", *extra)
        slow = _pack(corpus, tokenizer, tmp_path / f"{tokenizer.stem}-slow", "tokenizers", *extra)
        assert fast[0] == slow[0] and _comparable(fast[1]) == _comparable(slow[1])
        assert (fast[1]["encoder"], fast[1]["options"]["encoder"]) == ("fast", "fast")
        assert (slow[1]["encoder"], slow[1]["options"]["encoder"]) == ("tokenizers", "tokenizers")


def test_chat_format_is_identical_too(tmp_path, tokenizer_path):
    corpus = tmp_path / "chat.jsonl"
    with open(corpus, "w") as handle:
        for i, text in enumerate(generated_texts(seed=5, count=60)):
            messages = [{"role": "user", "content": text or "hi"}, {"role": "assistant", "content": f"{i} {text}"}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    fast = _pack(corpus, tokenizer_path, tmp_path / "fast", "auto", "--format", "chat")
    slow = _pack(corpus, tokenizer_path, tmp_path / "slow", "tokenizers", "--format", "chat")
    assert fast[1]["encoder"] == "fast" and "train/mask.bin" in fast[0]
    assert fast[0] == slow[0] and _comparable(fast[1]) == _comparable(slow[1])


def test_unsupported_tokenizer_auto_falls_back_and_fast_refuses(tmp_path, corpus_jsonl, tokenizer_path):
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.normalizer = normalizers.NFKC()
    nfkc = tmp_path / "nfkc.json"
    tokenizer.save(str(nfkc))
    _, manifest, stderr = _pack(corpus_jsonl, nfkc, tmp_path / "auto", "auto")
    assert manifest["encoder"] == "tokenizers"
    assert "encoder: tokenizers (the fast encoder does not support this tokenizer: normalizer 'NFKC')" in stderr
    proc = run_cli("pack", corpus_jsonl, "--tokenizer", nfkc, "--out", tmp_path / "fast", "--encoder", "fast",
                   check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--encoder fast does not support this tokenizer (normalizer 'NFKC')" in proc.stderr
    assert not (tmp_path / "fast").exists()
