"""`pytrain inspect DIR`: what is in a packed dataset, and what document N says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pytrain.data import format as fmt
from pytrain.tokenizer.files import load_tokenizer
from pytrain.progress import human


def length_histogram(lengths: np.ndarray, bins: int = 12, width: int = 40) -> list[str]:
    """Text histogram of document lengths on log2-spaced bins."""
    if len(lengths) == 0:
        return ["  (no documents)"]
    top = max(2, int(lengths.max()) + 1)
    edges = np.unique(np.geomspace(1, top, num=bins + 1).astype(np.int64))
    counts, edges = np.histogram(lengths, bins=edges)
    scale = width / max(1, counts.max())
    return [f"  {lo:>8}-{hi - 1:<8} {n:>10} {'#' * int(round(n * scale))}"
            for lo, hi, n in zip(edges[:-1], edges[1:], counts)]


MASK_OPEN, MASK_CLOSE = "\u27e6", "\u27e7"


def render_masked(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> str:
    """Decode a document run by run, bracketing the runs whose loss is masked."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    parts = []
    for run_tokens, run_mask in zip(np.split(tokens, edges), np.split(mask, edges)):
        text = tokenizer.decode(run_tokens.tolist(), skip_special_tokens=False)
        parts.append(text if run_mask[0] else f"{MASK_OPEN}{text}{MASK_CLOSE}")
    return "".join(parts)


def validation_summary(manifest: dict) -> dict:
    """The validation split as packed: its document count, and the option that chose it (the manifest records
    both --val-docs and --val-fraction, the unused one as 0, which alone reads as "no validation documents")."""
    options = manifest.get("validation") or {}
    return {"documents": int(manifest["splits"].get("val", {}).get("documents", 0)),
            **{option: value for option, value in options.items() if value}}


def inspect_dataset(root, split: str = "train", doc: int | None = None, bins: int = 12) -> None:
    manifest = fmt.read_manifest(root)
    shown = {k: v for k, v in manifest.items() if k not in ("sources", "splits")}
    if "validation" in shown:
        shown["validation"] = validation_summary(manifest)
    print(json.dumps(shown, indent=2))
    print("sources:")
    for source in manifest["sources"]:
        print(f"  {source['path']} ({source['kind']}, {human(source['size'], 'B')}): {source['documents']} documents")
    for name, info in manifest["splits"].items():
        print(f"split {name}: {info['documents']} documents, {info['tokens']} tokens")
    data = fmt.open_split(root, split, manifest)
    lengths = np.diff(data.offsets)
    if len(lengths):
        print(f"{split} document length (tokens): min {lengths.min()}, median {int(np.median(lengths))}, "
              f"mean {lengths.mean():.1f}, max {lengths.max()}")
    print("\n".join(length_histogram(lengths, bins)))
    if doc is not None:
        tokens = data.document(doc)
        tokenizer = load_tokenizer(Path(root) / fmt.TOKENIZER)
        print(f"--- {split} document {doc}: {len(tokens)} tokens ---")
        if data.mask is None:
            print(tokenizer.decode(tokens.tolist(), skip_special_tokens=False))
        else:
            mask = data.mask[data.offsets[doc]:data.offsets[doc + 1]]
            print(f"(loss-masked spans, not trained, are shown in {MASK_OPEN}...{MASK_CLOSE}; "
                  f"{int(mask.sum())} of {len(mask)} tokens trained)")
            print(render_masked(tokenizer, tokens, mask))
