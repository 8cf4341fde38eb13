"""Packing: reading documents (readers/, sources, chat, documents), `pytrain pack` into the packed format
(pack, format, shard), checking it (verify, inspect) and converting Megatron's (megatron).

The two rooms beside it: pytrain.tokenizer (train, load and fast-encode tokenizers; pack uses it) and
pytrain.sampling (what training reads from packs: streams, mixtures, the dataset)."""
