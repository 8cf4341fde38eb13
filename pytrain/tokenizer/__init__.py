"""Tokenizers: train a BPE (train, styles), load any tokenizer.json with keyed errors (files, checks), and
the native fast encoders `pytrain pack` uses when they reproduce `tokenizers` exactly (fast_bpe,
fast_sentencepiece, bpe_support, bpe_unicode)."""
