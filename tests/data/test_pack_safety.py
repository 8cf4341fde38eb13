"""Issue 9, data side: `--overwrite` replaces only pytrain's own outputs, interrupted runs leave
nothing behind (or are restored), and bad input or options end in one line, exit code 2."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import check_second_writer_refused, one_line_refusal, run_cli, snapshot
from pytrain import fsutil
from pytrain.data import format as fmt
from pytrain.data.corpus import mixed_documents, write_jsonl
from pytrain.data.pack import PackOptions, pack
from pytrain.errors import PytrainError


def assert_refused(proc, *fragments):
    line = one_line_refusal(proc)
    for fragment in fragments:
        assert fragment in line, line


def pack_cli(inputs, tokenizer, out, *extra, check=False, cwd=None):
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return run_cli("pack", *inputs, "--tokenizer", tokenizer, "--out", out, *extra, check=check, cwd=cwd)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- --overwrite
def test_overwrite_refuses_a_foreign_folder_with_a_manifest(tmp_path, corpus_jsonl, tokenizer_path):
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "src" / "main.py").write_text("print('mine')\n")
    (app / "manifest.json").write_text("{}")
    before = snapshot(app)
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, app, "--overwrite"), "refusing to replace", "no valid .pytrain-output.json")
    assert snapshot(app) == before
    assert not list(tmp_path.glob(".app.*"))


def test_overwrite_refuses_a_pack_holding_an_input_or_a_foreign_file(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "P"
    pack_cli(corpus_jsonl, tokenizer_path, out, check=True)
    (out / "corpus.jsonl").write_bytes(corpus_jsonl.read_bytes())
    before = snapshot(out)
    assert_refused(pack_cli(out / "corpus.jsonl", tokenizer_path, out, "--overwrite"), "holds this command's input")
    assert_refused(pack_cli(corpus_jsonl, out / "tokenizer.json", out, "--overwrite"), "holds this command's input")
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite"), "corpus.jsonl, which pytrain did not write")
    assert snapshot(out) == before
    (out / "corpus.jsonl").unlink()
    (out / "train" / "notes").mkdir()
    (out / "train" / "notes" / "n.txt").write_text("x")
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite"), "train/notes/n.txt")
    (out / "train" / "notes" / "n.txt").unlink()
    (out / "train" / "notes").rmdir()
    os.symlink(tmp_path, out / "link")  # a link would make a recursive delete reach outside
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite"), "link, which pytrain does not write")
    (out / "link").unlink()
    with open(out / "train" / "tokens.bin", "ab") as handle:  # resized: not what pytrain wrote
        handle.write(b"\0\0")
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite"), "train/tokens.bin changed size")
    with open(out / "train" / "tokens.bin", "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 2)
    proc = pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite", "--val-docs", "3", check=True)
    assert fmt.read_manifest(out)["splits"]["val"]["documents"] == 3, proc.stderr
    assert not list(tmp_path.glob(".P.*"))


def test_overwrite_accepts_a_pack_from_before_markers_only_with_its_exact_files(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "legacy"
    pack_cli(corpus_jsonl, tokenizer_path, out, check=True)
    (out / fsutil.OUTPUT_MARKER).unlink()
    (out / "extra.txt").write_text("keep me")
    before = snapshot(out)
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite"), "extra.txt, which pytrain did not write")
    assert snapshot(out) == before
    (out / "extra.txt").unlink()
    pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite", "--val-docs", "2", check=True)
    assert fmt.read_manifest(out)["splits"]["val"]["documents"] == 2
    assert fsutil.read_output_marker(out)["command"] == "pack"


def test_replace_rules_for_every_command(tmp_path):
    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "config.json").write_text("{}")
    (run / "log.txt").write_text("x")
    fsutil.write_output_marker(run, "demo")
    assert fsutil.why_not_replaceable(run, "demo") is None
    assert "output of `pytrain demo`, not of `pytrain pack`" in fsutil.why_not_replaceable(run, "pack")
    assert "holds this command's input" in fsutil.why_not_replaceable(run, "demo", inputs=[run / "log.txt"])
    assert "lies inside this command's input" in fsutil.why_not_replaceable(run / "hf", "demo", inputs=[run])
    os.symlink(run, tmp_path / "alias")  # inputs are compared after resolving links
    assert "holds this command's input" in fsutil.why_not_replaceable(run, "demo", inputs=[tmp_path / "alias" / "log.txt"])
    (run / "plot.png").write_text("later")
    assert "plot.png, which pytrain did not write" in fsutil.why_not_replaceable(run, "demo")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fsutil.why_not_replaceable(empty, "export") is None
    (tmp_path / "file").write_text("x")
    assert fsutil.why_not_replaceable(tmp_path / "file", "export") == "it is not a directory"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / fsutil.OUTPUT_MARKER).write_text('{"format": "pytrain-output", "files": [{"path": 3}]}')
    assert "no valid" in fsutil.why_not_replaceable(bad, "export")


# ----------------------------------------------------------------------------- one writer per output
def _writers(tmp_path, corpus_jsonl, tokenizer_path):
    """command -> (its arguments, the output it writes, the path whose rename the first writer stalls before)."""
    pack_dir = tmp_path / "P"
    pack([corpus_jsonl], tokenizer_path, pack_dir, PackOptions(progress=False))
    out = tmp_path / "out"
    return {
        "pack": (["pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out], out, out),
        "pack --shard": (["pack", corpus_jsonl, "--tokenizer", tokenizer_path, "--out", out, "--shard", "1/2"],
                         out / "shard-00001-of-00002", out / "shard-00001-of-00002"),
        "tokenizer train": (["tokenizer", "train", corpus_jsonl, "--vocab-size", 300, "--out", tmp_path / "tok.json"],
                            tmp_path / "tok.json", tmp_path / "tok.json"),
        "convert": (["convert", pack_dir, "--to", "megatron", out / "c"], out / "c", out / "c.bin"),
        "demo": (["demo", "--small", "--out", out], out, out / fsutil.OUTPUT_MARKER),
    }


@pytest.mark.parametrize("command", ["pack", "pack --shard", "tokenizer train", "convert", "demo"])
def test_a_second_writer_of_the_same_output_is_refused(tmp_path, corpus_jsonl, tokenizer_path, command):
    args, final, stall_at = _writers(tmp_path, corpus_jsonl, tokenizer_path)[command]
    check_second_writer_refused(args, final, stall_at, tmp_path, finish=command != "demo")  # (a demo trains: long)
    if command != "demo":
        assert final.exists() or final.with_name(final.name + ".bin").exists()


def test_the_lock_is_on_the_file_under_the_name(tmp_path, monkeypatch):
    """A holder removes the lock file on release; a writer that opened it just before must not believe it holds the
    removed file's lock (a third writer would lock the new one): the lock is retried on the file under the name."""
    final = tmp_path / "out"
    lock_file = fsutil.lock_file_of(final)
    lock_file.write_text("")
    real_flock, swapped = fsutil.fcntl.flock, []

    def released_between_open_and_lock(handle, operation):
        if not swapped:  # the previous holder releases: unlinks the file; a third writer creates a new one
            swapped.append(os.stat(lock_file).st_ino)
            lock_file.unlink()
            lock_file.write_text("")
        return real_flock(handle, operation)

    monkeypatch.setattr(fsutil.fcntl, "flock", released_between_open_and_lock)
    with fsutil.output_lock(final, "pack"):
        monkeypatch.undo()
        assert swapped
        with open(lock_file) as other:  # what a third writer sees: the file under the name is locked
            with pytest.raises(BlockingIOError):
                fsutil.fcntl.flock(other, fsutil.fcntl.LOCK_EX | fsutil.fcntl.LOCK_NB)
    assert not lock_file.exists()


# ----------------------------------------------------------------------------- interrupted swaps
def test_an_interrupted_swap_is_restored_by_the_next_verify_and_pack(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "P"
    pack_cli(corpus_jsonl, tokenizer_path, out, check=True)
    before = snapshot(out)
    hidden = tmp_path / f".P.old-{dead_pid()}"
    os.replace(out, hidden)  # what a kill between the two renames leaves
    proc = run_cli("verify", out)
    assert "restored" in proc.stderr and hidden.name in proc.stderr
    assert snapshot(out) == before and not hidden.exists()
    os.replace(out, hidden)
    pack_cli(corpus_jsonl, tokenizer_path, out, "--overwrite", "--val-docs", "4", check=True)
    assert fmt.read_manifest(out)["splits"]["val"]["documents"] == 4 and not hidden.exists()
    os.replace(out, hidden)
    assert fmt.read_manifest(out)["splits"]["val"]["documents"] == 4  # any reader restores it


def test_two_interrupted_swaps_say_where_both_are(tmp_path, corpus_jsonl, tokenizer_path):
    out = tmp_path / "P"
    pack_cli(corpus_jsonl, tokenizer_path, out, check=True)
    first, second = tmp_path / f".P.old-{dead_pid()}", tmp_path / f".P.old-{dead_pid()}"
    os.replace(out, first)
    (tmp_path / "other").mkdir()
    os.replace(tmp_path / "other", second)
    proc = run_cli("verify", out, check=False)
    assert_refused(proc, str(first), str(second), "rename the one to keep")
    assert first.exists() and second.exists() and not out.exists()


def test_a_failure_inside_the_two_rename_swap_puts_the_old_pack_back(tmp_path, corpus_jsonl, tokenizer_path, monkeypatch):
    out = tmp_path / "P"
    pack([corpus_jsonl], tokenizer_path, out, PackOptions(progress=False))
    before = snapshot(out)
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    real_replace, moved_away = os.replace, []

    def killed_after_the_first_rename(src, dst):
        if len(moved_away) == 1:  # the second rename of the swap (tmp -> P): Ctrl-C arrives
            moved_away.append("interrupted")
            raise KeyboardInterrupt
        if Path(dst).name.startswith(".P.old-"):
            moved_away.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        pack([corpus_jsonl], tokenizer_path, out, PackOptions(progress=False, overwrite=True, val_docs=3))
    monkeypatch.undo()
    assert moved_away
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P"]


def test_the_atomic_exchange_replaces_without_a_window(tmp_path, corpus_jsonl, tokenizer_path, monkeypatch):
    if fsutil._renameat2_exchange() is None:
        pytest.skip("no renameat2 on this system")
    out = tmp_path / "P"
    pack([corpus_jsonl], tokenizer_path, out, PackOptions(progress=False))
    real_replace = os.replace

    def no_old_name(src, dst):
        assert ".old-" not in Path(dst).name, "two-rename swap used"
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", no_old_name)
    pack([corpus_jsonl], tokenizer_path, out, PackOptions(progress=False, overwrite=True, val_docs=3))
    monkeypatch.undo()
    assert fmt.read_manifest(out)["splits"]["val"]["documents"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P"]


# ----------------------------------------------------------------------------- signals and shrinking inputs
def _start_big_pack(tmp_path, tokenizer_path, documents):
    corpus = tmp_path / "big.jsonl"
    write_jsonl(corpus, mixed_documents(documents, 30_000_000, seed=3))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pytrain", "pack", str(corpus), "--tokenizer", str(tokenizer_path),
                             "--out", str(out), "--batch-mb", "1", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*/train/tokens.bin")) and time.time() < deadline:
        time.sleep(0.01)
    return proc, corpus, out


def test_sigterm_during_pack_removes_the_temporary_folder(tmp_path, tokenizer_path, documents):
    proc, _, out = _start_big_pack(tmp_path, tokenizer_path, documents)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_an_input_truncated_while_packed_is_a_one_line_error(tmp_path, tokenizer_path, documents):
    proc, corpus, out = _start_big_pack(tmp_path, tokenizer_path, documents)
    os.truncate(corpus, corpus.stat().st_size // 3)  # with a memory map this was a SIGBUS
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(corpus) in err and "changed while being packed" in err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


# ----------------------------------------------------------------------------- bad input, bad options
def test_a_corrupt_deflate_block_names_the_file(tmp_path, tokenizer_path, documents):
    import zlib

    raw = "".join(json.dumps({"text": d}) + "\n" for d in documents).encode()
    data = bytearray(gzip.compress(raw, mtime=0))
    data[20:28] = bytes(b ^ 0xFF for b in data[20:28])  # inside the first block's Huffman tables
    with pytest.raises(zlib.error):  # the reference: what gzip itself raises on this stream
        gzip.decompress(bytes(data))
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(bytes(data))
    proc = pack_cli(bad, tokenizer_path, tmp_path / "out")
    assert_refused(proc, str(bad), "corrupt or truncated gzip data near line 1", "invalid bit length repeat")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    data[len(data) // 2] ^= 0xFF  # and a flip further on: a CRC or deflate error, one line either way
    bad.write_bytes(bytes(data))
    assert_refused(pack_cli(bad, tokenizer_path, tmp_path / "out"), str(bad))


def test_jq_keys_with_spaces_and_bad_escapes(tmp_path, tokenizer_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"key with spaces": "first doc", "meta": {"a\\q": "x"}}) + "\n"
                      + json.dumps({"key with spaces": "second doc"}) + "\n")
    out = tmp_path / "out"
    pack_cli(corpus, tokenizer_path, out, "--jq", '.["key with spaces"]', check=True)
    assert fmt.read_manifest(out)["splits"]["train"]["documents"] == 2
    assert_refused(pack_cli(corpus, tokenizer_path, tmp_path / "o2", "--jq", '.meta["a\\q"]'), "--jq", "bad escape")
    pack_cli(corpus, tokenizer_path, tmp_path / "o3", "--jq", '.meta["a\\\\q"]', "--on-bad-line", "skip", check=True)
    assert fmt.read_manifest(tmp_path / "o3")["splits"]["train"]["documents"] == 1


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e30", "0.001"])
def test_batch_mb_out_of_range_is_refused(tmp_path, corpus_jsonl, tokenizer_path, value):
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, tmp_path / "out", "--batch-mb", value), "--batch-mb")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_max_doc_mb_out_of_range_is_refused(tmp_path, corpus_jsonl, tokenizer_path, value):
    assert_refused(pack_cli(corpus_jsonl, tokenizer_path, tmp_path / "out", "--max-doc-mb", value), "--max-doc-mb")


# ----------------------------------------------------------------------------- --max-doc-mb
def _decoded(root):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / fmt.TOKENIZER))
    data = fmt.open_split(root, "train")
    return [tok.decode(data.document(d).tolist(), skip_special_tokens=True) for d in range(data.num_docs)]


def test_max_doc_mb_stops_at_the_line_or_skips_it(tmp_path, tokenizer_path):
    huge = "word " * 60_000  # 300 kB, longer than a whole --batch-mb 0.0625 window
    docs = ["small one", huge, "small two", "x" * 2000, "small three"]  # line 4: 2013 bytes
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    limit = ["--max-doc-mb", str(2000 / 2**20)]  # 2000 bytes
    assert_refused(pack_cli(corpus, tokenizer_path, tmp_path / "e", *limit), f"{corpus}:2:", "--max-doc-mb")
    for batch in ("0.0625", "2"):  # the oversized line spans windows, or sits inside one
        out = tmp_path / f"s{batch}"
        pack_cli(corpus, tokenizer_path, out, *limit, "--on-bad-line", "skip", "--batch-mb", batch, check=True)
        assert _decoded(out) == ["small one", "small two", "small three"]
        assert fmt.read_manifest(out)["rejected"] == {"too_large": 2}
        rejects = [json.loads(line) for line in (out / fmt.REJECTS).read_text().splitlines()]
        assert [(r["location"], r["reason"]) for r in rejects] == [("2", "too_large"), ("4", "too_large")]
        assert all("raw" not in r for r in rejects)
    run_cli("verify", tmp_path / "s2")


def test_max_doc_mb_for_text_files_paragraphs_and_parquet(tmp_path, tokenizer_path):
    limit = ["--max-doc-mb", str(2000 / 2**20), "--on-bad-line", "skip"]
    (tmp_path / "big.txt").write_text("y " * 1500)
    (tmp_path / "ok.txt").write_text("fine file")
    out = tmp_path / "files"
    pack_cli([tmp_path / "big.txt", tmp_path / "ok.txt"], tokenizer_path, out, *limit, check=True)
    assert _decoded(out) == ["fine file"] and fmt.read_manifest(out)["rejected"] == {"too_large": 1}
    (tmp_path / "paras.txt").write_text("first para\n\n" + "z " * 40_000 + "\n\nlast para\n")
    out = tmp_path / "paras"
    pack_cli(tmp_path / "paras.txt", tokenizer_path, out, "--txt-split", "paragraph", "--batch-mb", "0.0625", *limit, check=True)
    assert _decoded(out) == ["first para", "last para"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["cell one", "é" * 1200, "cell three"]}), tmp_path / "t.parquet")  # 2400 bytes
    out = tmp_path / "pq"
    pack_cli(tmp_path / "t.parquet", tokenizer_path, out, *limit, check=True)
    assert _decoded(out) == ["cell one", "cell three"]
    assert_refused(pack_cli(tmp_path / "t.parquet", tokenizer_path, tmp_path / "pq2", "--max-doc-mb", str(2000 / 2**20)),
                   "t.parquet:row 1:")


def test_default_max_doc_size_keeps_ordinary_documents(tmp_path, tokenizer_path):
    from pytrain.data.sources import DEFAULT_MAX_DOC_BYTES

    assert DEFAULT_MAX_DOC_BYTES == 16 << 20
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a" * (1 << 20)}) + "\n")  # 1 MB: a whole book
    out = tmp_path / "out"
    pack_cli(corpus, tokenizer_path, out, check=True)
    assert int(np.asarray(fmt.open_split(out, "train").offsets)[-1]) > 0


def test_demo_overwrite_refuses_a_folder_it_did_not_finish(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "corpus.jsonl").write_text('{"text": "mine"}\n')  # what the demo used to take as proof enough
    (run / "thesis.tex").write_text("do not delete")
    before = snapshot(run)
    proc = run_cli("demo", "--small", "--out", run, "--overwrite", check=False)
    assert_refused(proc, "has no demo .pytrain-output.json, so the demo will not delete it")
    assert snapshot(run) == before


def test_export_overwrite_follows_the_same_rule(tmp_path, tokenizer_path):
    from pytrain.export import export_model
    from pytrain.model import Llama, preset

    config = preset("tiny", vocab_size=600)
    model = Llama(config)
    model.init_weights(seed=0)
    out = tmp_path / "hf"
    export_model(model, config, tokenizer_path, out)
    assert fsutil.read_output_marker(out)["command"] == "export"
    (out / "README.md").write_text("my model card")
    before = snapshot(out)
    with pytest.raises(PytrainError, match="README.md, which pytrain did not write"):
        export_model(model, config, tokenizer_path, out, overwrite=True)
    with pytest.raises(PytrainError, match="holds this command's input"):
        export_model(model, config, out / "tokenizer.json", out, overwrite=True)
    assert snapshot(out) == before
    (out / "README.md").unlink()
    export_model(model, config, tokenizer_path, out, overwrite=True, dtype="bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
