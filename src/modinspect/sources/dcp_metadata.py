"""The `.metadata` file of a torch.distributed.checkpoint directory, read without executing it.

`.metadata` is a pickle of `torch.distributed.checkpoint.metadata.Metadata`. It is read in two
layers, like torch files: `check_pickle` bounds what it may cost before anything is unpickled;
then an unpickler maps each allowed class to an inert local record (no torch import, no code from
the file), whose `__setstate__` keeps only fields of the types it expects. Any other global becomes
an inert stand-in and is refused by name once the whole pickle is read.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import IO, Any

from modinspect import dtypes
from modinspect.errors import CorruptFileError, UnsafePickleError
from modinspect.sources.pickle.check import DEFAULT_MAX_PICKLE, check_pickle
from modinspect.sources.pickle.gate import (
    TORCH_DTYPE_NAMES,
    UNPICKLE_ERRORS,
    extension_code,
    python3_name,
    quiet_decoding,
)
from modinspect.sources.pickle.refs import DtypeRef
from modinspect.sources.pickle.standins import StandInRegistry

_DCP = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"


class _Record:
    """An inert stand-in for one DCP metadata class: plain attributes, set once from the pickle's state."""

    FIELDS: tuple[str, ...] = ()

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {
                **(state[0] or {}),
                **state[1],
            }  # (dict, slots) from a dataclass with __slots__
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise CorruptFileError(f"gives a {type(self).__name__} a state that is not a field map")
        for key in self.FIELDS:
            object.__setattr__(self, key, state.get(key))


class Metadata(_Record):
    FIELDS = ("state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version")
    state_dict_metadata: dict[str, Any]


class TensorStorageMetadata(_Record):
    FIELDS = ("properties", "size", "chunks")


class BytesStorageMetadata(_Record):
    FIELDS = ()


class ChunkStorageMetadata(_Record):
    FIELDS = ("offsets", "sizes")


class MetadataIndex(_Record):
    FIELDS = ("fqn", "offset", "index")


class StorageInfo(_Record):
    FIELDS = ("relative_path", "offset", "length", "transform_descriptors")


class StorageMeta(_Record):
    FIELDS = ("checkpoint_id", "save_id", "load_id", "modules")


class TensorProperties(_Record):
    FIELDS = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")

    def __setstate__(self, state: object) -> None:
        # torch >= 2.1 pickles (dtype, layout, requires_grad, memory format code, pin_memory).
        if isinstance(state, tuple) and len(state) == 5:
            state = dict(zip(self.FIELDS, state, strict=True))
        super().__setstate__(state)


class _Call:
    """An allowlisted function, sealed: the pickle's BUILD opcode cannot set attributes on it (its defaults)."""

    __slots__ = ("_fn",)
    _fn: Any

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: object) -> object:
        return self._fn(*args)

    def __setattr__(self, name: str, value: object) -> None:
        raise CorruptFileError("tries to modify a function the DCP metadata reader allows")

    def __setstate__(self, state: object) -> None:
        raise CorruptFileError("tries to modify a function the DCP metadata reader allows")


def _torch_size(*args: object) -> tuple[object, ...]:
    return tuple(args[0]) if args and isinstance(args[0], tuple | list) else tuple(args)


def _path(*parts: object) -> str:
    return "/".join(str(p) for p in parts)


def _layout(name: object) -> str:
    return str(name)


def _mem_format(code: object) -> object:
    return code


_RECORDS: dict[str, type[_Record]] = {
    "Metadata": Metadata,
    "TensorStorageMetadata": TensorStorageMetadata,
    "BytesStorageMetadata": BytesStorageMetadata,
    "ChunkStorageMetadata": ChunkStorageMetadata,
    "MetadataIndex": MetadataIndex,
    "StorageMeta": StorageMeta,
    "TensorProperties": TensorProperties,
}

ALLOWED: dict[tuple[str, str], object] = {
    **{(_DCP, name): cls for name, cls in _RECORDS.items()},
    # torch 2.0 kept TensorProperties with ShardedTensor's metadata.
    ("torch.distributed._shard.sharded_tensor.metadata", "TensorProperties"): TensorProperties,
    (_FS, "_StorageInfo"): StorageInfo,
    (_DCP, "_MEM_FORMAT_ENCODING"): _Call(_mem_format),
    ("torch.serialization", "_get_layout"): _Call(_layout),
    ("torch", "Size"): _Call(_torch_size),
    ("collections", "OrderedDict"): OrderedDict,
    **{
        ("pathlib", name): _Call(_path)
        for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path")
    },
    # Sealed (pickle_gate's own): BUILD cannot rewrite these shared dtype objects for every later file.
    **{("torch", name): DtypeRef(dtypes.canonical(name)) for name in TORCH_DTYPE_NAMES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, encoding="utf-8")
        self.refused: list[str] = []
        self._standins = StandInRegistry()

    def find_class(self, module: str, name: str) -> Any:
        module, name = python3_name(module, name)
        found = ALLOWED.get((module, name))
        if found is not None:
            return found
        dotted = f"{module}.{name}"
        if dotted not in self.refused:
            self.refused.append(dotted)
        return self._standins.cls(dotted)  # inert; read on so the refusal names every such global

    def persistent_load(self, pid: Any) -> Any:
        raise CorruptFileError("refers to a persistent object, which DCP metadata never does")


# the errors the torch-file reader turns into one line when unpickling, and MemoryError
_ERRORS = (*UNPICKLE_ERRORS, MemoryError)


def load_metadata(data: bytes, label: str) -> Metadata:
    """The Metadata record of `.metadata` bytes; UnsafePickleError names any global outside the allowlist."""
    try:
        check_pickle(data, 0, DEFAULT_MAX_PICKLE)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{label} {exc}") from None
    stream: IO[bytes] = io.BytesIO(data)
    unpickler = _Unpickler(stream)
    try:
        with quiet_decoding():
            obj = unpickler.load()
    except CorruptFileError as exc:
        if unpickler.refused:
            raise UnsafePickleError(label, unpickler.refused) from None
        raise CorruptFileError(f"{label} is not valid DCP metadata: it {exc}") from None
    except _ERRORS as exc:
        if unpickler.refused:
            raise UnsafePickleError(label, unpickler.refused) from None
        extension = extension_code(exc)
        if extension is not None:
            raise UnsafePickleError(label, [f"<copyreg extension {extension}>"]) from None
        raise CorruptFileError(
            f"{label} is not valid DCP metadata ({type(exc).__name__}: {exc})"
        ) from None
    if unpickler.refused:
        raise UnsafePickleError(label, unpickler.refused)
    if not isinstance(obj, Metadata) or not isinstance(
        getattr(obj, "state_dict_metadata", None), dict
    ):
        raise CorruptFileError(f"{label} is not DCP metadata (it holds a {type(obj).__name__})")
    return obj


def load_metadata_unsafe(data: bytes, label: str) -> Metadata:
    """--unsafe-pickle: plain pickle.loads (it runs the file's code), then the same inert records."""
    try:
        obj = pickle.loads(data)
    except Exception as exc:
        raise CorruptFileError(
            f"{label} failed to unpickle even with --unsafe-pickle ({type(exc).__name__}: {exc})"
        ) from exc
    return _as_records(obj, label)


def _record(cls: type[_Record], **fields: object) -> Any:
    rec = cls()
    rec.__setstate__(fields)
    return rec


def _as_records(obj: object, label: str) -> Metadata:
    """A real torch Metadata object rewritten as the records the safe path builds."""
    entries = getattr(obj, "state_dict_metadata", None)
    if not isinstance(entries, dict):
        raise CorruptFileError(f"{label} is not DCP metadata (it holds a {type(obj).__name__})")
    converted: dict[str, Any] = {}
    for fqn, entry in entries.items():
        if not hasattr(entry, "chunks"):
            converted[fqn] = _record(BytesStorageMetadata)
            continue
        dtype = str(getattr(entry.properties, "dtype", "")).removeprefix("torch.")
        chunks = [
            _record(ChunkStorageMetadata, offsets=tuple(c.offsets), sizes=tuple(c.sizes))
            for c in entry.chunks
        ]
        converted[fqn] = _record(
            TensorStorageMetadata,
            properties=_record(TensorProperties, dtype=DtypeRef(dtype)),
            size=tuple(entry.size),
            chunks=chunks,
        )
    storage = {
        _record(
            MetadataIndex,
            fqn=k.fqn,
            offset=None if k.offset is None else tuple(k.offset),
            index=k.index,
        ): _record(
            StorageInfo,
            relative_path=v.relative_path,
            offset=v.offset,
            length=v.length,
            transform_descriptors=getattr(v, "transform_descriptors", None),
        )
        for k, v in (getattr(obj, "storage_data", None) or {}).items()
    }
    return _record(  # type: ignore[no-any-return]
        Metadata,
        state_dict_metadata=converted,
        storage_data=storage,
        version=getattr(obj, "version", None),
    )


def dtype_name(props: object) -> str | None:
    """The torch dtype name of a TensorProperties record, or None."""
    dtype = getattr(props, "dtype", None) if isinstance(props, TensorProperties) else None
    if isinstance(dtype, DtypeRef):
        return dtype.name
    return None


__all__ = [
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "Metadata",
    "MetadataIndex",
    "StorageInfo",
    "TensorProperties",
    "TensorStorageMetadata",
    "dtype_name",
    "load_metadata",
]
