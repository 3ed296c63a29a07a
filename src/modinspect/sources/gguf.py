"""GGUF files (llama.cpp, Ollama), read from the header alone: no torch, numpy or gguf import.

The layout (GGUF versions 2 and 3, little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
`GGUF`, version u32, tensor count u64, key/value count u64, the key/values, the tensor infos (name,
n_dims u32, dims u64 each, ggml type u32, offset u64), padding to `general.alignment` (default 32), then
the tensor data, each tensor at its offset from there.

Shapes are logical and in PyTorch order: GGUF stores a tensor's dims innermost first (ggml's ne[0] is
the row length), and gguf-py's reader and llama.cpp's converters reverse them, so a 4096-wide row of
11008 rows is shape [11008, 4096], as in the Hugging Face checkpoint it was converted from. F32, F16,
BF16, F64 and I8–I64 tensors carry torch's dtype names (float32, ...) and read as tensors; quantized ones
carry their ggml type (`Q4_K`), their bytes as stored, and are listed, not dequantized.

Everything read is bounded before anything is allocated from it: counts and lengths by the bytes left in
the file and by fixed limits, dims by ggml's 4 and 2^63, each tensor's bytes inside the file and apart from
the others. The header is read through a small sliding window: a tokenizer's 200k strings are skipped,
not kept (metadata shows an array as its length and type).

A GGUF split into several files (`-00001-of-00003.gguf`) is one GGUFSource over every part's header:
sources/gguf_split.py finds and checks the parts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from modinspect import dtypes
from modinspect.errors import CorruptFileError, UnknownFormatError, UsageError
from modinspect.gcpause import paused_gc
from modinspect.sources.base import Source, TensorInfo, read_chunks
from modinspect.sources.kinds import checkpoint_kind

if TYPE_CHECKING:
    import torch

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSORS = 1 << 18  # a 671B MoE has about 1,100; each costs a few µs to list, and a tree
MAX_KV = 1 << 20
MAX_NAME_BYTES = (
    1 << 16
)  # keys and tensor names (llama.cpp itself keeps tensor names under 64 bytes)
MAX_VALUE_CHARS = 1 << 14  # a string value longer than this is shown cut, with its length
MAX_KEPT = 1 << 23  # characters of metadata text kept in full, in all
MAX_WALKED = (
    1 << 22
)  # array elements walked one by one (strings, nested arrays) in the whole header
MAX_ARRAY_DEPTH = 3
INLINE_ITEMS = 8  # arrays up to this long are shown in full
WINDOW = 1 << 20

# general.file_type (llama.cpp's llama_ftype, gguf-py's LlamaFileType less "MOSTLY_"): the file's overall scheme.
FILE_TYPES: dict[int, str] = {
    0: "ALL_F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    33: "Q4_0_4_4",
    34: "Q4_0_4_8",
    35: "Q4_0_8_8",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    1024: "GUESSED",
}

# GGUF metadata value types: id -> (name, struct format or None for string/array)
STRING, ARRAY = 8, 9
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    **{code: (d.name, d.struct) for code, d in dtypes.BY_GGUF_VALUE.items()},
    STRING: ("string", None),
    ARRAY: ("array", None),
}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_DIMS = [struct.Struct(f"<{n}Q") for n in range(MAX_DIMS + 1)]
_INT64_LIMIT = 1 << 63


class _Cursor:
    """The header's bytes through a window that slides forward: what was parsed is dropped, skips seek."""

    def __init__(self, f: IO[bytes], size: int, corrupt: CorruptFactory) -> None:
        self.f, self.size, self.corrupt = f, size, corrupt
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # index into buf

    @property
    def offset(self) -> int:
        return self.base + self.pos

    @property
    def left(self) -> int:
        return self.size - self.offset

    def need(self, n: int, what: str) -> None:
        """Make n bytes available at pos, or say the file ends first."""
        if self.pos + n <= len(self.buf):
            return
        if n > self.left:
            raise self.corrupt(f"ends inside {what} (byte {self.offset:,} of {self.size:,})")
        keep = self.buf[self.pos :]
        self.f.seek(self.offset + len(keep))
        more = self.f.read(max(n - len(keep), WINDOW))
        self.base, self.pos, self.buf = self.offset, 0, keep + more
        if len(self.buf) < n:
            raise self.corrupt(f"ends inside {what} (it shrank while being read)")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def scalar(self, fmt: str, size: int, what: str) -> object:
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def skip(self, n: int, what: str) -> None:
        if n > self.left:
            raise self.corrupt(
                f"declares {what} of {n:,} bytes, past the end of the file ({self.left:,} left)"
            )
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:
            self.base, self.pos, self.buf = self.offset + n, 0, b""

    def raw_string(self, what: str, limit: int) -> tuple[bytes, int]:
        """(the string's first `limit` bytes at most, its length); the rest is skipped."""
        n = self.u64(f"the length of {what}")
        if n > self.left:
            raise self.corrupt(
                f"declares {what} of {n:,} bytes, past the end of the file ({self.left:,} left)"
            )
        keep = min(n, limit)
        self.need(keep, what)
        data = self.buf[self.pos : self.pos + keep]
        self.pos += keep
        self.skip(n - keep, what)
        return data, n

    def name(self, what: str) -> str:
        data, n = self.raw_string(what, MAX_NAME_BYTES)
        if n > MAX_NAME_BYTES:
            raise self.corrupt(f"declares {what} of {n:,} bytes (limit {MAX_NAME_BYTES:,})")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"has {what} that is not UTF-8 ({data[:40]!r})") from None

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` strings: the hot loop of a tokenizer's vocabulary, locals only."""
        unpack, buf, pos, end = _U64.unpack_from, self.buf, self.pos, len(self.buf)
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, f"a string of {what}")
                buf, pos, end = self.buf, self.pos, len(self.buf)
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > end:
                self.pos = pos
                self.skip(n, f"a string of {what}")
                buf, pos, end = self.buf, self.pos, len(self.buf)
            else:
                pos += n
        self.pos = pos


class CorruptFactory:
    """Errors that name the file: `is not a valid GGUF file: it <what>`."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, what: str) -> CorruptFileError:
        return CorruptFileError(f"{self.label} is not a valid GGUF file: it {what}")


class GGUFHeader:
    """The parsed, validated header of one GGUF file."""

    def __init__(self, path: Path, label: str) -> None:
        self.path, self.label = path, label
        self.corrupt = CorruptFactory(label)
        self.metadata: dict[str, str] = {}
        self.alignment = DEFAULT_ALIGNMENT
        self.walked = 0
        self.kept = 0  # characters of metadata text kept so far
        # name -> (dtype shown, ggml type name, shape, offset in the file, bytes)
        self.entries: dict[str, tuple[str, str, tuple[int, ...], int, int]] = {}
        try:
            self.size = path.stat().st_size
            with path.open("rb") as f, paused_gc():  # hundreds of thousands of tuples, none cyclic
                self._parse(_Cursor(f, self.size, self.corrupt))
        except OSError as exc:
            raise CorruptFileError(f"cannot read {label}: {exc.strerror or exc}") from exc

    def _parse(self, cur: _Cursor) -> None:
        cur.need(8, "the header")
        if cur.buf[:4] != MAGIC:
            raise self.corrupt("does not start with the GGUF magic")
        raw = cur.buf[4:8]
        cur.pos = 8
        version = int.from_bytes(raw, "little")
        if version & 0xFFFF == 0 and int.from_bytes(raw, "big") in VERSIONS:
            raise UnknownFormatError(
                f"{self.label} is a big-endian GGUF file; modinspect reads little-endian GGUF only"
            )
        if version not in VERSIONS:
            raise UnknownFormatError(
                f"{self.label} is GGUF version {version}; modinspect reads versions 2 and 3"
            )
        self.version = version
        n_tensors = cur.u64("the tensor count")
        n_kv = cur.u64("the key/value count")
        # The smallest key/value is 13 bytes (an empty key, its type, a uint8); the smallest tensor info 24.
        if n_kv > MAX_KV or n_kv * 13 > cur.left:
            raise self.corrupt(
                f"declares {n_kv:,} key/values, more than its {cur.left:,} bytes can hold"
                if n_kv <= MAX_KV
                else f"declares {n_kv:,} key/values (limit {MAX_KV:,})"
            )
        if n_tensors > MAX_TENSORS or n_tensors * 24 > cur.left:
            raise self.corrupt(
                f"declares {n_tensors:,} tensors, more than its {cur.left:,} bytes can hold"
                if n_tensors <= MAX_TENSORS
                else f"declares {n_tensors:,} tensors (limit {MAX_TENSORS:,})"
            )
        self.metadata["GGUF.version"] = str(version)
        for _ in range(n_kv):
            self._key_value(cur)
        infos = self._tensor_infos(cur, n_tensors)
        data_start = -(-cur.offset // self.alignment) * self.alignment
        self.data_start = data_start
        self._place(infos, data_start)

    def _key_value(self, cur: _Cursor) -> None:
        key = cur.name("a metadata key")
        if key in self.metadata:
            raise self.corrupt(f"has the metadata key {key!r} twice")
        vtype = cur.u32(f"the type of {key!r}")
        if key == "general.alignment":
            if vtype != 4:
                raise self.corrupt(
                    f"gives general.alignment the type {VALUE_TYPES.get(vtype, (vtype,))[0]}, not uint32"
                )
            alignment = cur.u32("general.alignment")
            if alignment == 0 or alignment & (alignment - 1):
                raise self.corrupt(f"gives general.alignment {alignment}, not a power of two")
            self.alignment = alignment
            self.metadata[key] = str(alignment)
            return
        value = self._value(cur, vtype, key, 0)
        if key == "general.file_type" and value.isdigit() and int(value) in FILE_TYPES:
            value = f"{value} ({FILE_TYPES[int(value)]})"
        self.metadata[key] = value

    def _value(self, cur: _Cursor, vtype: int, key: str, depth: int) -> str:
        if vtype not in VALUE_TYPES:
            raise self.corrupt(f"gives {key!r} the unknown value type {vtype}")
        _name, fmt = VALUE_TYPES[vtype]
        if fmt is not None:
            return _scalar_text(cur.scalar(fmt, struct.calcsize(fmt), repr(key)), vtype)
        if vtype == STRING:
            # Past MAX_KEPT characters in all, each further string is kept short: the file's bytes bound
            # what is kept, but a 600 MB file of strings would otherwise be 600 MB of metadata.
            limit = MAX_VALUE_CHARS if self.kept < MAX_KEPT else 80
            data, n = cur.raw_string(f"the value of {key!r}", limit * 4)
            text = data.decode("utf-8", errors="replace")
            if n > len(data) or len(text) > limit:
                text = f"{text[:limit]}… ({n:,} bytes)"
            self.kept += len(text)
            return text
        return self._array(cur, key, depth)

    def _array(self, cur: _Cursor, key: str, depth: int) -> str:
        if depth >= MAX_ARRAY_DEPTH:
            raise self.corrupt(f"nests arrays in {key!r} deeper than {MAX_ARRAY_DEPTH}")
        itype = cur.u32(f"the element type of {key!r}")
        count = cur.u64(f"the length of {key!r}")
        if itype not in VALUE_TYPES:
            raise self.corrupt(f"gives the elements of {key!r} the unknown value type {itype}")
        iname, fmt = VALUE_TYPES[itype]
        size = struct.calcsize(fmt) if fmt is not None else (8 if itype == STRING else 12)
        if count * size > cur.left:
            raise self.corrupt(
                f"declares {count:,} elements in {key!r}, more than its {cur.left:,} bytes left can hold"
            )
        plural = "strings" if itype == STRING else ("arrays" if itype == ARRAY else iname)
        if count <= INLINE_ITEMS:
            items = [self._value(cur, itype, key, depth + 1) for _ in range(count)]
            if itype == STRING:
                items = [_quoted(s) for s in items]
            return "[" + ", ".join(items) + "]"
        if fmt is not None:
            cur.skip(count * size, f"the elements of {key!r}")
        else:
            self.walked += count
            if self.walked > MAX_WALKED:
                raise self.corrupt(
                    f"holds more than {MAX_WALKED:,} strings and arrays in its metadata ({key!r})"
                )
            if itype == STRING:
                cur.skip_strings(count, repr(key))
            else:
                for _ in range(count):
                    self._value(cur, itype, key, depth + 1)
        return f"array of {count:,} {plural}"

    def _tensor_infos(
        self, cur: _Cursor, count: int
    ) -> list[tuple[str, int, tuple[int, ...], int]]:
        """The tensor infos: the hot loop of a header (a 7B model has 291, a hostile file up to MAX_TENSORS).

        Each is read straight from the window with struct; the cursor is asked for more bytes (and builds its
        message) only when the window runs out.
        """
        infos = []
        unpack_u64, unpack_u32, dims_of = _U64.unpack_from, _U32.unpack_from, _DIMS
        for _ in range(count):
            if cur.pos + 8 > len(cur.buf):
                cur.need(8, "the length of a tensor name")
            (n,) = unpack_u64(cur.buf, cur.pos)
            if 8 + n > cur.left:
                raise self.corrupt(
                    f"declares a tensor name of {n:,} bytes, past the end of the file "
                    f"({cur.left - 8:,} left)"
                )
            if n > MAX_NAME_BYTES:
                raise self.corrupt(
                    f"declares a tensor name of {n:,} bytes (limit {MAX_NAME_BYTES:,})"
                )
            if cur.pos + 8 + n + 4 > len(cur.buf):
                cur.need(8 + n + 4, "a tensor name and its dims")
            buf, pos = cur.buf, cur.pos + 8
            try:
                name = buf[pos : pos + n].decode("utf-8")
            except UnicodeDecodeError:
                raise self.corrupt(
                    f"has a tensor name that is not UTF-8 ({buf[pos : pos + 40]!r})"
                ) from None
            pos += n
            (n_dims,) = unpack_u32(buf, pos)
            if n_dims > MAX_DIMS:
                raise self.corrupt(f"gives {name!r} {n_dims:,} dims (ggml allows {MAX_DIMS})")
            cur.pos = pos + 4
            rest = 8 * n_dims + 12
            if cur.pos + rest > len(cur.buf):
                cur.need(rest, f"the dims of {name!r}")
            buf, pos = cur.buf, cur.pos
            ne = dims_of[n_dims].unpack_from(buf, pos)
            (gtype,) = unpack_u32(buf, pos + 8 * n_dims)
            (offset,) = unpack_u64(buf, pos + 8 * n_dims + 4)
            cur.pos = pos + rest
            infos.append((name, gtype, ne, offset))
        return infos

    def _place(self, infos: list[tuple[str, int, tuple[int, ...], int]], data_start: int) -> None:
        """Each tensor's type, bytes and place, checked: a known type, whole blocks, aligned, in the file, apart."""
        spans = []
        entries, types = self.entries, dtypes.BY_GGML
        alignment, size = self.alignment, self.size
        for name, gtype, ne, offset in infos:
            if name in entries:
                raise self.corrupt(f"lists the tensor {name!r} twice")
            known = types.get(gtype)
            if known is None:
                raise self.corrupt(f"gives {name!r} the unknown ggml type {gtype}")
            tname, block = known.ggml_name, known.block
            numel = 1
            for d in ne:
                numel *= d
            if numel >= _INT64_LIMIT or (
                not numel and math.prod(d for d in ne if d) >= _INT64_LIMIT
            ):
                raise self.corrupt(f"gives {name!r} dims {list(ne)} whose product overflows int64")
            row = ne[0] if ne else 1  # a tensor with no dims is one element
            if block > 1 and row % block:
                raise self.corrupt(
                    f"gives {name!r} rows of {row:,} elements, not a multiple of {tname}'s "
                    f"block of {block}"
                )
            nbytes = dtypes.nbytes(known.name, numel)
            if offset % alignment:
                raise self.corrupt(
                    f"places {name!r} at offset {offset:,}, not a multiple of the alignment {alignment}"
                )
            begin = data_start + offset
            if begin + nbytes > size:
                raise self.corrupt(
                    f"places {name!r} ({nbytes:,} bytes of {tname}) at byte {begin:,}, past the end of "
                    f"the file ({size:,} bytes; truncated?)"
                )
            entries[name] = (known.name, str(tname), ne[::-1], begin, nbytes)
            if nbytes:
                spans.append((begin, nbytes, name))
        spans.sort()
        end, last = data_start, ""
        for begin, nbytes, name in spans:
            if begin < end:
                raise self.corrupt(f"places {name!r} at byte {begin:,}, inside {last!r}")
            end, last = begin + nbytes, name


def _scalar_text(value: object, vtype: int) -> str:
    if vtype == 7:
        return "true" if value else "false"
    if vtype == 6:  # float32: as few digits as tell it apart from its neighbours in float32
        return _float32_text(float(value))  # type: ignore[arg-type]
    return repr(value) if isinstance(value, float) else str(value)


def _float32_text(x: float) -> str:
    """The shortest decimal that is the same float32, written as Python writes floats: 1e-05, 10000.0."""
    if not math.isfinite(x):
        return repr(x)
    for digits in range(1, 10):
        shortest = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", shortest))[0] == x:
            return repr(shortest)
    return repr(x)


def _quoted(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)


class GGUFSource(Source):
    """A GGUF model: the header's tensors and metadata; F32/F16/BF16/F64/int tensors read as tensors.

    One file, or the parts of a split (sources/gguf_split.py opens and checks them): `parts` are their headers
    in order, the first holding the model's metadata; tensors are listed part by part.
    """

    def __init__(
        self,
        path: Path,
        label: str | None = None,
        *,
        parts: Sequence[GGUFHeader] | None = None,
        metadata: dict[str, str] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.path = path
        label = label or str(path)
        self.parts = list(parts) if parts else [GGUFHeader(path, label)]
        self.header = self.parts[0]
        # name -> the part holding it, for a split only: one file's tensors need no second table
        self._part_of: dict[str, GGUFHeader] | None = None
        if len(self.parts) > 1:
            self._part_of = {n: h for h in self.parts for n in h.entries}
        with paused_gc():
            tensors = [
                TensorInfo(name, shape, dtype, nbytes, checkpoint_kind(name))
                for h in self.parts
                for name, (dtype, _g, shape, _b, nbytes) in h.entries.items()
            ]
        super().__init__(
            label=label,
            format="gguf",
            tensors=tensors,
            metadata=self.header.metadata if metadata is None else metadata,
            notes=list(notes),
        )

    def _entry(self, name: str) -> tuple[GGUFHeader, tuple[str, str, tuple[int, ...], int, int]]:
        """The header of the file holding tensor `name`, and its entry there."""
        header = self.header if self._part_of is None else self._part_of[name]
        return header, header.entries[name]

    def ggml_type(self, name: str) -> str:
        """The ggml type the file stores tensor `name` in (F32, Q4_K, ...)."""
        return self._entry(name)[1][1]

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        """Where the tensor's bytes lie: its values for the plain types, its blocks' bytes for a quantized one
        (whose dtype is then its ggml type: diff compares those bytes only against the same type)."""
        header, (_dtype, _g, _shape, begin, nbytes) = self._entry(name)
        return header.path, begin, nbytes

    def byte_ranges(self, names: Iterable[str]) -> list[tuple[Path, int, int] | None]:
        if self._part_of is not None:
            return [self.byte_range(n) for n in names]
        path, entries = self.path, self.header.entries
        return [(path, e[3], e[4]) for e in map(entries.__getitem__, names)]

    def _plain(self, name: str) -> tuple[GGUFHeader, str, tuple[int, ...], int, int]:
        header, (dtype, gtype, shape, begin, nbytes) = self._entry(name)
        if dtype == gtype:
            raise UsageError(
                f"{self.label}: {name!r} is {gtype}-quantized; modinspect lists quantized GGUF tensors but does not "
                "dequantize them (gguf-py's gguf.quants.dequantize does)"
            )
        return header, dtype, shape, begin, nbytes

    def _read(self, name: str) -> torch.Tensor:
        import sys

        import torch

        header, dtype, shape, begin, nbytes = self._plain(name)
        torch_dtype = getattr(torch, dtype)
        if nbytes == 0:
            return torch.empty(shape, dtype=torch_dtype)
        buf = bytearray(nbytes)
        with header.path.open("rb") as f:
            f.seek(begin)
            got = f.readinto(buf)
        if got != nbytes:
            raise CorruptFileError(
                f"{header.label} is truncated: {name!r} ends past the end of the file"
            )
        t = torch.frombuffer(buf, dtype=torch_dtype).reshape(shape)
        if sys.byteorder == "big":  # GGUF as read here is little-endian on disk
            t = (
                t.view(torch.uint8)
                .reshape(*shape, -1)
                .flip(-1)
                .contiguous()
                .view(torch_dtype)
                .reshape(shape)
            )
        return t

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        header, dtype, shape, begin, _nbytes = self._plain(name)
        with header.path.open("rb") as f:
            f.seek(begin)
            yield from read_chunks(f, math.prod(shape), dtype, chunk_elems, header.label)
