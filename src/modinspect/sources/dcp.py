"""torch.distributed.checkpoint (DCP) directories: `.metadata` plus `__<rank>_<n>.distcp` files.

The metadata (read without executing it, see dcp_metadata) lists every tensor with its global shape,
dtype and chunks, and where each chunk lives: a byte range of a .distcp file holding either a
torch.save archive of that chunk (DCP's default) or its raw bytes. Tensor data is read by offset,
one chunk at a time; a tensor split in chunks (FSDP, tensor parallel) is reassembled from them.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from modinspect import dtypes
from modinspect.errors import CorruptFileError, UnknownFormatError, UnsafePickleError
from modinspect.sources.base import (
    EntrySummary,
    Source,
    TensorInfo,
    from_little_endian,
    is_row_major,
    read_chunks,
)
from modinspect.sources.dcp_metadata import (
    Metadata,
    TensorStorageMetadata,
    dtype_name,
    load_metadata,
    load_metadata_unsafe,
)
from modinspect.sources.kinds import checkpoint_kind
from modinspect.sources.sharded import _shard_path as shard_path
from modinspect.sources.views import (
    bounded_numel,
    check_view,
    describe_int,
    is_int64,
    strided_chunks,
)

if TYPE_CHECKING:
    import torch

    from modinspect.sources.options import OpenOptions
    from modinspect.sources.safetensors import SafetensorsHeader

METADATA_NAME = ".metadata"
_MAX_METADATA_BYTES = 1 << 30


@dataclass(frozen=True)
class Chunk:
    """One piece of a tensor: where it sits in the whole tensor, and which bytes of which file hold it."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    path: Path
    offset: int
    length: int
    transforms: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


class _Window(io.RawIOBase):
    """Bytes [start, start + length) of an open file, as a seekable stream of their own (for zipfile)."""

    def __init__(self, f: IO[bytes], start: int, length: int) -> None:
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = max(0, min(len(buf), self._length - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buf)[:n])  # type: ignore[attr-defined]
        self._pos += got
        return int(got)


def _ints(value: object, what: str, label: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
        raise CorruptFileError(f"{label} gives {what} that is not a tuple of non-negative integers")
    for v in value:
        if not is_int64(v):
            raise CorruptFileError(f"{label} gives {what} with {describe_int(v)}, past int64")
    return tuple(value)


class DcpSource(Source):
    """A DCP checkpoint directory, listed from `.metadata` alone."""

    def __init__(self, folder: Path, label: str, options: OpenOptions) -> None:
        self.folder = folder
        meta_path = folder / METADATA_NAME
        try:
            if meta_path.stat().st_size > _MAX_METADATA_BYTES:
                raise CorruptFileError(
                    f"{meta_path} is over {_MAX_METADATA_BYTES:,} bytes: not DCP metadata"
                )
            data = meta_path.read_bytes()
        except OSError as exc:
            raise CorruptFileError(f"cannot read {meta_path}: {exc.strerror or exc}") from None
        warnings: list[str] = []
        try:
            md = load_metadata(data, str(meta_path))
        except UnsafePickleError as exc:
            if not options.unsafe_pickle:
                raise
            warnings.append(
                f"--unsafe-pickle: fully unpickling {meta_path}, which imports "
                f"{', '.join(exc.globals[:6])}{' and more' if len(exc.globals) > 6 else ''}; "
                "this runs code from the file"
            )
            md = load_metadata_unsafe(data, str(meta_path))
        self._chunks_of: dict[str, list[Chunk]] = {}
        self._headers: dict[Path, SafetensorsHeader | None] = {}
        tensors, others = self._entries(md, meta_path)
        files = sorted({c.path.name for cs in self._chunks_of.values() for c in cs})
        n_chunks = sum(len(cs) for cs in self._chunks_of.values())
        notes = [
            f"torch.distributed.checkpoint: {len(tensors)} tensors in {n_chunks} chunks across "
            f"{len(files)} file(s) ({', '.join(files[:3])}{', …' if len(files) > 3 else ''})"
        ]
        split = [n for n, cs in self._chunks_of.items() if len(cs) > 1]
        if split:
            notes.append(
                f"{len(split)} tensor(s) saved in several chunks, reassembled on read (e.g. {split[0]})"
            )
        version = getattr(md, "version", None)
        metadata = (
            {"dcp_version": version if isinstance(version, str) else describe_int(version)}
            if version
            else {}
        )
        super().__init__(
            label=label,
            format="dcp",
            tensors=tensors,
            other_entries=others,
            notes=notes,
            metadata=metadata,
            warnings=warnings,
        )

    def _entries(
        self, md: Metadata, meta_path: Path
    ) -> tuple[list[TensorInfo], list[EntrySummary]]:
        where: dict[tuple[str, tuple[int, ...]], object] = {}
        for index, info in (getattr(md, "storage_data", None) or {}).items():
            offset = getattr(index, "offset", None)
            where[(str(getattr(index, "fqn", "")), tuple(offset) if offset is not None else ())] = (
                info
            )
        tensors: list[TensorInfo] = []
        others: list[EntrySummary] = []
        sizes: dict[Path, int] = {}
        for fqn, entry in md.state_dict_metadata.items():
            if not isinstance(fqn, str):
                raise CorruptFileError(f"{meta_path} names an entry with a {type(fqn).__name__}")
            if not isinstance(entry, TensorStorageMetadata):
                others.append(EntrySummary(fqn, "pickled object (not read)"))
                continue
            shape = _ints(getattr(entry, "size", None), f"{fqn!r} a size", str(meta_path))
            if bounded_numel(shape) is None:
                raise CorruptFileError(
                    f"{meta_path} gives {fqn!r} a size whose product reaches 2**63 elements"
                )
            dtype = dtype_name(getattr(entry, "properties", None))
            if dtype is None or dtype not in dtypes.BITS:
                raise CorruptFileError(f"{meta_path} gives {fqn!r} the unknown dtype {dtype!r}")
            chunks = []
            for c in getattr(entry, "chunks", None) or []:
                offsets = _ints(
                    getattr(c, "offsets", None), f"a chunk of {fqn!r} offsets", str(meta_path)
                )
                csizes = _ints(
                    getattr(c, "sizes", None), f"a chunk of {fqn!r} sizes", str(meta_path)
                )
                if (
                    len(offsets) != len(shape)
                    or len(csizes) != len(shape)
                    or any(o + s > d for o, s, d in zip(offsets, csizes, shape, strict=True))
                ):
                    raise CorruptFileError(
                        f"{meta_path} places a chunk of {fqn!r} outside its shape {list(shape)}"
                    )
                info = where.get((fqn, offsets))
                if info is None:
                    raise CorruptFileError(
                        f"{meta_path} says where the chunk of {fqn!r} at {list(offsets)} is stored"
                    )
                chunks.append(self._chunk(fqn, offsets, csizes, info, meta_path, sizes))
            numel = math.prod(shape)
            if sum(c.numel for c in chunks) != numel:
                raise CorruptFileError(
                    f"{meta_path}: the chunks of {fqn!r} hold {sum(c.numel for c in chunks):,} elements, not {numel:,}"
                )
            self._chunks_of[fqn] = chunks
            tensors.append(
                TensorInfo(
                    fqn,
                    shape,
                    dtype,
                    dtypes.nbytes(dtype, numel),
                    checkpoint_kind(fqn),
                    storage=f"dcp:{fqn}",
                )
            )
        return tensors, others

    def _chunk(
        self,
        fqn: str,
        offsets: tuple[int, ...],
        sizes: tuple[int, ...],
        info: object,
        meta_path: Path,
        file_sizes: dict[Path, int],
    ) -> Chunk:
        """Where the chunk's bytes are, once the file is known to lie in the directory and to hold them."""
        rel, start, length = (getattr(info, k, None) for k in ("relative_path", "offset", "length"))
        if not isinstance(rel, str) or not is_int64(start) or not is_int64(length):
            raise CorruptFileError(
                f"{meta_path} gives the chunk of {fqn!r} a storage place it cannot name"
            )
        path = shard_path(
            meta_path, rel
        )  # confined to the directory, like a sharded index's shards
        if path not in file_sizes:
            file_sizes[path] = path.stat().st_size
        if start + length > file_sizes[path]:
            raise CorruptFileError(
                f"{meta_path} places the chunk of {fqn!r} past the end of {rel} (truncated?)"
            )
        transforms = tuple(str(t) for t in getattr(info, "transform_descriptors", None) or ())
        return Chunk(offsets, sizes, path, start, length, transforms)

    # -- data -----------------------------------------------------------------------------------------

    def _pieces(self, name: str, chunk: Chunk, chunk_elems: int) -> Iterator[torch.Tensor]:
        """The chunk's elements in row-major order, as 1-d tensors of at most chunk_elems each."""
        dtype = self.info(name).dtype
        if chunk.transforms:
            raise UnknownFormatError(
                f"{self.label}: {name!r} is stored through DCP extensions ({', '.join(chunk.transforms)}), "
                "which modinspect does not read"
            )
        where = f"{chunk.path} (bytes {chunk.offset:,}+{chunk.length:,})"
        header = self._safetensors_header(chunk.path)
        if (
            header is not None
        ):  # SerializationFormat.SAFETENSORS: one safetensors file per rank, keyed by name
            entry = header.entries.get(name)
            if entry is None or entry[0] != dtype or entry[1] != chunk.sizes:
                raise CorruptFileError(
                    f"{chunk.path} does not hold the {dtype} {list(chunk.sizes)} chunk of {name!r}"
                )
            with chunk.path.open("rb") as f:
                f.seek(header.data_start + entry[2])
                yield from read_chunks(f, chunk.numel, dtype, chunk_elems, str(chunk.path))
            return
        with chunk.path.open("rb") as f:
            window = _Window(f, chunk.offset, chunk.length)
            head = window.read(2)
            window.seek(0)
            if head != b"PK":  # the chunk's raw bytes
                if chunk.length != dtypes.nbytes(dtype, chunk.numel):
                    raise CorruptFileError(
                        f"{where} holds {chunk.length:,} bytes, not the chunk of {name!r}"
                    )
                yield from read_chunks(window, chunk.numel, dtype, chunk_elems, where)  # type: ignore[arg-type]
                return
            yield from _zip_pieces(window, chunk, dtype, chunk_elems, where, name)

    def _safetensors_header(self, path: Path) -> SafetensorsHeader | None:
        if path not in self._headers:
            from modinspect.sources.safetensors import SafetensorsHeader
            from modinspect.sources.sniff import sniff

            self._headers[path] = SafetensorsHeader(path) if sniff(path) == "safetensors" else None
        return self._headers[path]

    def _read(self, name: str) -> torch.Tensor:
        import torch

        info = self.info(name)
        chunks = self._chunks_of[name]
        whole = 1 << 62
        if len(chunks) == 1:
            return _cat(list(self._pieces(name, chunks[0], whole)), info.dtype).reshape(info.shape)
        out = torch.empty(info.shape, dtype=getattr(torch, info.dtype))
        for c in chunks:
            piece = _cat(list(self._pieces(name, c, whole)), info.dtype).reshape(c.sizes)
            out[tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes, strict=True))] = piece
        return out

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        info = self.info(name)
        chunks = self._chunks_of[name]
        rows = sorted(chunks, key=lambda c: c.offsets)
        if len(chunks) == 1 or all(c.sizes[1:] == info.shape[1:] for c in chunks):
            # Whole rows (FSDP's dim-0 shards): the chunks, in order of their first row, are the tensor in order.
            yield from rechunk(
                (p for c in rows for p in self._pieces(name, c, chunk_elems)), chunk_elems
            )
        else:  # split along a later dimension: its row-major order interleaves the chunks
            yield from super()._chunks(name, chunk_elems)


def _cat(pieces: list[torch.Tensor], dtype: str) -> torch.Tensor:
    import torch

    if not pieces:
        return torch.empty(0, dtype=getattr(torch, dtype))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def rechunk(pieces: Iterable[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    """Pieces of any sizes regrouped into 1-d tensors of exactly n elements (the last one shorter)."""
    import torch

    held: list[torch.Tensor] = []
    have = 0
    for piece in pieces:
        while piece.numel():
            take = min(n - have, piece.numel())
            held.append(piece[:take])
            have += take
            piece = piece[take:]
            if have == n:
                yield held[0] if len(held) == 1 else torch.cat(held)
                held, have = [], 0
    if held:
        yield held[0] if len(held) == 1 else torch.cat(held)


def _zip_pieces(
    window: _Window, chunk: Chunk, dtype: str, chunk_elems: int, where: str, name: str
) -> Iterator[torch.Tensor]:
    """A chunk saved by torch.save inside the .distcp file, read through the weights-only gate."""
    import torch

    from modinspect.sources.pickle.gate import Gate, storage_from_pid
    from modinspect.sources.pickle.refs import TensorRef
    from modinspect.sources.torchfile import ZIP_ERRORS, read_zip_member, zip_member

    try:
        zf = zipfile.ZipFile(window)
    except ZIP_ERRORS as exc:
        raise CorruptFileError(f"{where} is not a torch.save archive ({exc})") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CorruptFileError(f"{where} is a zip without data.pkl, not a torch.save archive")
        prefix = pkl[0][: -len("data.pkl")]
        ref, _ = Gate(where).load(
            read_zip_member(zf, pkl[0], chunk.length, where), 0, storage_from_pid
        )
        if not isinstance(ref, TensorRef) or ref.storage is None:
            raise CorruptFileError(f"{where} does not hold a tensor")
        if ref.shape != chunk.sizes or ref.dtype != dtype:
            raise CorruptFileError(
                f"{where} holds a {ref.dtype} tensor of shape {list(ref.shape)}, but the metadata says the chunk "
                f"of {name!r} is {dtype} {list(chunk.sizes)}"
            )
        try:
            member = zip_member(zf, f"{prefix}data/{ref.storage.key}", chunk.length)
        except (KeyError, CorruptFileError) as exc:
            raise CorruptFileError(f"{where} lacks the storage of its tensor ({exc})") from None
        itemsize = dtypes.itemsize(dtype)
        if member.file_size != ref.storage.numel * itemsize:
            raise CorruptFileError(f"{where}: storage {ref.storage.key} has the wrong size")
        numel = math.prod(ref.shape)
        # The view must lie in its storage, and not claim absurdly more elements than it holds (stride 0).
        check_view(where, name, ref.shape, ref.stride, ref.offset, ref.storage.numel)
        if not numel:
            return
        try:
            if is_row_major(ref.shape, ref.stride):
                with zf.open(member) as stream:
                    stream.seek(ref.offset * itemsize)
                    yield from read_chunks(stream, numel, dtype, chunk_elems, where)
                return
            flat = from_little_endian(bytearray(zf.read(member)), getattr(torch, dtype))
        except ZIP_ERRORS as exc:
            raise CorruptFileError(f"{where} is a damaged zip ({exc})") from None
        yield from strided_chunks(flat, ref.shape, ref.stride, ref.offset, chunk_elems)
