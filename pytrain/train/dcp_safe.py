"""Reading `torch.distributed.checkpoint` (DCP) checkpoints without running code from them.

Stock DCP unpickles `.metadata` with `pickle.load` and every non-tensor value with
`torch.load(weights_only=False)`: a crafted checkpoint runs arbitrary code on load. Here:
- `.metadata` goes through `MetadataUnpickler`, which resolves only the classes DCP metadata is made of
  (and torch dtypes/layouts/sizes); any other global is refused with a one-line error;
- the storage entries are checked to point at plain file names inside the checkpoint (no `../`);
- non-tensor values (optimizer hyper-parameters) load with `torch.load(weights_only=True)`, as tensors
  already do in DCP's reader.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element  # DCP's own helper, as its planner uses it
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata

from pytrain.errors import PytrainError

_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that only builds DCP metadata objects."""

    def __init__(self, file, where: Path):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                         torch.memory_format)):
            return getattr(torch, name)
        raise PytrainError(f"{self.where}: refusing to load {module}.{name}: a checkpoint's metadata may only "
                           "hold DCP metadata classes (the file is corrupt or crafted)")


def read_metadata(path: Path) -> Metadata:
    """A checkpoint's `.metadata`, unpickled through the allow-list and checked for shape."""
    try:
        with open(path, "rb") as handle:
            metadata = MetadataUnpickler(handle, path).load()
    except PytrainError:
        raise
    except Exception as error:  # truncated, garbage, wrong pickle protocol: never a traceback
        raise PytrainError(f"{path}: unreadable checkpoint metadata ({type(error).__name__}: "
                           f"{' '.join(str(error).split())[:200]})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise PytrainError(f"{path}: not DCP checkpoint metadata (got {type(metadata).__name__})")
    for info in metadata.storage_data.values():
        relative = getattr(info, "relative_path", None)
        if not isinstance(relative, str) or Path(relative).name != relative or relative in ("", ".", ".."):
            raise PytrainError(f"{path}: a storage entry points outside the checkpoint ({relative!r})")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file reader with the allow-listed metadata unpickler."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        metadata = read_metadata(Path(self.path) / ".metadata")
        if getattr(metadata, "storage_meta", None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, loading non-tensor values with `weights_only=True`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except Exception as error:
            raise PytrainError(f"checkpoint value {read_item.dest_index.fqn}: refused or unreadable "
                               f"({' '.join(str(error).split())[:200]})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
