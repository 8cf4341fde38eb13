"""A Llama-2-style tokenizer.json without a download: Mistral 7B v0.1's SentencePiece model, which the
`mistral-common` PyPI package ships (mistral_common/data/tokenizer.model.v1; *.model.v3 is Mistral 7B
v0.3's), converted by transformers' own LlamaConverter. Needs `pip install mistral-common sentencepiece
protobuf` (the test extra has them).

    python benchmarks/llama2_tokenizer.py benchmarks/results/llama2-tokenizer.json [--metaspace]

legacy (the default) gives the pipeline of the published Llama-2, TinyLlama and Mistral v0.1 files
(normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer); --metaspace transformers' non-legacy
conversion (Metaspace(prepend_scheme="first", split=false), as Mistral v0.3 publishes it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace


def mistral_model(name: str) -> Path:
    """A SentencePiece model file shipped inside the mistral-common package."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / name


def mistral_json(name: str, legacy: bool) -> str:
    """transformers' LlamaConverter output for a shipped model: legacy=True is the Llama-2 / Mistral v0.1
    pipeline (Prepend + Replace), legacy=False the Metaspace(prepend_scheme="first", split=False) one."""
    from sentencepiece import SentencePieceProcessor
    from transformers.convert_slow_tokenizer import LlamaConverter, SentencePieceExtractor, generate_merges

    class ScoredExtractor(SentencePieceExtractor):
        """The extractor as transformers 4 called it (vocab, merges ranked by piece score); transformers 5's
        SpmConverter still calls it that way, but its extractor's extract() now takes a model class."""

        def extract(self, vocab_scores=None):
            vocab = {piece.piece: i for i, piece in enumerate(self.proto.pieces)}
            return vocab, generate_merges(vocab, vocab_scores)

    class Converter(LlamaConverter):
        SpmExtractor = ScoredExtractor

    path = mistral_model(name)
    processor = SentencePieceProcessor(model_file=str(path))
    # What LlamaConverter reads of the slow LlamaTokenizer (gone from transformers 5): its file and settings.
    slow = SimpleNamespace(vocab_file=str(path), legacy=legacy, add_prefix_space=True,
                           convert_ids_to_tokens=processor.id_to_piece)
    return Converter(slow).converted().to_str()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="tokenizer.model.v1", help="a file in mistral_common/data")
    parser.add_argument("--metaspace", action="store_true", help="the non-legacy (Metaspace) pipeline")
    args = parser.parse_args(argv)
    args.out.write_text(mistral_json(args.model, legacy=not args.metaspace), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
