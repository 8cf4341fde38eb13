"""`pytrain pack`: documents -> tokens.bin / index.idx / manifest.json, as a 3-stage pipeline.

    reader thread   native line index + JSON extraction (GIL released)   -> texts
    main thread     native BPE encoder or tokenizer.encode_batch_fast (GIL released) -> ids
    writer thread   native narrowing to uint16/uint32, split routing, write + sha256

Bounded queues between the stages keep the tokenizer busy while the neighbours work and
keep memory flat. Batches stay in input order, so the output is byte-identical for any
thread count. The native encoder (--encoder, see fast_bpe.py) gives the same ids as `tokenizers`
where it is used; it also frames and narrows text documents, so the writer only routes them.
Everything is written into a temporary directory renamed into place after manifest.json, so a
killed run leaves nothing a reader accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pytrain import __version__
from pytrain.data import format as fmt
from pytrain.data.format import SplitWriter
from pytrain.tokenizer.fast_bpe import FastBpe, fast_encoder
from pytrain.data.documents import ChatDocuments, TextDocuments
from pytrain.data.sources import DEFAULT_MAX_DOC_BYTES, ReadSettings, describe_path, open_sources, parse_field_path
from pytrain.tokenizer.files import (
    BOS_CANDIDATES, EOS_CANDIDATES, max_token_id, read_tokenizer, special_token_id, vocab_size,
)
from pytrain.errors import PytrainError
from pytrain.fsutil import atomic_directory
from pytrain.progress import ProgressBar, human
from pytrain.safe_read import read_json

_DONE = object()


@dataclass
class PackOptions:
    field: str | None = None  # default: "text", or "messages" for chat
    jq: str | None = None
    format: str = "text"  # "text" documents, or "chat" conversations with an assistant-only loss mask
    txt_split: str = "file"
    on_bad_line: str = "error"
    append_eos: bool = True
    prepend_bos: bool = False
    eos_token: str | None = None
    bos_token: str | None = None
    threads: int = 0
    val_docs: int = 0
    val_fraction: float = 0.0
    batch_bytes: int = 2 << 20  # as fast as 8 MB in bench_pack, half the peak memory
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES  # larger documents are refused before the tokenizer
    overwrite: bool = False
    progress: bool | None = None
    encoder: str = "auto"  # "fast" (native BPE, exact where supported), "tokenizers", or "auto" (fast if supported)
    split: str | None = None  # hf: inputs: the split to read (default train)

    def validate(self) -> None:
        if self.format not in ("text", "chat"):
            raise PytrainError(f"--format must be 'text' or 'chat', not {self.format!r}")
        if self.format == "chat" and not self.append_eos:
            raise PytrainError("--format chat ends every assistant turn with EOS; drop --no-eos")
        if self.encoder not in ("auto", "fast", "tokenizers"):
            raise PytrainError(f"--encoder must be 'auto', 'fast' or 'tokenizers', not {self.encoder!r}")
        if self.on_bad_line not in ("error", "skip"):
            raise PytrainError(f"--on-bad-line must be 'error' or 'skip', not {self.on_bad_line!r}")
        if self.val_docs < 0:
            raise PytrainError(f"--val-docs must be >= 0, not {self.val_docs}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise PytrainError(f"--val-fraction must be in [0, 1), not {self.val_fraction}")
        if self.val_docs and self.val_fraction:
            raise PytrainError("pass --val-docs or --val-fraction, not both")
        if not 1 << 16 <= self.batch_bytes <= 1 << 30:
            raise PytrainError(f"--batch-mb must be between {2**-4:g} and 1024 (MB of input per batch), not {self.batch_bytes / 2**20:g}")
        if not 1 << 10 <= self.max_doc_bytes <= 1 << 40:
            raise PytrainError(f"--max-doc-mb must be between {2**-10:g} and {2**20} (MB), not {self.max_doc_bytes / 2**20:g}")
        cores = os.cpu_count() or 1
        if not 0 <= self.threads <= 8 * cores:
            raise PytrainError(f"--threads must be between 0 (all cores) and {8 * cores} (8 per core), not {self.threads}")


class SplitRouter:
    """Sends each document to train or val.

    `val_fraction` F: document i goes to val iff floor((i+1)F) > floor(iF) — an exact,
    evenly spread fraction decided while streaming. `val_docs` N: the last N documents,
    held in a ring of at most N documents until the input ends.
    """

    def __init__(self, train: SplitWriter, val: SplitWriter | None, val_docs: int, val_fraction: float):
        self.train, self.val = train, val
        self.val_docs, self.val_fraction = val_docs, val_fraction
        self.seen = 0
        self._ring: deque[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = deque()
        self._ring_docs = 0

    def route(self, tokens: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> None:
        first, self.seen = self.seen, self.seen + len(lengths)
        if self.val is None:
            self.train.write(tokens, lengths, mask)
        elif self.val_fraction:
            index = np.arange(first, self.seen, dtype=np.float64)
            to_val = np.floor((index + 1) * self.val_fraction) > np.floor(index * self.val_fraction)
            per_token = np.repeat(to_val, lengths)
            self.train.write(tokens[~per_token], lengths[~to_val], None if mask is None else mask[~per_token])
            self.val.write(tokens[per_token], lengths[to_val], None if mask is None else mask[per_token])
        else:
            self._ring.append((tokens, lengths, mask))
            self._ring_docs += len(lengths)
            self._spill_ring()

    def _spill_ring(self) -> None:
        while self._ring_docs > self.val_docs:
            tokens, lengths, mask = self._ring[0]
            extra = self._ring_docs - self.val_docs
            if extra >= len(lengths):
                self._ring.popleft()
                self.train.write(tokens, lengths, mask)
                self._ring_docs -= len(lengths)
            else:
                cut = int(lengths[:extra].sum())
                self.train.write(tokens[:cut], lengths[:extra], None if mask is None else mask[:cut])
                self._ring[0] = (tokens[cut:], lengths[extra:], None if mask is None else mask[cut:])
                self._ring_docs -= extra

    def finish(self) -> None:
        for tokens, lengths, mask in self._ring:
            self.val.write(tokens, lengths, mask)
        self._ring.clear()


class _Stage(threading.Thread):
    """A pipeline thread that hands its exception to whoever joins it.

    Not a daemon: a daemon thread still inside the native extension when the interpreter shuts
    down is killed by a forced unwind that aborts the process ("terminate called without an
    active exception", seen when SIGTERM arrived while the stages started). Stages stop on
    their own once the main thread has ended (see `failed` in `pack`)."""

    def __init__(self, name, target):
        super().__init__(name=name, daemon=False)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as error:  # re-raised in the main thread
            self.error = error


def _put(q: queue.Queue, item, failed) -> bool:
    """Put `item`, giving up (False) as soon as any stage has failed."""
    while not failed():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, failed):
    """Next item, or _DONE as soon as any stage has failed."""
    while not failed():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _DONE


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (`tokenizer`: a tokenizers.Tokenizer or a FastBpe).

    The ids are taken here, on the thread that calls the tokenizer, so each batch's Encoding
    objects are freed before the next batch is encoded: freeing them on another thread while
    the tokenizer allocates made the allocator cost ~15% more CPU (measured in bench_pack).
    """
    if isinstance(tokenizer, FastBpe):
        return tokenizer.encode_lists(texts)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]


def _encode_documents(tokenizer, documents: list, chat: bool) -> list:
    """Ids per document; for chat, ids per segment of each conversation (None for EOS).

    All segments of a batch go to the tokenizer in a single call, so chat data is batched too.
    """
    if not chat:
        return _encode(tokenizer, documents)
    texts = [text for conversation in documents for text, _ in conversation if text is not None]
    encoded = iter(_encode(tokenizer, texts) if texts else [])
    return [[next(encoded) if text is not None else None for text, _ in conversation] for conversation in documents]


def _chat_ids_and_mask(conversations: list, encoded: list, eos_id: int, bos: bool) -> tuple[list[list[int]], np.ndarray]:
    """Concatenate each conversation's segment ids (EOS by id) and build its per-token loss mask."""
    ids, mask_parts = [], []
    for conversation, segments in zip(conversations, encoded):
        doc, flags = [], [0] if bos else []
        for (_, trained), segment_ids in zip(conversation, segments):
            piece = [eos_id] if segment_ids is None else segment_ids
            doc += piece
            flags += [int(trained)] * len(piece)
        ids.append(doc)
        mask_parts.append(flags)
    mask = np.fromiter((f for flags in mask_parts for f in flags), dtype=np.uint8)
    return ids, mask


def pack(inputs, tokenizer, out, options: PackOptions | None = None, *, parts=None,
         manifest_extra: dict | None = None) -> dict:
    """Pack `inputs` with `tokenizer` (a tokenizer.json path) into the directory `out`; return the manifest.

    `parts` (pytrain.data.shard): the slice of each input to read; `manifest_extra`: keys added to the manifest.
    """
    packer = Packer(inputs, tokenizer, options or PackOptions(), parts=parts)
    started = time.perf_counter()
    manifest = packer.run(out, manifest_extra or {})
    _print_summary(Path(out), manifest, packer.sources.total_bytes, time.perf_counter() - started)
    return manifest


class Packer:
    """One `pytrain pack` run: the tokenizer, ids and inputs resolved once (every bad option or input is refused
    before anything is written), then the three stages over bounded queues: `read` (a thread), `encode`
    (the calling thread) and `write` (a thread)."""

    def __init__(self, inputs, tokenizer, options: PackOptions, parts=None):
        options.validate()
        if options.threads:
            # Sizes the tokenizer's thread pool, which is created on its first parallel call.
            os.environ["RAYON_NUM_THREADS"] = str(options.threads)
        self.inputs, self.options = list(inputs), options
        self.tok, self.tokenizer_bytes, self.tokenizer_path = read_tokenizer(tokenizer)
        self.eos_id = special_token_id(self.tok, options.eos_token, EOS_CANDIDATES, "EOS", self.tokenizer_path)
        self.bos_id = special_token_id(self.tok, options.bos_token, BOS_CANDIDATES, "BOS", self.tokenizer_path)
        if options.append_eos and self.eos_id is None:
            raise PytrainError(f"{self.tokenizer_path}: no EOS token found (looked for {', '.join(EOS_CANDIDATES)}); "
                               "pass --eos-token NAME or --no-eos")
        if options.prepend_bos and self.bos_id is None:
            raise PytrainError(f"{self.tokenizer_path}: no BOS token found (looked for {', '.join(BOS_CANDIDATES)}); "
                               "pass --bos-token NAME or drop --bos")
        self.top_id = max_token_id(self.tok)
        self.dtype = fmt.dtype_for_vocab(self.top_id)
        self.chat = options.format == "chat"
        self.field_path = parse_field_path(options.field, options.jq, chat=self.chat)
        documents = ChatDocuments(self.tok.id_to_token(self.eos_id)) if self.chat else TextDocuments()
        self.sources = open_sources(inputs, ReadSettings(
            self.field_path, documents, txt_split=options.txt_split, on_bad_line=options.on_bad_line,
            batch_bytes=options.batch_bytes, max_doc_bytes=options.max_doc_bytes, threads=options.threads,
            max_token_id=self.top_id, token_dtype=self.dtype, frame_ids=self._framing(), hf_split=options.split), parts)
        self.tokenizing = tokenizing = not all(reader.reads_token_ids for reader in self.sources.readers)  # else the encoder is idle
        self.fast = _choose_encoder(options.encoder, self.tokenizer_bytes, self.tok, self.tokenizer_path,
                                    options.threads) if tokenizing else None
        self.texts_q: queue.Queue = queue.Queue(maxsize=2)
        self.ids_q: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.stages: list[_Stage] = []
        self.bytes_done = self.empty_after_tokenizing = 0

    def _framing(self) -> tuple[int, int]:
        """The (BOS, EOS) ids every document starts / ends with (-1: none); ready ids get them only where missing,
        so ids that carry their own EOS (Megatron's --append-eod, or a pack converted back) keep exactly one."""
        return (self.bos_id if self.options.prepend_bos else -1, self.eos_id if self.options.append_eos else -1)

    def run(self, out, manifest_extra: dict) -> dict:
        options = self.options
        target = Path(out).resolve()
        for folder in (Path(p).resolve() for p in self.sources.guarded if Path(p).is_dir()):
            if target == folder or folder in target.parents:
                raise PytrainError(f"{out}: lies inside the input {folder}; pytrain never writes into an input, choose another --out")
        self.bar = ProgressBar(self.sources.total_bytes, enabled=options.progress)
        with atomic_directory(out, overwrite=options.overwrite, command="pack",
                              inputs=[*self.sources.guarded, self.tokenizer_path], legacy_files=_legacy_pack_files) as tmp:
            self.train = SplitWriter(tmp, "train", self.dtype, with_mask=self.chat)
            self.val = (SplitWriter(tmp, "val", self.dtype, with_mask=self.chat)
                        if options.val_docs or options.val_fraction else None)
            self.router = SplitRouter(self.train, self.val, options.val_docs, options.val_fraction)
            with open(tmp / fmt.REJECTS, "w", encoding="utf-8") as self.rejects_file:
                self._run_stages()
                self.router.finish()
            if not self.sources.rejected:
                (tmp / fmt.REJECTS).unlink()
            splits = self._close_splits()
            (tmp / fmt.TOKENIZER).write_bytes(self.tokenizer_bytes)
            manifest = {**self._manifest(splits), **manifest_extra}
            with open(tmp / fmt.MANIFEST, "w", encoding="utf-8") as handle:
                json.dump(manifest, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
        return manifest

    # ------------------------------------------------------------------ the pipeline
    def _failed(self) -> bool:
        return (self.stop.is_set() or any(stage.error is not None for stage in self.stages)
                or not threading.main_thread().is_alive())

    def _run_stages(self) -> None:
        self.stages = [_Stage("pytrain-pack-reader", self.read), _Stage("pytrain-pack-writer", self.write)]
        try:
            for stage in self.stages:
                stage.start()
            self.encode()
        except BaseException:
            self.stop.set()
            raise
        finally:
            for stage in self.stages:
                if stage.ident is not None:  # started (an interrupt may come before or while they start)
                    stage.join()
        for stage in self.stages:
            if stage.error is not None:
                raise stage.error
        self._show_progress(force=True)
        self.bar.close()

    def read(self) -> None:
        """Stage 1 (thread): windows of the inputs, decoded into documents by the native extractor."""
        for batch in self.sources.batches():
            if not _put(self.texts_q, batch, self._failed):
                return
        _put(self.texts_q, _DONE, self._failed)

    def encode(self) -> None:
        """Stage 2 (this thread): token ids, from the native encoder (framed and narrowed) or `tokenizers`."""
        framing = (*self._framing(), self.dtype.name)
        while (batch := _get(self.texts_q, self._failed)) is not _DONE:
            if batch.tokens is not None:  # token ids read as they are (a Megatron dataset), framed by the reader
                ids = None
            elif self.fast is not None and not self.chat:
                ids = self.fast.encode_framed(batch.texts, *framing)
            else:
                ids = _encode_documents(self.fast or self.tok, batch.texts, self.chat) if batch.texts else []
            if not _put(self.ids_q, (batch, ids), self._failed):
                return
        _put(self.ids_q, _DONE, self._failed)

    def write(self) -> None:
        """Stage 3 (thread): narrow to the pack's dtype, route to train/val, write and hash, log rejects."""
        from pytrain import _native

        while (item := _get(self.ids_q, self._failed)) is not _DONE:
            batch, ids = item
            mask = None
            if ids is None:  # ready token ids, framed by their reader
                tokens, lengths = batch.tokens, batch.lengths
            elif isinstance(ids, tuple):  # already framed and narrowed by the fast encoder
                tokens, lengths, dropped = ids
                self.empty_after_tokenizing += dropped
            else:
                if self.chat:
                    ids, mask = _chat_ids_and_mask(batch.texts, ids, self.eos_id, self.options.prepend_bos)
                elif not all(ids):
                    self.empty_after_tokenizing += sum(1 for x in ids if not x)
                    ids = [x for x in ids if x]
                tokens, lengths = _native.narrow_tokens(
                    ids, self.dtype.name, self.bos_id if self.options.prepend_bos else -1,
                    self.eos_id if self.options.append_eos and not self.chat else -1,
                )
            self.router.route(tokens, lengths, mask)
            for record in batch.rejects:
                self.rejects_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.bytes_done += batch.nbytes
            self._show_progress()

    def _show_progress(self, force: bool = False) -> None:
        self.bar.update(self.bytes_done, self.router.seen,
                        self.train.tokens + (self.val.tokens if self.val else 0), force=force)

    # ------------------------------------------------------------------ the result
    def _close_splits(self) -> dict:
        options, seen = self.options, self.router.seen
        splits = {"train": self.train.close()}
        if self.val is not None:
            splits["val"] = self.val.close()
        if splits["train"]["documents"] == 0:
            if seen and options.val_docs:
                raise PytrainError(f"--val-docs {options.val_docs} holds out all {seen} documents, "
                                   "leaving none to train on; lower it")
            raise PytrainError(f"no documents left to pack from {', '.join(map(str, self.inputs))} "
                               f"({self.sources.empty_documents} empty, {sum(self.sources.rejected.values())} rejected)")
        if self.val is not None and splits["val"]["documents"] == 0:
            print(f"warning: the validation split is empty ({seen} documents, --val-fraction "
                  f"{options.val_fraction}); raise it for a usable validation set", file=sys.stderr)
        return splits

    def _manifest(self, splits: dict) -> dict:
        options, sources = self.options, self.sources
        return {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "pytrain_version": __version__,
            "created_unix": time.time(),
            "dtype": self.dtype.name,
            "vocab_size": vocab_size(self.tok, self.top_id),
            "max_token_id": self.top_id,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "append_eos": options.append_eos,
            "document_format": options.format,
            "loss_mask": self.chat,
            "prepend_bos": options.prepend_bos,
            "tokenizer": {"file": fmt.TOKENIZER, "source": str(self.tokenizer_path.resolve()),
                          "sha256": hashlib.sha256(self.tokenizer_bytes).hexdigest()},
            "field": describe_path(self.field_path),
            "txt_split": options.txt_split,
            "sources": sources.per_source,
            "validation": {"val_docs": options.val_docs, "val_fraction": options.val_fraction},
            "splits": splits,
            "documents_read": sources.documents,
            "empty_documents": sources.empty_documents + self.empty_after_tokenizing,
            "blank_lines": sources.blank_lines,
            "rejected": dict(sorted(sources.rejected.items())),
            "options": {k: v for k, v in asdict(options).items()
                        if k in ("on_bad_line", "batch_bytes", "max_doc_bytes", "encoder")},
            "encoder": "fast" if self.fast is not None else "tokenizers" if self.tokenizing else "none",
        }


def _choose_encoder(choice: str, tokenizer_bytes: bytes, tok, tokenizer_path: Path, threads: int) -> FastBpe | None:
    """The native encoder when `choice` allows it and the tokenizer is supported, else None (tokenizers)."""
    if choice == "tokenizers":
        return None
    try:
        fast, why_not = fast_encoder(tokenizer_bytes, tok, threads)
    except PytrainError as error:  # malformed in a way tokenizers accepts (names the key)
        raise PytrainError(f"{tokenizer_path}: {error}") from None
    if fast is None:
        if choice == "fast":
            raise PytrainError(f"{tokenizer_path}: --encoder fast does not support this tokenizer ({why_not}); "
                               "use --encoder tokenizers or auto")
        print(f"encoder: tokenizers (the fast encoder does not support this tokenizer: {why_not})", file=sys.stderr)
    return fast


def _legacy_pack_files(path: Path) -> set[str] | None:
    """The files a pack written before output markers holds, recognised by its manifest; else None."""
    try:
        manifest = read_json(path / fmt.MANIFEST)
        if manifest.get("format") != fmt.FORMAT_NAME:
            return None
        names = {fmt.MANIFEST, fmt.TOKENIZER} | ({fmt.REJECTS} if manifest.get("rejected") else set())
        for split in manifest["splits"]:
            names |= {f"{split}/tokens.bin", f"{split}/index.idx"} | ({f"{split}/mask.bin"} if manifest.get("loss_mask") else set())
        return names
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def _print_summary(out: Path, manifest: dict, total_bytes: int, seconds: float) -> None:
    splits = manifest["splits"]
    tokens = sum(s["tokens"] for s in splits.values())
    parts = [f"{name} {human(s['documents'])} docs / {human(s['tokens'])} tokens" for name, s in splits.items()]
    print(f"packed {out}: " + ", ".join(parts) + f" ({manifest['dtype']})")
    extras = [f"{manifest['empty_documents']} empty documents skipped"] if manifest["empty_documents"] else []
    extras += [f"{n} {reason} rejected" for reason, n in manifest["rejected"].items()]
    if extras:
        print("  " + ", ".join(extras) + (f"; see {out / fmt.REJECTS}" if manifest["rejected"] else ""))
    print(f"  {seconds:.2f} s, {human(tokens / max(seconds, 1e-9))} tokens/s, "
          f"{total_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s of input, encoder {manifest['encoder']}")
