"""Data: tokenizer training, packing, the packed dataset and its sampler."""
