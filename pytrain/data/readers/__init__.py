"""One reader class per `pytrain pack` input format, behind the interface in `base` (see `Reader`).

`open_reader` recognises an input (by its name, a folder's marker files, a Megatron index's magic, or the
`hf:` prefix) and returns the reader for it.
"""

from __future__ import annotations

from pathlib import Path

from pytrain.data import megatron as megatron_format
from pytrain.data.readers.base import Reader
from pytrain.data.readers.columnar import ArrowReader, ParquetReader, arrow_bytes
from pytrain.data.readers.hf import PREFIX as HF_PREFIX, HfReader
from pytrain.data.readers.jsonl import GzipJsonlReader, JsonlReader
from pytrain.data.readers.megatron import MegatronReader
from pytrain.data.readers.text import TextReader
from pytrain.errors import PytrainError
from pytrain.safe_read import require_regular

READERS: dict[str, type[Reader]] = {cls.kind: cls for cls in (
    JsonlReader, GzipJsonlReader, TextReader, ParquetReader, ArrowReader, MegatronReader, HfReader)}


def input_kind(given) -> str:
    """The format of one input as given on the command line; refuses what no reader reads."""
    if str(given).startswith(HF_PREFIX):
        return HfReader.kind
    path = Path(given)
    if (pair := megatron_format.pair_paths(path)) is not None:
        for part in pair:
            if part.exists():  # a missing one is read_index's to name
                require_regular(part, "Megatron dataset file")
        return MegatronReader.kind
    if not path.exists():
        raise PytrainError(f"{path}: no such file or directory")
    name = path.name.lower()
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise PytrainError(f"{path}: a DatasetDict with splits {', '.join(splits)}; pass one split, e.g. {path / splits[0]}" if splits else f"{path}: an empty DatasetDict")
        if (path / "state.json").exists() or (path / "dataset_info.json").exists():
            return ArrowReader.kind
        raise PytrainError(f"{path}: a directory that is not a datasets.save_to_disk folder (no state.json); "
                           f"for a dataset repository folder pass hf:{path}")
    require_regular(path, "document file")
    if name.endswith((".jsonl.gz", ".json.gz", ".ndjson.gz")):
        return GzipJsonlReader.kind
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return JsonlReader.kind
    if name.endswith(".txt"):
        return TextReader.kind
    if name.endswith(".parquet"):
        return ParquetReader.kind
    raise PytrainError(f"{path}: unknown input type; expected .jsonl, .jsonl.gz, .txt, .parquet, a datasets folder, "
                       "a Megatron NAME.idx/NAME.bin pair or hf:NAME")


def open_reader(given, settings, tally, part=None) -> Reader:
    return READERS[input_kind(given)](given if str(given).startswith(HF_PREFIX) else Path(given), settings, tally, part)


def input_bytes(given) -> int:
    """The size of an input's data without opening a reader (shard cuts, identities): the .bin of a Megatron
    pair, the .arrow files of a datasets folder, else the file."""
    kind = input_kind(given)
    if kind == HfReader.kind:
        raise PytrainError(f"{given}: an hf: dataset is streamed, so it has no size to cut into shards; pack it without "
                           "--shard, or save it to disk first (datasets' save_to_disk) and shard that folder")
    if kind == MegatronReader.kind:
        return megatron_format.pair_paths(given)[1].stat().st_size
    return arrow_bytes(Path(given)) if kind == ArrowReader.kind else Path(given).stat().st_size
