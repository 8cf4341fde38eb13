"""`pytrain pack`: round trip, determinism across threads, every input kind, bad input, atomicity."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import run_cli
from pytrain.data import format as fmt
from pytrain.data.corpus import mixed_documents, write_jsonl
from pytrain.errors import PytrainError


def decoded_documents(root, split="train") -> list[str]:
    tok = Tokenizer.from_file(str(root / fmt.TOKENIZER))
    data = fmt.open_split(root, split)
    return [tok.decode(data.document(d).tolist(), skip_special_tokens=True) for d in range(data.num_docs)]


def test_round_trip_every_document(tmp_path, corpus_jsonl, tokenizer_path, documents):
    out = tmp_path / "packed"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out)
    manifest = fmt.read_manifest(out)
    assert manifest["dtype"] == "uint16" and manifest["eos_id"] == 0
    assert manifest["splits"]["train"]["documents"] == len(documents)
    assert decoded_documents(out) == documents
    tok = Tokenizer.from_file(str(tokenizer_path))
    data = fmt.open_split(out, "train")
    expected = [tok.encode(doc, add_special_tokens=False).ids + [0] for doc in documents[:20]]
    assert [data.document(d).tolist() for d in range(20)] == expected


def _output_bytes(out):
    files = ["train/tokens.bin", "train/index.idx", "val/tokens.bin", "val/index.idx"]
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("created_unix")
    manifest.pop("options")  # records --batch-mb, which is allowed to differ
    return [(out / f).read_bytes() for f in files], manifest


def test_identical_output_for_1_2_4_threads(tmp_path, tokenizer_path, documents):
    corpus = tmp_path / "mixed.jsonl"
    write_jsonl(corpus, mixed_documents(documents, 3_000_000, seed=1))
    outputs = []
    for threads, batch_mb in ((1, 1), (2, 1), (4, 1), (2, 8)):
        out = tmp_path / f"t{threads}-{batch_mb}"
        run_cli("pack", corpus, "--tokenizer", tokenizer_path, "--out", out, "--threads", threads,
                "--batch-mb", batch_mb, "--val-fraction", 0.05)
        outputs.append(_output_bytes(out))
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]


def _all_output_bytes(out):
    """Every file of a pack (manifest without its time stamp and the recorded --batch-mb), by relative path;
    the output marker lists the same files by size (it hashes the manifest too, so it is compared that way)."""
    files = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    marker = json.loads(files.pop(".pytrain-output.json"))
    files["marker sizes"] = {e["path"]: e["size"] for e in marker["files"] if e["path"] != "manifest.json"}
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("created_unix")
    manifest.pop("options")
    return files, manifest


@pytest.mark.parametrize("kind", ["chat", "parquet"])
def test_identical_output_for_any_threads_with_chat_masks_val_docs_and_parquet(tmp_path, tokenizer_path, documents,
                                                                              kind):
    """Chat packs (their loss masks included) and parquet input, with --val-docs: the same bytes for 1 and 4
    threads and for 1 MB and 8 MB batches (several batches in flight with 1 MB)."""
    docs = list(mixed_documents(documents, 2_000_000, seed=4))
    if kind == "chat":
        corpus, extra = tmp_path / "chat.jsonl", ["--format", "chat"]
        with open(corpus, "w", encoding="utf-8") as handle:
            for i in range(0, len(docs) - 1, 2):
                messages = [{"role": "user", "content": docs[i]}, {"role": "assistant", "content": docs[i + 1]}]
                handle.write(json.dumps({"messages": messages}) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        corpus, extra = tmp_path / "docs.parquet", []
        pq.write_table(pa.table({"text": docs}), corpus, row_group_size=200)
    outputs = []
    for threads, batch_mb in ((1, 1), (4, 1), (4, 8)):
        out = tmp_path / f"t{threads}-{batch_mb}"
        run_cli("pack", corpus, *extra, "--tokenizer", tokenizer_path, "--out", out, "--threads", threads,
                "--batch-mb", batch_mb, "--val-docs", 37)
        outputs.append(_all_output_bytes(out))
    files = outputs[0][0]
    expected = {"tokenizer.json", "train/tokens.bin", "train/index.idx", "val/tokens.bin", "val/index.idx",
                "marker sizes"}
    if kind == "chat":
        expected |= {"train/mask.bin", "val/mask.bin"}
        assert 0 < sum(files["train/mask.bin"]) < len(files["train/mask.bin"])
    assert set(files) == expected
    assert outputs[0] == outputs[1] == outputs[2]
    assert fmt.read_manifest(tmp_path / "t1-1")["splits"]["val"]["documents"] == 37


def test_a_dataset_dict_folder_is_a_one_line_error(tmp_path, tokenizer_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]}),
                          "test": datasets.Dataset.from_dict({"text": ["c"]})}).save_to_disk(str(tmp_path / "dd"))
    proc = run_cli("pack", tmp_path / "dd", "--tokenizer", tokenizer_path, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "a DatasetDict with splits" in proc.stderr and str(tmp_path / "dd" / "t") in proc.stderr  # names a split
    assert not (tmp_path / "out").exists()


def test_every_input_kind_gives_the_same_tokens(tmp_path, tokenizer_path, documents):
    docs = documents[:120]
    write_jsonl(tmp_path / "a.jsonl", docs)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write((tmp_path / "a.jsonl").read_text(encoding="utf-8"))
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), tmp_path / "a.parquet", row_group_size=25)
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "ds"))
    results = {}
    for name in ("a.jsonl", "a.jsonl.gz", "a.parquet", "ds"):
        out = tmp_path / f"out-{name}"
        run_cli("pack", tmp_path / name, "--tokenizer", tokenizer_path, "--out", out, "--batch-mb", 1)
        results[name] = (out / "train/tokens.bin").read_bytes(), (out / "train/index.idx").read_bytes()
    assert len(set(results.values())) == 1
    assert decoded_documents(tmp_path / "out-ds") == docs


def test_several_inputs_and_text_files(tmp_path, tokenizer_path):
    (tmp_path / "one.txt").write_text("A whole file\n\nis one document.\n")
    (tmp_path / "two.txt").write_text("First paragraph\nline two.\n\n  \n\nSecond paragraph.\n\n\n")
    out = tmp_path / "files"
    run_cli("pack", tmp_path / "one.txt", tmp_path / "two.txt", "--tokenizer", tokenizer_path, "--out", out)
    assert decoded_documents(out) == ["A whole file\n\nis one document.\n", "First paragraph\nline two.\n\n  \n\nSecond paragraph.\n\n\n"]
    out = tmp_path / "paragraphs"
    run_cli("pack", tmp_path / "two.txt", "--txt-split", "paragraph", "--tokenizer", tokenizer_path, "--out", out)
    assert decoded_documents(out) == ["First paragraph\nline two.", "Second paragraph."]
    manifest = fmt.read_manifest(out)
    assert [s["documents"] for s in manifest["sources"]] == [2]


def test_nested_jq_path_escapes_and_invalid_utf8(tmp_path, tokenizer_path):
    lines = [
        b'{"meta": {"body": "caf\\u00e9 \\ud834\\udd1e tab\\t"}, "id": 1}\n',
        b'{"id": 2, "meta": {"body": "lone \\ud800 surrogate"}}\n',
        b'{"meta": {"body": "raw bad \xff\xfe bytes"}}\r\n',
        b'{"meta": {"body": "no newline at end"}}',
    ]
    (tmp_path / "n.jsonl").write_bytes(b"".join(lines))
    out = tmp_path / "out"
    run_cli("pack", tmp_path / "n.jsonl", "--jq", ".meta.body", "--tokenizer", tokenizer_path, "--out", out)
    assert decoded_documents(out) == [
        "café 𝄞 tab\t", "lone \ufffd surrogate", "raw bad \ufffd\ufffd bytes", "no newline at end"]


BAD_LINES = [
    (b'{"text": "ok one"}', None),
    (b'{"text": "unterminated}', "bad_json"),
    (b'{"title": "no text field"}', "missing_field"),
    (b'{"text": 42}', "not_a_string"),
    (b'{"text": ""}', "empty"),
    (b"   ", "blank"),
    (b'{"text": "trailing"} garbage', "bad_json"),
    (b'{"text": "ok two"}', None),
]


def _bad_corpus(path):
    path.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")


def test_bad_line_error_names_file_and_line(tmp_path, tokenizer_path):
    _bad_corpus(tmp_path / "bad.jsonl")
    proc = run_cli("pack", tmp_path / "bad.jsonl", "--tokenizer", tokenizer_path, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1
    assert f"{tmp_path / 'bad.jsonl'}:2: invalid JSON" in message and "--on-bad-line skip" in message
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_bad_line_skip_counts_and_writes_rejects(tmp_path, tokenizer_path):
    _bad_corpus(tmp_path / "bad.jsonl")
    out = tmp_path / "out"
    run_cli("pack", tmp_path / "bad.jsonl", "--tokenizer", tokenizer_path, "--out", out, "--on-bad-line", "skip")
    manifest = fmt.read_manifest(out)
    assert manifest["rejected"] == {"bad_json": 2, "missing_field": 1, "not_a_string": 1}
    assert manifest["empty_documents"] == 1 and manifest["blank_lines"] == 1
    assert decoded_documents(out) == ["ok one", "ok two"]
    rejects = [json.loads(line) for line in (out / fmt.REJECTS).read_text().splitlines()]
    assert [(r["location"], r["reason"]) for r in rejects] == [
        ("2", "bad_json"), ("3", "missing_field"), ("4", "not_a_string"), ("7", "bad_json")]
    assert rejects[1]["raw"] == '{"title": "no text field"}'


@pytest.mark.parametrize("args, message", [
    (["missing.jsonl"], "missing.jsonl: no such file or directory"),
    (["data.csv"], "unknown input type"),
    (["good.jsonl", "--tokenizer-override", "nope.json"], "nope.json: no such tokenizer file"),
    (["good.jsonl", "--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (["good.jsonl", "--field", "body"], "missing field .body"),
    (["good.jsonl", "--jq", "meta..x"], "cannot parse at character"),
    (["good.jsonl", "--eos-token", "<nope>"], "has no EOS token '<nope>'"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, tokenizer_path, args, message):
    (tmp_path / "good.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "data.csv").write_text("a,b\n")
    tokenizer = str(tokenizer_path)
    if "--tokenizer-override" in args:
        i = args.index("--tokenizer-override")
        tokenizer, args = args[i + 1], args[:i]
    proc = run_cli("pack", *args, "--tokenizer", tokenizer, "--out", tmp_path / "out", check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_existing_output_is_kept_unless_overwrite(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "out"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out)
    proc = run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--overwrite", "--val-docs", 3)
    assert fmt.read_manifest(out)["splits"]["val"]["documents"] == 3


def test_validation_splits(tmp_path, corpus_jsonl, tokenizer_path, documents):
    out = tmp_path / "last"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--val-docs", 7, "--batch-mb", 1)
    assert decoded_documents(out, "val") == documents[-7:]
    assert decoded_documents(out, "train") == documents[:-7]
    out = tmp_path / "fraction"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--val-fraction", 0.1)
    val = [d for i, d in enumerate(documents) if int((i + 1) * 0.1) > int(i * 0.1)]
    assert decoded_documents(out, "val") == val
    assert len(decoded_documents(out, "train")) == len(documents) - len(val)


def test_bos_and_no_eos(tmp_path, corpus_jsonl, tokenizer_path, documents):
    tok = Tokenizer.from_file(str(tokenizer_path))
    out = tmp_path / "out"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--no-eos", "--bos", "--bos-token", "<pad>")
    data = fmt.open_split(out, "train")
    assert data.document(0).tolist() == [1] + tok.encode(documents[0], add_special_tokens=False).ids


def test_vocab_over_65535_is_packed_as_uint32(tmp_path, tokenizer_path):
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.add_tokens([f"zzword{i}" for i in range(70_000)])
    big = tmp_path / "big.json"
    tok.save(str(big))
    (tmp_path / "c.jsonl").write_text('{"text": "a zzword69999 b zzword3"}\n{"text": "plain"}\n')
    out = tmp_path / "out"
    run_cli("pack", tmp_path / "c.jsonl", "--tokenizer", big, "--out", out)
    manifest = fmt.read_manifest(out)
    data = fmt.open_split(out, "train")
    assert manifest["dtype"] == "uint32" and data.tokens.dtype == np.dtype("<u4")
    assert int(data.tokens.max()) == tok.token_to_id("zzword69999") > 65535
    assert decoded_documents(out) == ["a zzword69999 b zzword3", "plain"]


def test_killed_pack_leaves_nothing_a_reader_accepts(tmp_path, tokenizer_path, documents):
    corpus = tmp_path / "big.jsonl"
    write_jsonl(corpus, mixed_documents(documents, 30_000_000, seed=2))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pytrain", "pack", str(corpus), "--tokenizer", str(tokenizer_path),
                             "--out", str(out), "--batch-mb", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*/train/tokens.bin")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the pack finished before it could be killed; use a larger corpus"
    assert not out.exists()
    with pytest.raises(PytrainError, match="no such dataset directory"):
        fmt.read_manifest(out)
    for debris in tmp_path.glob(".out.tmp-*"):
        with pytest.raises(PytrainError, match="no manifest.json"):
            fmt.read_manifest(debris)


def test_overwrite_only_replaces_an_earlier_pack(tmp_path, corpus_jsonl, tokenizer_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    proc = run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", precious, "--overwrite", check=False)
    assert proc.returncode == 2 and "refusing to replace it" in proc.stderr
    assert (precious / "thesis.txt").read_text() == "do not delete"
    (tmp_path / "afile").write_text("x")
    proc = run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", tmp_path / "afile", "--overwrite", check=False)
    assert proc.returncode == 2 and (tmp_path / "afile").read_text() == "x"


def test_outputs_get_ordinary_permissions(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "out"
    run_cli("pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, env={})
    import os
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_truncated_gzip_empty_input_and_typed_paths(tmp_path, tokenizer_path):
    payload = "".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(3000))
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(payload.encode())[:-500])
    proc = run_cli("pack", tmp_path / "t.jsonl.gz", "--tokenizer", tokenizer_path, "--out", tmp_path / "o1", check=False)
    assert proc.returncode == 2 and "corrupt or truncated gzip" in proc.stderr
    (tmp_path / "empty.jsonl").write_text("")
    proc = run_cli("pack", tmp_path / "empty.jsonl", "--tokenizer", tokenizer_path, "--out", tmp_path / "o2", check=False)
    assert proc.returncode == 2 and "no documents left to pack" in proc.stderr
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a string", "another"], "n": [1, 2]}), tmp_path / "p.parquet")
    proc = run_cli("pack", tmp_path / "p.parquet", "--field", "n", "--tokenizer", tokenizer_path, "--out", tmp_path / "o3", check=False)
    assert proc.returncode == 2 and "p.parquet:row 0: field .n is a int, not a string" in proc.stderr
    proc = run_cli("pack", tmp_path / "p.parquet", "--jq", ".text[0]", "--tokenizer", tokenizer_path, "--out", tmp_path / "o4", check=False)
    assert proc.returncode == 2 and "missing or null field .text[0]" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--threads", "100000"], "--threads must be between 0"),
    (["--val-docs", "1000000"], "--val-docs 1000000 holds out all"),
    (["--jq", ".m[99999999999999999999].c"], "is too large"),
])
def test_out_of_range_options(tmp_path, corpus_jsonl, tokenizer_path, args, message):
    proc = run_cli("pack", corpus_jsonl, *args, "--tokenizer", tokenizer_path, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_tokenizer_with_id_gaps_and_a_template_post_processor(tmp_path, tokenizer_path):
    from tokenizers import processors

    spec = json.loads(tokenizer_path.read_text())
    spec["model"]["vocab"]["<|begin_of_text|>"] = 1000  # ids 600..999 unused: 601 tokens, largest id 1000
    spec["added_tokens"].append({"id": 1000, "content": "<|begin_of_text|>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1000)])
    tok.save(str(tmp_path / "llama-style.json"))
    (tmp_path / "c.jsonl").write_text('{"text": "hello world"}\n')
    out = tmp_path / "out"
    run_cli("pack", tmp_path / "c.jsonl", "--bos", "--tokenizer", tmp_path / "llama-style.json", "--out", out)
    manifest = fmt.read_manifest(out)
    assert manifest["vocab_size"] == 1001 and manifest["bos_id"] == 1000
    ids = fmt.open_split(out, "train").document(0).tolist()
    assert ids[0] == 1000 and ids.count(1000) == 1 and ids[-1] == 0  # one BOS (ours, not the template's), EOS last
    run_cli("verify", out)


def _peak_rss_mb(args) -> float:
    """Peak resident memory of one `pytrain pack` child, from the kernel's accounting (os.wait4)."""
    import os

    proc = subprocess.Popen([sys.executable, "-m", "pytrain", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read().decode()
    return usage.ru_maxrss / 1024


def test_memory_stays_bounded_when_the_input_grows(tmp_path, documents):
    """8 MB and 28 MB inputs with a byte-level tokenizer (about one token per byte: 19 M more tokens, 38 MB more even
    as uint16). Both reach the pipeline's steady state (1 MB batches in flight, about 15 MB of scheduling
    noise); a writer that kept the tokens, or a reader that kept the input, would add 20-40 MB or more.
    The bound is absolute: 20 MB of growth (and the 1.3x ratio the test began with)."""
    unit = tmp_path / "unit.jsonl"
    write_jsonl(unit, mixed_documents(documents, 2_000_000, seed=3))
    tokenizer = tmp_path / "bytes.json"
    run_cli("tokenizer", "train", unit, "--vocab-size", 262, "--out", tokenizer)  # 256 bytes + a few merges
    corpora = []
    for copies in (4, 14):
        corpora.append(tmp_path / f"x{copies}.jsonl")
        with open(corpora[-1], "wb") as handle:
            for _ in range(copies):
                handle.write(unit.read_bytes())
    rss = [_peak_rss_mb(["pack", corpus, "--tokenizer", tokenizer, "--out", tmp_path / corpus.stem, "--batch-mb", 1])
           for corpus in corpora]
    tokens = [fmt.read_manifest(tmp_path / corpus.stem)["splits"]["train"]["tokens"] for corpus in corpora]
    assert tokens[1] - tokens[0] > 18_000_000  # what a token-keeping writer would hold: > 36 MB as uint16
    message = f"peak RSS {rss[0]:.0f} MB for 8 MB of input, {rss[1]:.0f} MB for 28 MB"
    assert rss[1] - rss[0] < 20, message
    assert rss[1] < 1.3 * rss[0], message
