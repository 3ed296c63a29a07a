"""The lazy view every reader returns: tensor metadata first, tensor data only on request."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, Literal, TypeVar

from modinspect import dtypes
from modinspect.reports import short_repr

if TYPE_CHECKING:
    import torch
    from torch import nn

# "quant-aux": a quantized layer's scales, zeros, absmax...: stored beside its packed weight, not a parameter.
TensorKind = Literal["parameter", "buffer", "unknown", "quant-aux"]


@dataclass(frozen=True, slots=True)
class SubclassInfo:
    """What a tensor subclass in a pickle holds (torchao's Int8Tensor, Float8Tensor, ...), never constructed."""

    cls: str  # the class's dotted name, as the pickle spells it
    parts: tuple[
        tuple[str, tuple[int, ...], str], ...
    ]  # (attribute, shape, dtype) of each inner tensor
    block_size: tuple[int, ...] | None = None
    activation: bool = False  # quantizes the activations too (act_quant_kwargs set)
    logical_dtype: str = "float32"  # the dtype of the float tensor it stands for
    target_dtype: str | None = (
        None  # the values' own dtype when the stored one is wider (int4 in int8)
    )


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of a state dict, described without its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    kind: TensorKind = "unknown"
    # Tensors with equal, non-None storage keys hold the same data (tied weights).
    storage: str | None = None
    requires_grad: bool | None = None
    persistent: bool | None = None
    qscheme: str | None = (
        None  # a torch quantized tensor's: 'per_tensor_affine', 'per_channel_affine', ...
    )
    subclass: SubclassInfo | None = None  # a tensor subclass's (torchao's) inner tensors, as stored

    @property
    def numel(self) -> int:
        """Elements: the product of the shape."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModuleInfo:
    """A module known from a live nn.Module or a TorchScript archive."""

    name: str
    type: str | None
    training: bool | None = None


@dataclass(frozen=True)
class EntrySummary:
    """A top-level entry of a training checkpoint beside the state dict (epoch, optimizer, ...)."""

    name: str
    summary: str


@dataclass
class Source:
    """An opened SOURCE: tensor metadata always, modules when known, data on request.

    Readers subclass it and implement `_read`. Nothing here reads tensor data until
    `read_tensor` or `iter_tensors` is called.
    """

    label: str
    format: str
    tensors: list[TensorInfo] = field(repr=False)
    modules: list[ModuleInfo] | None = field(default=None, repr=False)
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    state_dict_key: str | None = None
    other_entries: list[EntrySummary] = field(default_factory=list, repr=False)
    module: nn.Module | None = field(
        default=None, repr=False
    )  # the nn.Module, when the source yields one
    notes: list[str] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)
    # globals read as inert stand-ins, never imported
    standins: list[str] = field(default_factory=list, repr=False)
    # Names the file records only as sharing another tensor's storage, {name: kept name} (safetensors
    # save_model's metadata): listed with the kept tensor's shape, which is theirs only if they alias all of it.
    shared_storage: dict[str, str] = field(default_factory=dict, repr=False)
    # stand-ins the pickle calls: torch.load would run them
    would_call: list[str] = field(default_factory=list, repr=False)
    # config.json's, for a Hugging Face directory
    quantization_config: dict[str, Any] | None = field(default=None, repr=False)

    # `SafetensorsSource(label='x.safetensors', format='safetensors', tensors=<29 items>)`: never every tensor
    __repr__ = short_repr

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tensors}

    def info(self, name: str) -> TensorInfo:
        """The TensorInfo of tensor `name` (KeyError when there is none)."""
        return self._by_name[name]

    def infos(self, names: Iterable[str]) -> list[TensorInfo]:
        """`info` of each name, in one pass (a C loop: diff asks for 200k of them)."""
        return list(map(self._by_name.__getitem__, names))

    def names(self) -> list[str]:
        """Every tensor's name, in the source's order."""
        return [t.name for t in self.tensors]

    def state_dict_names(self) -> list[str]:
        """The names `state_dict()` would hold: every name but a module's non-persistent buffers."""
        return [t.name for t in self.tensors if t.persistent is not False]

    def read_tensor(self, name: str) -> torch.Tensor:
        """Return the tensor `name` as a CPU tensor, reading only its own bytes where the format allows."""
        if name not in self._by_name:
            raise KeyError(name)
        return self._read(name)

    def iter_tensors(
        self, names: Iterable[str] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) one at a time, so callers can release each before the next."""
        for name in names if names is not None else self.names():
            yield name, self.read_tensor(name)

    def iter_chunks(self, name: str, chunk_elems: int = 1 << 20) -> Iterator[torch.Tensor]:
        """Yield tensor `name` as 1-d pieces of at most `chunk_elems` elements, in row-major order.

        Readers of files override `_chunks` to read the pieces straight from disk, so comparing two
        tensors never holds either one whole in memory.
        """
        if name not in self._by_name:
            raise KeyError(name)
        yield from self._chunks(name, chunk_elems)

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        flat = self._read(name).reshape(-1)
        for start in range(0, flat.numel(), chunk_elems):
            yield flat[start : start + chunk_elems]

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        """(file, offset, nbytes) where tensor `name`'s bytes lie as is (row-major, little-endian), or None.

        Lets `diff` compare two tensors' bytes without torch; readers whose data sits in place say where.
        """
        return None

    def byte_ranges(self, names: Iterable[str]) -> list[tuple[Path, int, int] | None]:
        """`byte_range` of each name, in one pass; readers with many small tensors make it cheaper."""
        return [self.byte_range(name) for name in names]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Read every tensor. Convenient for small checkpoints; prefer iter_tensors for large ones."""
        return dict(self.iter_tensors())

    def _read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release open files. Readers that hold none keep this no-op."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_Inner = TypeVar("_Inner", bound=Source)


class WrappedSource(Source, Generic[_Inner]):
    """Another source seen with its tensor list changed (renamed, replaced, hidden): its label, format,
    metadata, notes and warnings kept, and every read, chunk, byte range and close handed to `inner`
    under the name `stored_name` gives. Subclasses state only what they change.
    """

    def __init__(self, inner: _Inner, tensors: list[TensorInfo]) -> None:
        self.inner = inner
        super().__init__(
            label=inner.label,
            format=inner.format,
            tensors=tensors,
            metadata=inner.metadata,
            notes=list(inner.notes),
            warnings=list(inner.warnings),
            would_call=list(inner.would_call),
        )

    def stored_name(self, name: str) -> str:
        """The name `inner` knows tensor `name` by (the same name unless a subclass renames)."""
        return name

    def _read(self, name: str) -> torch.Tensor:
        return self.inner.read_tensor(self.stored_name(name))

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        return self.inner.iter_chunks(self.stored_name(name), chunk_elems)

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        return self.inner.byte_range(self.stored_name(name))

    def byte_ranges(self, names: Iterable[str]) -> list[tuple[Path, int, int] | None]:
        return self.inner.byte_ranges(map(self.stored_name, names))

    def close(self) -> None:
        self.inner.close()


def tied_groups(tensors: Iterable[TensorInfo]) -> list[list[str]]:
    """Groups of two or more names that share one storage, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for t in tensors:
        if t.storage is not None:
            groups.setdefault(t.storage, []).append(t.name)
    return [g for g in groups.values() if len(g) > 1]


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def is_row_major(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True when a view with this shape and stride reads its storage in order (size-1 dims ignored)."""
    return all(
        s == c for d, s, c in zip(shape, stride, contiguous_strides(shape), strict=True) if d != 1
    )


def host_is_big_endian() -> bool:
    """Whether this machine reads numbers big-endian; every format modinspect reads stores them little-endian."""
    return sys.byteorder == "big"


def _native_frombuffer(buf: Any, dtype: torch.dtype, count: int) -> torch.Tensor:
    """The elements this machine sees in `buf` (a test patches it, with host_is_big_endian, to be a big-endian one)."""
    import torch

    return torch.frombuffer(buf, dtype=dtype, count=count)


def from_little_endian(buf: Any, dtype: torch.dtype, count: int = -1) -> torch.Tensor:
    """`buf`'s little-endian elements of `dtype` as a 1-d tensor: shared with `buf` on a little-endian host,
    a byte-swapped copy on a big-endian one (each half of a complex number swapped on its own)."""
    import torch

    t = _native_frombuffer(buf, dtype, count)
    unit = t.element_size() // 2 if dtype.is_complex else t.element_size()
    if unit > 1 and host_is_big_endian():
        t = t.view(torch.uint8).reshape(-1, unit).flip(-1).contiguous().reshape(-1).view(dtype)
    return t


def read_chunks(
    stream: IO[bytes], numel: int, dtype: str, chunk_elems: int, label: str
) -> Iterator[torch.Tensor]:
    """`numel` elements of `dtype` read from `stream`'s position as 1-d tensors of at most chunk_elems each."""
    import torch

    from modinspect.errors import CorruptFileError

    torch_dtype = getattr(torch, dtype)
    itemsize = dtypes.itemsize(dtype)
    remaining = numel
    while remaining > 0:
        count = min(chunk_elems, remaining)
        buf = bytearray(count * itemsize)
        got = stream.readinto(buf)  # type: ignore[attr-defined]
        if got != len(buf):
            raise CorruptFileError(f"{label} is truncated: a tensor ends past the end of its data")
        yield from_little_endian(buf, torch_dtype)
        remaining -= count
