"""Reading DCP checkpoints without running pickled code.

DCP stores its `.metadata` file as a pickle. `SafeFileSystemReader` reads it with an unpickler that only builds
the plain metadata classes DCP itself writes (dataclasses of shapes, dtypes and file offsets) and refuses any other
global, so a tampered checkpoint cannot run code on load. Tensor data is raw bytes. Non-tensor entries (an
optimizer's lr, betas, ...) are torch.save'd objects that DCP's default planner reads with `weights_only=False`;
`SafeLoadPlanner` reads them with `weights_only=True` instead. Load with both.
"""

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem

from olmo_train.errors import CheckpointError

METADATA_FILE = ".metadata"

_ALLOWED_MODULE_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix"},
    "torch.distributed.checkpoint._extension": {"ExtensionRegistry", "StreamTransformExtension"},
    "torch": {"Size", "strided", "contiguous_format", "channels_last", "preserve_format"},
    "torch.serialization": {"_get_layout"},
    "collections": {"OrderedDict"},
    "pathlib": {"PosixPath", "PurePosixPath"},
    "pathlib._local": {"PosixPath", "PurePosixPath"},
    "builtins": {"set", "frozenset", "tuple", "list", "dict", "slice"},
}
_DTYPE_NAMES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED_MODULE_GLOBALS.get(module, ()) or (module == "torch" and name in _DTYPE_NAMES):
            return super().find_class(module, name)
        raise CheckpointError(
            f"{self._source} asks to build '{module}.{name}', which is not part of DCP's metadata format; "
            "refusing to unpickle it (a checkpoint never needs to run code). Re-save the checkpoint with "
            "torch.distributed.checkpoint, or do not load files from an untrusted source.")


def read_dcp_metadata(path: str | Path) -> Metadata:
    """The `.metadata` of the DCP checkpoint directory `path`, unpickled with an allow-list (no code runs)."""
    meta_path = Path(path) / METADATA_FILE
    try:
        data = meta_path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read DCP metadata {meta_path}: {e}; is {path} a DCP checkpoint "
                              "directory (it should hold .metadata and *.distcp files)?") from e
    try:
        metadata = _MetadataUnpickler(data, meta_path).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(f"DCP metadata {meta_path} is damaged ({type(e).__name__}: {e}); "
                              "use another checkpoint") from e
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{meta_path} holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata


def tensor_shapes(metadata: Metadata) -> dict[str, dict[str, Any]]:
    """{flattened key: {"shape": [...], "dtype": "float32"}} of every tensor entry in a DCP checkpoint."""
    out: dict[str, dict[str, Any]] = {}
    for key, item in metadata.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            out[key] = {"shape": list(item.size), "dtype": str(item.properties.dtype).removeprefix("torch.")}
    return out


class SafeFileSystemReader(FileSystemReader):
    """DCP's FileSystemReader, with `.metadata` read through the allow-list unpickler above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"per-rank DCP metadata is not supported (checkpoint {self.path})")
        metadata = read_dcp_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor entries with `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint entry '{read_item.dest_index.fqn}' is not plain data and would "
                                  f"need to run code to load ({e}); refusing to load it") from e
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
