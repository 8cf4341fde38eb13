"""What a run trains and evaluates on: the mixture of `data.mixture`'s sources, or of `data.path` alone.

The loop sees one interface either way: the manifest and tokenizer that describe the data, a training
dataset with `next_batch`/`state_dict`, an evaluator, and the per-source progress fields of a mixture.
"""

from __future__ import annotations

from pathlib import Path

from pytrain.config import DataSection
from pytrain.errors import PytrainError
from pytrain.train.distributed import Distributed, all_gather_object
from pytrain.train.evaluate import Evaluator, MixtureEvaluator


class RunData:
    def __init__(self, data: DataSection):
        from pytrain.sampling.mixture import Mixture

        self.section = data
        self.mixture = Mixture(data.mixture) if data.mixture else Mixture.of_path(data.path)
        self.pack_dir = self.mixture.first_pack
        self.manifest = self.mixture.manifest
        self.notes: list[str] = []

    @property
    def pack_dirs(self) -> list[Path]:
        """Every pack the run reads (a mixture's shards included), for the data.verify check."""
        return [shard.path for source in self.mixture.sources for shard in source.shards]

    @property
    def tokenizer_file(self) -> Path:
        return self.pack_dir / "tokenizer.json"

    def train_dataset(self, seq_len: int, seed: int, d: Distributed):
        return self.mixture.train_dataset(seq_len, seed, d.rank, d.world_size, self.section.shuffle)

    def evaluator(self, seq_len: int, d: Distributed, micro: int, max_batches: int):
        """An Evaluator of data.path's val split, or for a mixture a MixtureEvaluator of each source's (sources
        without one are left out, with a note in self.notes)."""
        masking = self.section.document_masking
        datasets, notes = self.mixture.validation_datasets(seq_len, d.rank, d.world_size)
        if not self.section.mixture:
            if not datasets:
                raise PytrainError(f"evaluation needs a validation split (or set train.eval_every=0): {notes[0]}; "
                                   "pack with --val-docs/--val-fraction")
            return Evaluator(datasets[next(iter(datasets))][1], micro, max_batches, masking, d.device)
        self.notes = notes
        if not datasets:
            raise PytrainError("evaluation needs a validation split in at least one data.mixture source (pack "
                               "with --val-docs/--val-fraction, or set train.eval_every=0)")
        return MixtureEvaluator({name: (weight, Evaluator(dataset, micro, max_batches, masking, d.device))
                                 for name, (weight, dataset) in datasets.items()})

    def describe(self) -> list[str]:
        """What the run trains on, for the start of train.log: with data.mixture one line per source (its share
        of the samples, weight / sum of weights, and its data), else one line for data.path."""
        from pytrain.progress import human

        total = sum(source.weight for source in self.mixture.sources)
        lines = []
        for source in self.mixture.sources:
            tokens = sum(int(shard.manifest["splits"].get("train", {}).get("tokens", 0)) for shard in source.shards)
            where = (str(source.shards[0].path) if len(source.shards) == 1 else
                     f"{len(source.shards)} packs in {source.shards[0].path.parent}")
            data = f"{human(tokens)} training tokens in {where}"
            lines.append(f"data.mixture {source.name}: {source.weight / total:.1%} of samples (weight {source.weight:g}), "
                         f"{data}" if self.section.mixture else f"data: {data}")
        return lines

    def progress(self, dataset) -> dict:
        """A mixture's tokens_by_source and epoch_by_source for a training row; nothing for data.path."""
        return dataset.progress() if self.section.mixture else {}

    def verify(self, mode: str, d: Distributed) -> None:
        """data.verify: check every pack before trusting it (one process per node reads the files; every
        rank raises the same error)."""
        from pytrain.data.verify import verify_pack

        if mode == "none":
            return
        packs = self.pack_dirs
        problems = [p for pack in packs for p in verify_pack(pack, mode)] if d.local_rank == 0 else []
        found = sorted({p for rank_problems in all_gather_object(problems) for p in rank_problems})
        if found:
            where = f"data.path {packs[0]}" if len(packs) == 1 else f"{len(packs)} packs of data.mixture"
            raise PytrainError(f"{where} failed the {mode} check ({len(found)} problem(s)): {'; '.join(found)}; "
                               "re-pack, or see `pytrain verify DIR` (data.verify=none skips this check)")
