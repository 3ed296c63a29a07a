"""torch.save files (.pt/.pth/.bin/.ckpt): zip archives, legacy pre-1.6 files and raw pickles.

Listing unpickles `data.pkl` through the weights-only gate, turning storages into references,
so it reads the pickle and nothing else: a 10 GB checkpoint lists as fast as a 10 MB one.
"""

from __future__ import annotations

import math
import mmap
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect import dtypes
from modinspect.errors import CorruptFileError, ModinspectError
from modinspect.sources.base import (
    EntrySummary,
    Source,
    SubclassInfo,
    TensorInfo,
    from_little_endian,
    is_row_major,
    read_chunks,
)
from modinspect.sources.kinds import checkpoint_kind
from modinspect.sources.pickle.gate import (
    Gate,
    is_data_class,
    runs_code_when_called,
    storage_from_pid,
)
from modinspect.sources.pickle.module import (
    describe_standins,
    find_pickled_module,
    nn_module_parts,
    walk_modules,
)
from modinspect.sources.pickle.refs import DtypeRef, SparseRef, StorageRef, SubclassRef, TensorRef
from modinspect.sources.pickle.standins import describe
from modinspect.sources.views import MAX_EXPANDED, MAX_EXPANSION

if TYPE_CHECKING:
    import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STATE_DICT_KEYS = (
    "model_state_dict",
    "state_dict",
    "model",
    "module",
    "net",
    "network",
    "model_state",
)


def _zip_errors() -> tuple[type[Exception], ...]:
    """What zipfile raises on a damaged archive: RuntimeError for an entry flagged as encrypted,
    zlib.error / LZMAError for a broken deflate / LZMA stream (bz2 raises OSError),
    NotImplementedError for an unknown compression method."""
    errors: list[type[Exception]] = [
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,
        RuntimeError,
        zlib.error,
        struct.error,
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


def _is_entry(value: object, tensor_type: type) -> bool:
    """A value a state dict may hold: a tensor, or what quantized modules save beside theirs."""
    if isinstance(value, tensor_type | SparseRef | SubclassRef):
        return True
    if isinstance(value, tuple | list):  # dynamic-quantized Linear: _packed_params = (weight, bias)
        return bool(value) and all(v is None or isinstance(v, tensor_type) for v in value)
    return isinstance(value, DtypeRef)  # ... and _packed_params.dtype = torch.qint8


def is_tensor_dict(obj: object, tensor_type: type = TensorRef) -> bool:
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        return False
    entries = [(k, v) for k, v in obj.items() if not k.endswith("_extra_state")]
    return any(isinstance(v, tensor_type | SparseRef | SubclassRef) for _k, v in entries) and all(
        _is_entry(v, tensor_type) or (v is None and k.rpartition(".")[2] == "bias")
        for k, v in entries
    )  # None: a torch.ao quantized conv without a bias saves `bias` as None


def find_state_dict(
    obj: object, tensor_type: type = TensorRef, _seen: frozenset[int] = frozenset()
) -> tuple[dict[str, Any], str | None] | None:
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
            isinstance(key, str)
            and "optim" not in key.lower()
            and is_tensor_dict(value, tensor_type)
            and (best is None or len(value) > best[0])
        ):
            best = (len(value), key)
    return (obj[best[1]], best[1]) if best else None


def summarize(value: object) -> str:
    """A short description of a checkpoint entry for listings: '12', 'dict (2 keys, 8 tensors)'.

    Bounded for any value a pickle can build: an int of 16,610 bits is not printed digit by digit.
    """
    if isinstance(value, dict) and not isinstance(value, TensorRef):
        n = sum(1 for _ in _iter_tensor_refs(value))
        if n:  # an optimizer state: its tensors matter, not its keys
            return f"dict ({len(value):,} keys, {n:,} tensors)"
    if (
        hasattr(value, "shape")
        and hasattr(value, "dtype")
        and not isinstance(value, TensorRef | SparseRef)
    ):
        dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
        return f"tensor {list(getattr(value, 'shape', ()))} {dtype}"
    return describe(value)


def _iter_tensor_refs(obj: object) -> Any:
    """Every tensor inside nested dicts, lists and tuples, each container visited once.

    A pickle's memo lets a few bytes describe a dict holding ten references to a dict holding ten
    references to ...: walked as a tree that is 10^20 visits, walked as a graph it is twenty.
    """
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef | SparseRef | SubclassRef) or (
            hasattr(item, "shape") and hasattr(item, "dtype")
        ):
            yield item
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            values = list(item.values()) if isinstance(item, dict) else list(item)
            stack.extend(reversed(values))


def storage_elements(ref: TensorRef) -> int:
    """How many elements of the tensor's own dtype its storage holds (v3 storages count bytes)."""
    assert ref.storage is not None
    return (
        ref.storage.numel
        * dtypes.BITS.get(ref.storage.dtype, 8)
        // max(dtypes.BITS.get(ref.dtype, 8), 1)
    )


def check_expansion(ref: TensorRef, name: str, path: Path) -> None:
    """Refuse to read a view whose logical size is absurd for its storage (listing it is fine)."""
    numel, stored = _numel(ref.shape), storage_elements(ref)
    # The same bound as sources.views.check_view (torch.save keeps an expand()ed tensor's stride 0).
    if numel > MAX_EXPANDED and numel > MAX_EXPANSION * max(stored, 1):
        raise CorruptFileError(
            f"{path}: {name!r} claims {numel:,} elements over a storage of {stored:,} (a stride-0 view): too large "
            "to read, and no real tensor needs it"
        )


def flatten_entries(state: dict[str, Any]) -> dict[str, TensorRef | SparseRef | SubclassRef]:
    """The state dict's tensors by name; a tuple of tensors becomes name.0, name.1 (packed params)."""
    flat: dict[str, TensorRef | SparseRef | SubclassRef] = {}
    for name, value in state.items():
        if isinstance(value, TensorRef | SparseRef | SubclassRef):
            flat[name] = value
        elif isinstance(value, tuple | list):
            for i, item in enumerate(value):
                if isinstance(item, TensorRef):
                    flat[f"{name}.{i}"] = item
    return flat


def _qparams_bytes(ref: TensorRef) -> int:
    """The bytes of a per-channel quantized tensor's scales and zero points, stored as tensors of their own
    beside its values (0 for any other tensor: a per-tensor scale is one number in the pickle)."""
    if ref.quantizer is None:
        return 0
    return sum(
        dtypes.nbytes(p.dtype, _numel(p.shape), unknown_bits=8)
        for p in ref.quantizer[1:]
        if isinstance(p, TensorRef)
    )


def tensor_infos(
    state: Mapping[str, TensorRef | SparseRef | SubclassRef],
    kinds: dict[str, tuple[str, bool | None]] | None = None,
) -> list[TensorInfo]:
    infos = []
    for name, ref in state.items():
        kind, persistent = (kinds or {}).get(
            name, (checkpoint_kind(name, getattr(ref, "is_parameter", False)), None)
        )
        if isinstance(ref, SubclassRef):
            infos.append(_subclass_info(name, ref, kind, persistent))
            continue
        if isinstance(ref, SparseRef):
            nbytes = sum(
                dtypes.nbytes(c.dtype, _numel(c.shape), unknown_bits=8) for c in ref.components
            )
            infos.append(
                TensorInfo(
                    name=name,
                    shape=ref.shape,
                    dtype=ref.dtype,
                    nbytes=nbytes,
                    kind=kind,  # type: ignore[arg-type]
                    persistent=persistent,
                )
            )
            continue
        if not isinstance(ref, TensorRef):
            continue
        numel = _numel(ref.shape)
        storage = None
        if ref.storage is not None and numel:
            storage = f"{ref.storage.key}@{ref.offset}:{ref.shape}:{ref.stride}"
        requires_grad = ref.requires_grad if ref.is_parameter or kind == "parameter" else None
        quantizer = getattr(ref, "quantizer", None)
        qscheme = (
            quantizer[0]
            if isinstance(quantizer, tuple) and quantizer and isinstance(quantizer[0], str)
            else None
        )
        infos.append(
            TensorInfo(
                name=name,
                shape=ref.shape,
                dtype=ref.dtype,
                nbytes=dtypes.nbytes(ref.dtype, numel, unknown_bits=8) + _qparams_bytes(ref),
                kind=kind,  # type: ignore[arg-type]
                storage=storage,
                requires_grad=requires_grad,
                persistent=persistent,
                qscheme=qscheme,
            )
        )
    return infos


def _subclass_info(name: str, ref: SubclassRef, kind: str, persistent: bool | None) -> TensorInfo:
    """A tensor subclass: the float tensor's shape, its first inner tensor's dtype (torchao's `qdata`), and
    the bytes of all its inner tensors."""
    parts = tuple((attr, t.shape, t.dtype) for attr, t in ref.parts)
    return TensorInfo(
        name=name,
        shape=ref.shape,
        dtype=parts[0][2] if parts else ref.dtype,
        nbytes=sum(dtypes.nbytes(t.dtype, _numel(t.shape), unknown_bits=8) for _, t in ref.parts),
        kind=kind,  # type: ignore[arg-type]
        persistent=persistent,
        subclass=SubclassInfo(
            ref.cls, parts, ref.block_size, ref.activation, ref.dtype, ref.target_dtype
        ),
    )


def standin_note(gate: Gate, exclude: str | None = None) -> list[str]:
    """The note that says which globals the gate stood in for, if any."""
    names = [n for n in gate.standins if exclude is None or not n.startswith(exclude)]
    if not names:
        return []
    # Suggest --allow-global only for a name that cannot run code when called: a known data class, or a
    # name the pickle never calls.
    called = gate.registry.called
    data = [
        n for n in names if not runs_code_when_called(n) and (is_data_class(n) or n not in called)
    ]
    suggestion = f" (--allow-global {data[0]} builds a real one, if you trust it)" if data else ""
    return [
        f"read without importing {describe_standins(names)}: shown as stand-ins, nothing of theirs ran{suggestion}"
    ]


def would_call_warning(names: list[str]) -> list[str]:
    """The warning that names every global a full unpickling would call, when there is any."""
    if not names:
        return []
    it = "it" if len(names) == 1 else "them"
    return [
        f"torch.load would call {', '.join(names)}: shown as stand-ins here, nothing ran; fully unpickling the "
        f"file (torch.load without weights_only=True, or --unsafe-pickle) runs {it}"
    ]


class TorchFileSource(Source):
    """Common ground of zip and legacy torch files: the unpickled object and the state dict inside it."""

    def __init__(self, path: Path, label: str, fmt: str, obj: object, gate: Gate) -> None:
        self.path = path
        modules = None
        kinds: dict[str, tuple[str, bool | None]] | None = None
        found = find_state_dict(obj)
        if found is not None:
            refs, key = found
            self._refs = flatten_entries(refs)
        else:
            pickled = find_pickled_module(obj, STATE_DICT_KEYS)
            if pickled is None:
                raise CorruptFileError(
                    f"{path} holds no state dict ({summarize(obj)}); expected a dict of tensors, a pickled "
                    f"nn.Module, or a checkpoint with one under {', '.join(repr(k) for k in STATE_DICT_KEYS[:4])}"
                )
            module, key = pickled
            walked = walk_modules(module, nn_module_parts)
            self._refs = {
                k: v
                for k, v in walked.tensors.items()
                if isinstance(v, TensorRef | SparseRef | SubclassRef)
            }
            modules, kinds = walked.modules, walked.kinds
            fmt = f"{fmt}-module"
        others: list[EntrySummary] = []
        if key is not None and isinstance(obj, dict):
            top = key.split(".")[0]
            others = [EntrySummary(str(k), summarize(v)) for k, v in obj.items() if k != top]
        super().__init__(
            label=label,
            format=fmt,
            tensors=tensor_infos(self._refs, kinds),
            state_dict_key=key,
            other_entries=others,
            modules=modules,
            notes=standin_note(gate),
            standins=list(gate.standins),
            warnings=[*gate.warnings, *would_call_warning(gate.would_call)],
            would_call=gate.would_call,
        )
        self._cache: tuple[str, bytes] | None = None

    def _storage_bytes(self, ref: StorageRef) -> bytes:
        raise NotImplementedError

    def _ref(self, name: str) -> TensorRef:
        ref = self._refs[name]
        if isinstance(ref, SubclassRef):
            raise CorruptFileError(f"{self.path}: {name!r} is a {ref.cls} tensor")
        if not isinstance(ref, TensorRef):
            raise CorruptFileError(f"{self.path}: {name!r} is a sparse tensor")
        return ref

    def _storage_of(
        self, name: str, ref: TensorRef | None = None
    ) -> tuple[TensorRef, torch.Tensor]:
        """The tensor's reference and its whole storage as a 1-d tensor, once the view is known to fit in it.

        Quantized tensors come back as their integer representation.
        """
        import torch

        ref = ref if ref is not None else self._ref(name)
        if ref.storage is None:
            raise CorruptFileError(f"{self.path}: {name!r} is a meta tensor and has no data")
        check_expansion(ref, name, self.path)
        dtype = _torch_dtype(_QUANTIZED_REPR.get(ref.dtype, ref.dtype), name, self.path)
        if self._cache is None or self._cache[0] != ref.storage.key:
            # Views of one storage usually come together: keep the last storage's bytes.
            self._cache = (ref.storage.key, self._storage_bytes(ref.storage))
        raw = self._cache[1]
        itemsize = dtypes.itemsize(ref.storage.dtype)
        if len(raw) != ref.storage.numel * itemsize:
            raise CorruptFileError(
                f"{self.path}: storage {ref.storage.key} holds {len(raw)} bytes, expected {ref.storage.numel * itemsize}"
            )
        try:
            flat = from_little_endian(bytearray(raw), dtype) if raw else torch.empty(0, dtype=dtype)
        except (
            RuntimeError,
            ValueError,
            TypeError,
        ) as exc:  # a storage whose size is no multiple of the dtype
            raise CorruptFileError(
                f"{self.path}: {name!r} cannot be read as {ref.dtype} ({exc})"
            ) from None
        needed = (
            ref.offset + sum((s - 1) * st for s, st in zip(ref.shape, ref.stride, strict=True)) + 1
        )
        if _numel(ref.shape) and needed > flat.numel():
            raise CorruptFileError(f"{self.path}: {name!r} reaches past the end of its storage")
        return ref, flat

    def _dense(self, name: str, ref: TensorRef) -> torch.Tensor:
        import torch

        ref, flat = self._storage_of(name, ref)
        if any(s == 0 for s in ref.shape):
            return torch.empty(ref.shape, dtype=flat.dtype)
        return flat.as_strided(ref.shape, ref.stride, ref.offset).clone()

    def read_subclass_part(self, name: str, attr: str) -> torch.Tensor:
        """One inner tensor (`qdata`, `scale`, ...) of a tensor subclass the pickle holds under `name`."""
        ref = self._refs[name]
        found = dict(ref.parts).get(attr) if isinstance(ref, SubclassRef) else None
        if found is None:
            raise CorruptFileError(f"{self.path}: {name!r} holds no inner tensor {attr!r}")
        return self._dense(f"{name}.{attr}", found)

    def _read(self, name: str) -> torch.Tensor:
        ref = self._refs[name]
        if isinstance(ref, SparseRef):
            return self._read_sparse(name, ref)
        if isinstance(ref, SubclassRef):  # its stored values, as the other schemes' packed weights
            if not ref.parts:
                raise CorruptFileError(f"{self.path}: {name!r} is a {ref.cls} tensor with no data")
            return self._dense(name, ref.parts[0][1])
        values = self._dense(name, ref)
        return values if ref.quantizer is None else self._quantize(name, ref, values)

    def _quantize(self, name: str, ref: TensorRef, values: torch.Tensor) -> torch.Tensor:
        scheme, *params = ref.quantizer or ("",)
        scheme = str(scheme)
        with warnings.catch_warnings():
            # torch 2.13 deprecates creating quantized tensors; the file holds them, and the user is told
            # nothing they can act on: the warning would be noise on every run.
            warnings.filterwarnings(
                "ignore", message=".*quantized tensor creation", category=UserWarning
            )
            return self._rebuild(name, ref, values, scheme, params)

    def _rebuild(
        self, name: str, ref: TensorRef, values: torch.Tensor, scheme: str, params: list[object]
    ) -> torch.Tensor:
        import torch

        try:
            if scheme in ("per_tensor_affine", "per_tensor_symmetric") and len(params) == 2:
                scale, zero_point = params
                return torch._make_per_tensor_quantized_tensor(
                    values,
                    float(scale),  # type: ignore[arg-type]
                    int(zero_point),  # type: ignore[call-overload]
                )
            if (
                scheme.startswith("per_channel")
                and len(params) == 3
                and all(isinstance(p, TensorRef) for p in params[:2])
            ):
                scales, zero_points, axis = params
                return torch._make_per_channel_quantized_tensor(
                    values,
                    self._dense(name, scales),  # type: ignore[arg-type]
                    self._dense(name, zero_points),  # type: ignore[arg-type]
                    int(axis),  # type: ignore[call-overload]
                )
        except (RuntimeError, TypeError, ValueError) as exc:
            raise CorruptFileError(
                f"{self.path}: quantized tensor {name!r} cannot be rebuilt ({exc})"
            ) from None
        raise CorruptFileError(
            f"{self.path}: quantized tensor {name!r} has an unknown scheme {scheme!r}"
        )

    def _read_sparse(self, name: str, ref: SparseRef) -> torch.Tensor:
        """A sparse tensor, densified: diff and load compare values, whatever the layout."""
        if _numel(ref.shape) > _MAX_DENSE:
            raise ModinspectError(
                f"{self.path}: sparse tensor {name!r} is too large to compare densely ({ref.shape})"
            )
        parts = [self._dense(name, c) for c in ref.components]
        with (
            warnings.catch_warnings()
        ):  # "sparse CSR support is in beta": torch's note, not the user's
            warnings.simplefilter("ignore", UserWarning)
            return self._assemble_sparse(name, ref, parts)

    def _assemble_sparse(
        self, name: str, ref: SparseRef, parts: list[torch.Tensor]
    ) -> torch.Tensor:
        import torch

        try:
            if ref.layout == "sparse_coo":
                # check_invariants: a hostile file's indices must not reach past the dense shape in to_dense.
                sparse = torch.sparse_coo_tensor(
                    parts[0], parts[1], ref.shape, check_invariants=True
                )
            else:
                compressed, plain, values = parts
                sparse = torch.sparse_compressed_tensor(
                    compressed,
                    plain,
                    values,
                    ref.shape,
                    layout=getattr(torch, ref.layout),
                    check_invariants=True,
                )
            return sparse.to_dense()
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise CorruptFileError(
                f"{self.path}: sparse tensor {name!r} is inconsistent ({exc})"
            ) from None

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        """A strided view (a transpose, an expand) gathered from its storage a chunk at a time.

        Materialising it first would allocate its declared size: a stride-0 view of one element can
        claim 2^40 of them in a few bytes of pickle. Gathered, memory stays at one chunk.
        """
        import torch

        ref = self._refs[name]
        if isinstance(ref, SparseRef | SubclassRef) or ref.quantizer is not None:
            # Compared as values: dense for sparse layouts, dequantized for quantized tensors.
            tensor = self._read(name)
            flat = (tensor.dequantize() if tensor.is_quantized else tensor).reshape(-1)
            for start in range(0, flat.numel(), chunk_elems):
                yield flat[start : start + chunk_elems]
            return
        ref, flat = self._storage_of(name)
        rows = flat.view(torch.uint8).reshape(
            flat.numel(), -1
        )  # one row of bytes per element: any dtype indexes
        numel = _numel(ref.shape)
        for start in range(0, numel, chunk_elems):
            index = torch.arange(start, min(start + chunk_elems, numel), dtype=torch.int64)
            position = torch.full_like(index, ref.offset)
            for size, step in zip(reversed(ref.shape), reversed(ref.stride), strict=True):
                position += (index % size) * step
                index = index.div(size, rounding_mode="floor")
            yield rows[position].reshape(-1).view(flat.dtype)

    def _row_major(self, name: str) -> TensorRef | None:
        """The reference when the tensor can be streamed straight from its bytes."""
        ref = self._refs[name]
        if not isinstance(ref, TensorRef) or ref.quantizer is not None or ref.storage is None:
            return None
        return ref if is_row_major(ref.shape, ref.stride) else None

    def _check_view(self, name: str, ref: TensorRef) -> StorageRef:
        """The storage of a row-major view, once the view is known to lie inside it."""
        if ref.storage is None:
            raise CorruptFileError(f"{self.path}: {name!r} is a meta tensor and has no data")
        _torch_dtype(ref.dtype, name, self.path)
        if ref.offset + _numel(ref.shape) > storage_elements(ref):
            raise CorruptFileError(f"{self.path}: {name!r} reaches past the end of its storage")
        return ref.storage


_QUANTIZED_REPR = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}
_MAX_DENSE = 1 << 28


def _torch_dtype(dtype: str, name: str, path: Path) -> Any:
    import torch

    found = getattr(torch, dtype, None)
    if not isinstance(found, torch.dtype) or dtype not in dtypes.BITS:
        raise CorruptFileError(f"{path}: {name!r} has dtype {dtype}, which this torch cannot hold")
    return found


class ZipTorchSource(TorchFileSource):
    """A torch.save zip archive (torch >= 1.6): <prefix>/data.pkl plus <prefix>/data/<key> entries."""

    def __init__(
        self, path: Path, label: str, zf: zipfile.ZipFile, prefix: str, gate: Gate
    ) -> None:
        self._attach(path, zf, prefix)
        byteorder = self._read_member("byteorder", gate, optional=True)
        if byteorder not in (None, b"little"):
            raise CorruptFileError(
                f"{path} was saved on a big-endian machine, which modinspect does not read yet"
            )
        data = self._read_member("data.pkl", gate)
        assert data is not None  # not optional: a missing member raises
        obj, _ = gate.load(data, 0, storage_from_pid)
        super().__init__(path, label, "torch-zip", obj, gate)

    def _attach(self, path: Path, zf: zipfile.ZipFile, prefix: str) -> None:
        """The archive this source reads its storages from, and its size to check entries against."""
        self.path = path
        self._zf = zf
        self._prefix = prefix
        try:
            self._size = path.stat().st_size
        except OSError as exc:
            raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _read_member(self, name: str, gate: Gate, optional: bool = False) -> bytes | None:
        return read_pickle_member(
            self._zf, f"{self._prefix}{name}", self._size, self.path, gate, optional
        )

    def _storage_member(self, ref: StorageRef) -> zipfile.ZipInfo:
        """The entry holding `ref`'s bytes, once its declared size is the storage's."""
        name = f"{self._prefix}data/{ref.key}"
        try:
            info = zip_member(self._zf, name, self._size)
        except KeyError:
            raise CorruptFileError(f"{self.path} is a zip file without {name}") from None
        except CorruptFileError as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None
        expected = dtypes.nbytes(ref.dtype, ref.numel)
        if info.file_size != expected:
            raise CorruptFileError(
                f"{self.path}: storage {ref.key} holds {info.file_size} bytes, expected {expected}"
            )
        return info

    def _storage_bytes(self, ref: StorageRef) -> bytes:
        info = self._storage_member(ref)
        try:
            return self._zf.read(info)
        except ZIP_ERRORS as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        ref = self._row_major(name)
        if ref is None:
            yield from super()._chunks(name, chunk_elems)
            return
        storage = self._check_view(name, ref)
        info = self._storage_member(storage)
        itemsize = dtypes.itemsize(ref.dtype)
        try:
            with self._zf.open(info) as member:
                member.seek(ref.offset * itemsize)  # usually 0: a tensor tends to own its storage
                yield from read_chunks(
                    member, _numel(ref.shape), ref.dtype, chunk_elems, str(self.path)
                )
        except ZIP_ERRORS as exc:
            raise CorruptFileError(f"{self.path} is a damaged zip file ({exc})") from None

    def close(self) -> None:
        self._zf.close()


def read_pickle_member(
    zf: zipfile.ZipFile,
    name: str,
    archive_size: int,
    path: Path,
    gate: Gate,
    optional: bool = False,
) -> bytes | None:
    """A zip entry that is unpickled: its inflated size is checked against the gate's budget first."""
    try:
        info = zip_member(zf, name, archive_size)
    except KeyError:
        if optional:
            return None
        raise CorruptFileError(f"{path} is a zip file without {name}") from None
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path} is a damaged zip file ({exc})") from None
    gate.check_size(name, info.file_size)  # a DEFLATE bomb is refused before it inflates
    try:
        return zf.read(info)
    except ZIP_ERRORS as exc:
        raise CorruptFileError(f"{path} is a damaged zip file ({exc})") from None


def map_file(path: Path) -> mmap.mmap | bytes:
    """The file's bytes without reading them: the gate checks a pickle in place."""
    with path.open("rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file cannot be mapped
            return f.read()


class LegacyTorchSource(TorchFileSource):
    """A pre-1.6 torch.save file: magic, protocol and sys-info pickles, the object, keys, raw storages."""

    def __init__(self, path: Path, label: str, gate: Gate) -> None:
        self.path = path
        self._storages: dict[str, StorageRef] = {}
        data = map_file(path)
        try:
            pos = 0
            for what in ("magic number", "protocol version", "system info"):
                value, pos = gate.load(data, pos, storage_from_pid)
                if what == "magic number" and value != LEGACY_MAGIC:
                    raise CorruptFileError(f"{path} is not a torch checkpoint (bad magic number)")
            obj, pos = gate.load(data, pos, self._remember)
            keys, pos = gate.load(data, pos, storage_from_pid)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise CorruptFileError(
                    f"{path} is not a valid legacy torch checkpoint (bad storage key list)"
                )
            self._offsets = self._walk_storages(data, pos, keys)
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
        unlisted = sorted(set(self._storages) - set(self._offsets))
        if unlisted:
            raise CorruptFileError(
                f"{path} is not a valid legacy torch checkpoint (storage {unlisted[0]} has no data)"
            )
        super().__init__(path, label, "torch-legacy", obj, gate)

    def _remember(self, pid: tuple[object, ...]) -> StorageRef:
        ref = storage_from_pid(pid)
        self._storages.setdefault(ref.key, ref)
        return self._storages[ref.key]

    def _walk_storages(self, data: mmap.mmap | bytes, pos: int, keys: list[str]) -> dict[str, int]:
        offsets: dict[str, int] = {}
        size = len(data)
        for key in keys:
            ref = self._storages.get(key)
            if ref is None:
                raise CorruptFileError(f"{self.path} lists storage {key} that no tensor uses")
            head = data[pos : pos + 8]
            if len(head) < 8:
                raise CorruptFileError(f"{self.path} is truncated in its tensor data")
            (numel,) = struct.unpack("<q", head)
            nbytes = dtypes.nbytes(ref.dtype, numel)
            if key in offsets or numel != ref.numel or pos + 8 + nbytes > size:
                raise CorruptFileError(f"{self.path} is truncated or damaged in storage {key}")
            offsets[key] = pos + 8
            pos += 8 + nbytes
        return offsets

    def _storage_bytes(self, ref: StorageRef) -> bytes:
        with self.path.open("rb") as f:
            f.seek(self._offsets[ref.key])
            return f.read(dtypes.nbytes(ref.dtype, ref.numel))

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        ref = self._row_major(name)
        if ref is None:
            yield from super()._chunks(name, chunk_elems)
            return
        storage = self._check_view(
            name, ref
        )  # else the read would run on into the next storage's bytes
        with self.path.open("rb") as f:
            f.seek(self._offsets[storage.key] + dtypes.nbytes(ref.dtype, ref.offset))
            yield from read_chunks(f, _numel(ref.shape), ref.dtype, chunk_elems, str(self.path))


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def open_raw_pickle(path: Path, label: str, gate: Gate) -> TorchFileSource:
    """A plain pickle file: gated like the rest; only useful when it holds a tensor dict."""
    data = map_file(path)
    try:
        obj, _ = gate.load(data, 0)
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
    return TorchFileSource(path, label, "pickle", obj, gate)


def is_legacy_file(path: Path) -> bool:
    """A pre-1.6 torch.save file starts with its magic number, pickled as protocol 2's LONG1."""
    with path.open("rb") as f:
        head = f.read(15)
    return head == b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little") + b"."
