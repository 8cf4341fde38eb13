"""Sampling: what training reads from packs. Per-source shuffled streams of fixed-length samples
(source_stream, samples), weighted mixtures of sources (mixture) and the dataset the loop draws batches
from (dataset)."""
