"""torch.save files (.pt/.pth/.bin/.ckpt): zip archives, legacy pre-1.6 files and raw pickles.

Listing unpickles `data.pkl` through the weights-only gate, turning storages into references,
so it reads the pickle and nothing else: a 10 GB checkpoint lists as fast as a 10 MB one.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from modinspect.errors import CorruptFileError, UnsafePickleError
from modinspect.sources.base import (
    DTYPE_BITS,
    EntrySummary,
    Source,
    TensorInfo,
    is_row_major,
    read_chunks,
)
from modinspect.sources.kinds import checkpoint_kind
from modinspect.sources.pickle_gate import (
    RestrictedUnpickler,
    StorageRef,
    TensorRef,
    is_safe_global,
    scan_globals,
    storage_from_pid,
)

if TYPE_CHECKING:
    import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "module", "net", "network", "model_state")

_UNPICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError, IndexError,
    KeyError, RecursionError, struct.error, UnicodeDecodeError, OverflowError,
)


def _zip_errors() -> tuple[type[Exception], ...]:
    """What zipfile raises on a damaged archive: RuntimeError for an entry flagged as encrypted,
    zlib.error / LZMAError for a broken deflate / LZMA stream (bz2 raises OSError),
    NotImplementedError for an unknown compression method."""
    errors: list[type[Exception]] = [
        zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError, zlib.error, struct.error,
    ]
    try:
        import lzma
    except ImportError:  # a Python built without it: zipfile cannot read LZMA entries either
        return tuple(errors)
    return (*errors, lzma.LZMAError)


ZIP_ERRORS = _zip_errors()
# DEFLATE cannot expand its input by more than about 1032:1; an entry that claims more is lying.
_MAX_DEFLATE_RATIO = 1032


def zip_member(zf: zipfile.ZipFile, name: str, archive_size: int) -> zipfile.ZipInfo:
    """The entry `name` (KeyError when absent), once its declared sizes are checked against the archive.

    zipfile trusts the central directory: a stored entry that claims 4 GB makes it ask the file for a
    gigabyte at a time before reading a byte. Checked here first, nothing is allocated from a size the
    file cannot back. Raises CorruptFileError with the reason (the caller adds the path).
    """
    info = zf.getinfo(name)
    if info.flag_bits & 0x1:
        raise CorruptFileError(f"entry {name} is encrypted")
    if info.header_offset + info.compress_size > archive_size:
        raise CorruptFileError(
            f"entry {name} declares {info.compress_size:,} bytes at offset {info.header_offset:,}, past the end "
            f"of the {archive_size:,}-byte file"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CorruptFileError(
            f"stored entry {name} declares {info.file_size:,} bytes but occupies {info.compress_size:,}"
        )
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise CorruptFileError(
            f"entry {name} declares {info.file_size:,} bytes from {info.compress_size:,} compressed ones"
        )
    return info


def read_zip_member(zf: zipfile.ZipFile, name: str, archive_size: int, label: str) -> bytes:
    """The bytes of entry `name` after `zip_member`'s checks; KeyError when absent, else CorruptFileError."""
    try:
        info = zip_member(zf, name, archive_size)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{label} is a damaged zip file ({exc})") from None
    try:
        return zf.read(info)
    except ZIP_ERRORS as exc:
        raise CorruptFileError(f"{label} is a damaged zip file ({exc})") from None


def gated_load(path: Path, data: bytes | IO[bytes], loader: Callable[[tuple[object, ...]], StorageRef]) -> Any:
    """Unpickle one pickle through the static scan and then the restricted unpickler."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    start = stream.tell()
    try:
        unsafe = [g for g in scan_globals(stream) if not is_safe_global(g)]
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path} {exc}") from None
    if unsafe:
        raise UnsafePickleError(str(path), unsafe)
    stream.seek(start)
    try:
        return RestrictedUnpickler(stream, loader).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(str(path), exc.globals) from None
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path} is not a valid torch checkpoint: it {exc}") from None
    except _UNPICKLE_ERRORS as exc:
        raise CorruptFileError(f"{path} is not a valid torch checkpoint ({type(exc).__name__}: {exc})") from None


def is_tensor_dict(obj: object, tensor_type: type = TensorRef) -> bool:
    if not isinstance(obj, dict) or not obj:
        return False
    tensors = [v for k, v in obj.items() if not (isinstance(k, str) and k.endswith("_extra_state"))]
    return bool(tensors) and all(isinstance(k, str) for k in obj) and all(isinstance(v, tensor_type) for v in tensors)


def find_state_dict(obj: object, tensor_type: type = TensorRef,
                    _seen: frozenset[int] = frozenset()) -> tuple[dict[str, Any], str | None] | None:
    """The model's state dict inside a checkpoint, and the dotted key path to it (None: top level)."""
    if is_tensor_dict(obj, tensor_type):
        assert isinstance(obj, dict)
        return obj, None
    if not isinstance(obj, dict) or id(obj) in _seen or len(_seen) > 20:
        return None  # a pickle's memo can make a dict contain itself: {'model': <itself>}
    seen = _seen | {id(obj)}
    for key in STATE_DICT_KEYS:
        if key in obj:
            found = find_state_dict(obj[key], tensor_type, seen)
            if found is not None:
                inner, path = found
                return inner, key if path is None else f"{key}.{path}"
    # Otherwise the largest flat tensor dict among the top-level values (never an optimizer's).
    best: tuple[int, str] | None = None
    for key, value in obj.items():
        if (
            isinstance(key, str) and "optim" not in key.lower() and is_tensor_dict(value, tensor_type)
            and (best is None or len(value) > best[0])
        ):
            best = (len(value), key)
    return (obj[best[1]], best[1]) if best else None


def summarize(value: object) -> str:
    """A short description of a checkpoint entry for listings: 'int 12', 'dict (2 keys)'."""
    if isinstance(value, TensorRef) or (hasattr(value, "shape") and hasattr(value, "dtype")):
        dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
        return f"tensor {list(getattr(value, 'shape', ()))} {dtype}"
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"str {value[:40]!r}" + ("…" if len(value) > 40 else "")
    if isinstance(value, dict):
        n = sum(1 for _ in _iter_tensor_refs(value))
        return f"dict ({len(value)} keys" + (f", {n} tensors)" if n else ")")
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} ({len(value)} items)"
    if value is None:
        return "None"
    return type(value).__name__


def _iter_tensor_refs(obj: object) -> Any:
    """Every tensor inside nested dicts, lists and tuples, each container visited once.

    A pickle's memo lets a few bytes describe a dict holding ten references to a dict holding ten
    references to ...: walked as a tree that is 10^20 visits, walked as a graph it is twenty.
    """
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef) or (hasattr(item, "shape") and hasattr(item, "dtype")):
            yield item
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            values = list(item.values()) if isinstance(item, dict) else list(item)
            stack.extend(reversed(values))


def tensor_infos(state: dict[str, TensorRef]) -> list[TensorInfo]:
    infos = []
    for name, ref in state.items():
        if not isinstance(ref, TensorRef):
            continue  # _extra_state entries
        numel = 1
        for d in ref.shape:
            numel *= d
        bits = DTYPE_BITS.get(ref.dtype, 8)
        storage = None
        if ref.storage is not None and numel:
            storage = f"{ref.storage.key}@{ref.offset}:{ref.shape}:{ref.stride}"
        infos.append(
            TensorInfo(
                name=name, shape=ref.shape, dtype=ref.dtype, nbytes=numel * bits // 8,
                kind=checkpoint_kind(name, ref.is_parameter), storage=storage,
                requires_grad=ref.requires_grad if ref.is_parameter else None,
            )
        )
    return infos


class TorchFileSource(Source):
    """Common ground of zip and legacy torch files: the unpickled object and the state dict inside it."""

    def __init__(self, path: Path, label: str, fmt: str, obj: object) -> None:
        self.path = path
        found = find_state_dict(obj)
        if found is None:
            what = summarize(obj)
            raise CorruptFileError(
                f"{path} holds no state dict (a {what}); expected a dict of tensors or a checkpoint with "
                f"one under {', '.join(repr(k) for k in STATE_DICT_KEYS[:4])}"
            )
        self._refs, key = found
        others: list[EntrySummary] = []
        if key is not None and isinstance(obj, dict):
            top = key.split(".")[0]
            others = [EntrySummary(str(k), summarize(v)) for k, v in obj.items() if k != top]
        super().__init__(label=label, format=fmt, tensors=tensor_infos(self._refs), state_dict_key=key,
                         other_entries=others)
        self._cache: tuple[str, bytes] | None = None

    def _storage_bytes(self, ref: StorageRef) -> bytes:
        raise NotImplementedError

    def _storage_of(self, name: str) -> tuple[TensorRef, torch.Tensor]:
        """The tensor's reference and its whole storage as a 1-d tensor, once the view is known to fit in it."""
        import torch

        ref = self._refs[name]
        if ref.storage is None:
            raise CorruptFileError(f"{self.path}: {name!r} is a meta tensor and has no data")
        dtype = _torch_dtype(ref.dtype, name, self.path)
        if self._cache is None or self._cache[0] != ref.storage.key:
            # Views of one storage usually come together: keep the last storage's bytes.
            self._cache = (ref.storage.key, self._storage_bytes(ref.storage))
        raw = self._cache[1]
        itemsize = DTYPE_BITS[ref.storage.dtype] // 8
        if len(raw) != ref.storage.numel * itemsize:
            raise CorruptFileError(
                f"{self.path}: storage {ref.storage.key} holds {len(raw)} bytes, expected {ref.storage.numel * itemsize}"
            )
        try:
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        except (RuntimeError, ValueError, TypeError) as exc:  # quantized dtypes have no plain buffer view
            raise CorruptFileError(f"{self.path}: {name!r} cannot be read as {ref.dtype} ({exc})") from None
        needed = ref.offset + sum((s - 1) * st for s, st in zip(ref.shape, ref.stride, strict=True)) + 1
        if _numel(ref.shape) and needed > flat.numel():
            raise CorruptFileError(f"{self.path}: {name!r} reaches past the end of its storage")
        return ref, flat

    def _read(self, name: str) -> torch.Tensor:
        import torch

        ref, flat = self._storage_of(name)
        if any(s == 0 for s in ref.shape):
            return torch.empty(ref.shape, dtype=flat.dtype)
        return flat.as_strided(ref.shape, ref.stride, ref.offset).clone()

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        """A strided view (a transpose, an expand) gathered from its storage a chunk at a time.

        Materialising it first would allocate its declared size: a stride-0 view of one element can
        claim 2^40 of them in a few bytes of pickle. Gathered, memory stays at one chunk.
        """
        import torch

        ref, flat = self._storage_of(name)
        rows = flat.view(torch.uint8).reshape(flat.numel(), -1)  # one row of bytes per element: any dtype indexes
        numel = _numel(ref.shape)
        for start in range(0, numel, chunk_elems):
            index = torch.arange(start, min(start + chunk_elems, numel), dtype=torch.int64)
            position = torch.full_like(index, ref.offset)
            for size, step in zip(reversed(ref.shape), reversed(ref.stride), strict=True):
                position += (index % size) * step
                index = index.div(size, rounding_mode="floor")
            yield rows[position].reshape(-1).view(flat.dtype)

    def _check_view(self, name: str, ref: TensorRef) -> StorageRef:
        """The storage of a row-major view, once the view is known to lie inside it."""
        if ref.storage is None:
            raise CorruptFileError(f"{self.path}: {name!r} is a meta tensor and has no data")
        _torch_dtype(ref.dtype, name, self.path)
        if ref.offset + _numel(ref.shape) > ref.storage.numel:
            raise CorruptFileError(f"{self.path}: {name!r} reaches past the end of its storage")
        return ref.storage


def _torch_dtype(dtype: str, name: str, path: Path) -> Any:
    import torch

    found = getattr(torch, dtype, None)
    if not isinstance(found, torch.dtype) or dtype not in DTYPE_BITS:
        raise CorruptFileError(f"{path}: {name!r} has dtype {dtype}, which this torch cannot hold")
    return found


class ZipTorchSource(TorchFileSource):
    """A torch.save zip archive (torch >= 1.6): <prefix>/data.pkl plus <prefix>/data/<key> entries."""

    def __init__(self, path: Path, label: str, zf: zipfile.ZipFile, prefix: str) -> None:
        self.path = path
        self._zf = zf
        self._prefix = prefix
        try:
            self._size = path.stat().st_size
        except OSError as exc:
            raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        byteorder = self._read_member("byteorder", optional=True)
        if byteorder not in (None, b"little"):
            raise CorruptFileError(f"{path} was saved on a big-endian machine, which modinspect does not read yet")
        data = self._read_member("data.pkl")
        assert data is not None  # not optional: a missing member raises
        obj = gated_load(path, data, storage_from_pid)
        super().__init__(path, label, "torch-zip", obj)

    def _read_member(self, name: str, optional: bool = False) -> bytes | None:
        try:
            return read_zip_member(self._zf, f"{self._prefix}{name}", self._size, str(self.path))
        except KeyError:
            if optional:
                return None
            raise CorruptFileError(f"{self.path} is a zip file without {self._prefix}{name}") from None

    def _storage_member(self, ref: StorageRef) -> zipfile.ZipInfo:
        """The entry holding `ref`'s bytes, once its declared size is the storage's."""
        name = f"{self._prefix}data/{ref.key}"
        try:
            info = zip_member(self._zf, name, self._size)
        except KeyError:
            raise CorruptFileError(f"{self.path} is a zip file without {name}") from None
        except CorruptFileError as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None
        expected = ref.numel * DTYPE_BITS[ref.dtype] // 8
        if info.file_size != expected:
            raise CorruptFileError(f"{self.path}: storage {ref.key} holds {info.file_size} bytes, expected {expected}")
        return info

    def _storage_bytes(self, ref: StorageRef) -> bytes:
        info = self._storage_member(ref)
        try:
            return self._zf.read(info)
        except ZIP_ERRORS as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        ref = self._refs[name]
        if ref.storage is None or not is_row_major(ref.shape, ref.stride):
            yield from super()._chunks(name, chunk_elems)
            return
        storage = self._check_view(name, ref)
        info = self._storage_member(storage)
        itemsize = DTYPE_BITS[ref.dtype] // 8
        try:
            with self._zf.open(info) as member:
                member.seek(ref.offset * itemsize)  # usually 0: a tensor tends to own its storage
                yield from read_chunks(member, _numel(ref.shape), ref.dtype, chunk_elems, str(self.path))
        except ZIP_ERRORS as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None

    def close(self) -> None:
        self._zf.close()


class LegacyTorchSource(TorchFileSource):
    """A pre-1.6 torch.save file: magic, protocol and sys-info pickles, the object, keys, raw storages."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self._storages: dict[str, StorageRef] = {}
        with path.open("rb") as f:
            for what in ("magic number", "protocol version", "system info"):
                value = gated_load(path, f, storage_from_pid)
                if what == "magic number" and value != LEGACY_MAGIC:
                    raise CorruptFileError(f"{path} is not a torch checkpoint (bad magic number)")
            obj = gated_load(path, f, self._remember)
            keys = gated_load(path, f, storage_from_pid)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise CorruptFileError(f"{path} is not a valid legacy torch checkpoint (bad storage key list)")
            self._offsets = self._walk_storages(f, keys, path.stat().st_size)
        unlisted = sorted(set(self._storages) - set(self._offsets))
        if unlisted:
            raise CorruptFileError(f"{path} is not a valid legacy torch checkpoint (storage {unlisted[0]} has no data)")
        super().__init__(path, label, "torch-legacy", obj)

    def _remember(self, pid: tuple[object, ...]) -> StorageRef:
        ref = storage_from_pid(pid)
        self._storages.setdefault(ref.key, ref)
        return self._storages[ref.key]

    def _walk_storages(self, f: IO[bytes], keys: list[str], size: int) -> dict[str, int]:
        offsets: dict[str, int] = {}
        pos = f.tell()
        for key in keys:
            ref = self._storages.get(key)
            if ref is None:
                raise CorruptFileError(f"{self.path} lists storage {key} that no tensor uses")
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                raise CorruptFileError(f"{self.path} is truncated in its tensor data")
            (numel,) = struct.unpack("<q", head)
            nbytes = numel * DTYPE_BITS[ref.dtype] // 8
            if key in offsets or numel != ref.numel or pos + 8 + nbytes > size:
                raise CorruptFileError(f"{self.path} is truncated or damaged in storage {key}")
            offsets[key] = pos + 8
            pos += 8 + nbytes
        return offsets

    def _storage_bytes(self, ref: StorageRef) -> bytes:
        with self.path.open("rb") as f:
            f.seek(self._offsets[ref.key])
            return f.read(ref.numel * DTYPE_BITS[ref.dtype] // 8)

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        ref = self._refs[name]
        if ref.storage is None or not is_row_major(ref.shape, ref.stride):
            yield from super()._chunks(name, chunk_elems)
            return
        storage = self._check_view(name, ref)  # else the read would run on into the next storage's bytes
        with self.path.open("rb") as f:
            f.seek(self._offsets[storage.key] + ref.offset * DTYPE_BITS[ref.dtype] // 8)
            yield from read_chunks(f, _numel(ref.shape), ref.dtype, chunk_elems, str(self.path))


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _no_storage(pid: tuple[object, ...]) -> StorageRef:
    raise CorruptFileError("refers to tensor storage outside the pickle")


def open_raw_pickle(path: Path, label: str) -> TorchFileSource:
    """A plain pickle file: gated like the rest; only useful when it holds a tensor dict."""
    with path.open("rb") as f:
        obj = gated_load(path, f, _no_storage)
    return TorchFileSource(path, label, "pickle", obj)
