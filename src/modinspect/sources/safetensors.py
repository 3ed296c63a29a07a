"""safetensors files, read from the header alone; tensor data read one tensor at a time.

The header is parsed in pure Python (no torch import), and validated the way the format's
reference reader does: a bounded header, JSON object, known dtypes, byte sizes equal to
shape x dtype size, offsets contiguous from 0 with no holes and ending at the end of the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import weakref
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect import dtypes
from modinspect.errors import CorruptFileError
from modinspect.gcpause import paused_gc
from modinspect.sources.base import Source, TensorInfo, from_little_endian, read_chunks
from modinspect.sources.kinds import checkpoint_kind

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100_000_000
# A header this long is remembered (its SHA-256, weakly the parse) for the next file whose header is the same bytes.
REUSE_MIN_BYTES = 1 << 20


def _first_duplicate(value: object) -> str | None:
    """The key the json module's object_pairs_hook would have refused first: objects close inner first.

    Objects are parsed as tuples of (key, value) pairs (arrays stay lists), so a duplicate survives
    parsing and is looked for only where a header already fails, or holds fields nobody reads.
    """
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        item, closed = stack.pop()
        if type(item) is tuple:
            if closed:
                seen: set[str] = set()
                for key, _ in item:
                    if key in seen:
                        return str(key)
                    seen.add(key)
            else:
                stack.append((item, True))
                stack.extend((child, False) for _, child in reversed(item))
        elif type(item) is list:
            stack.extend((child, False) for child in reversed(item))
    return None


class SafetensorsHeader:
    """The parsed, validated header of one safetensors file.

    Two checkpoints of one model (what `diff` compares) have byte-identical headers: where a long header is
    the same bytes (by SHA-256) as the last long header parsed, still in use, and its file holds as many data
    bytes, its parse is taken as is: the same validation would give the same entries. `entries` and the
    natural order are then shared, and read only.
    """

    _last: weakref.ref[SafetensorsHeader] | None = None  # the last long header parsed
    metadata: dict[str, str]
    entries: dict[str, tuple[str, tuple[int, ...], int, int]]  # name -> (dtype, shape, begin, end)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest: bytes | None = None
        self._natural: list[str] | None = None
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._corrupt(f"is {size} bytes, too short for a header")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER_BYTES:
                    raise self._corrupt(
                        f"declares a {n:,}-byte header (limit {MAX_HEADER_BYTES:,})"
                    )
                if n > size - 8:
                    raise self._corrupt(
                        f"declares a {n:,}-byte header but the file holds {size - 8:,} bytes after it"
                    )
                raw = f.read(n)
        except OSError as exc:
            raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        self.data_start = 8 + n
        self.data_size = size - self.data_start
        if n >= REUSE_MIN_BYTES:
            self.digest = hashlib.sha256(raw).digest()
            if self._reuse():
                return
        with paused_gc():
            try:
                text = raw.decode("utf-8")
                del raw
                # A tuple per object (a C call, not a Python hook per object): duplicates stay visible.
                parsed = json.loads(text, object_pairs_hook=tuple)
                del text
            except UnicodeDecodeError:
                raise self._corrupt("has a header that is not UTF-8") from None
            except (
                ValueError,
                RecursionError,
            ) as exc:  # ValueError: also integers past Python's digit limit
                raise self._corrupt(
                    f"has a header that is not valid JSON ({exc.__class__.__name__})"
                ) from None
            try:
                self._parse(parsed)
            except CorruptFileError:
                duplicate = _first_duplicate(parsed)
                if duplicate is not None:
                    raise self._corrupt(
                        f"has a header with a duplicate key {duplicate!r}"
                    ) from None
                raise
        if self.digest is not None:
            SafetensorsHeader._last = weakref.ref(self)

    def _reuse(self) -> bool:
        """Take the last long header's parse if this header is the same bytes over as many data bytes."""
        last = SafetensorsHeader._last() if SafetensorsHeader._last is not None else None
        if (
            last is None
            or last.digest != self.digest
            or (last.data_start, last.data_size) != (self.data_start, self.data_size)
        ):
            return False
        self.metadata, self.entries, self._natural = (
            dict(last.metadata),
            last.entries,
            last._natural,
        )
        return True

    def natural_names(self) -> list[str]:
        """The tensor names in natural order (once per parse: a header that reuses a parse reuses it); read only."""
        if self._natural is None:
            self._natural = natural_order(list(self.entries))
        return self._natural

    def _parse(self, parsed: object) -> None:
        if type(parsed) is not tuple:
            raise self._corrupt("has a header that is not a JSON object")
        header = dict(parsed)
        if len(header) != len(parsed):
            raise self._corrupt("has a duplicate key")  # named by the caller
        self.metadata = self._parse_metadata(header.pop("__metadata__", None))
        self.entries = self._parse_entries(header)

    def _corrupt(self, what: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path} is not a valid safetensors file: it {what}")

    def _parse_metadata(self, meta: object) -> dict[str, str]:
        if meta is None:
            return {}
        fields = dict(meta) if type(meta) is tuple else None
        if (
            fields is None
            or len(fields) != len(meta)  # type: ignore[arg-type]
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
        ):
            raise self._corrupt("has __metadata__ that is not a map of strings to strings")
        return fields

    def _parse_entries(
        self, header: dict[str, Any]
    ) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
        entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        codes = dtypes.BY_SAFETENSORS
        for name, spec in header.items():
            if type(spec) is not tuple:
                raise self._corrupt(
                    f"describes {name!r} with a {type(spec).__name__}, not an object"
                )
            fields = dict(spec)
            if len(fields) != len(spec) or (len(fields) > 3 and _first_duplicate(spec) is not None):
                raise self._corrupt("has a duplicate key")  # named by the caller
            code, shape, offsets = (
                fields.get("dtype"),
                fields.get("shape"),
                fields.get("data_offsets"),
            )
            if (
                type(code) is not str or code not in codes
            ):  # a list or an object is not even hashable
                raise self._corrupt(f"gives {name!r} the unknown dtype {code!r}")
            if type(shape) is not list:
                shape = None
            else:
                for d in (
                    shape
                ):  # a loop, not all(genexpr): this runs once per tensor of a 100k-tensor header
                    if type(d) is not int or d < 0:
                        shape = None
                        break
            if shape is None:
                raise self._corrupt(
                    f"gives {name!r} a shape that is not a list of non-negative integers"
                )
            if (
                type(offsets) is not list
                or len(offsets) != 2
                or type(begin := offsets[0]) is not int
                or type(end := offsets[1]) is not int
                or not 0 <= begin <= end
            ):
                raise self._corrupt(
                    f"gives {name!r} data_offsets that are not [begin, end] with 0 <= begin <= end"
                )
            known = codes[code]
            dtype, bits = known.name, known.bits
            numel = math.prod(shape)
            if (numel * bits) % 8:
                raise self._corrupt(
                    f"gives {name!r} {numel} elements of {code}, not a whole number of bytes"
                )
            expected = dtypes.nbytes(dtype, numel)
            if end - begin != expected:
                raise self._corrupt(
                    f"gives {name!r} {end - begin} bytes but shape {shape} of {code} needs {expected}"
                )
            entries[name] = (dtype, tuple(shape), begin, end)
        self._check_layout(entries)
        return entries

    def _check_layout(self, entries: dict[str, tuple[str, tuple[int, ...], int, int]]) -> None:
        expected_begin = 0
        for (
            _,
            _,
            begin,
            end,
        ) in entries.values():  # writers list most headers in data order: no sort needed
            if begin != expected_begin:
                break
            expected_begin = end
        else:
            self._check_end(expected_begin)
            return
        expected_begin = 0
        for name, (_, _, begin, end) in sorted(
            entries.items(), key=lambda kv: (kv[1][2], kv[1][3])
        ):
            if begin != expected_begin:
                problem = (
                    "overlaps the previous tensor"
                    if begin < expected_begin
                    else "leaves a hole before it"
                )
                raise self._corrupt(f"places {name!r} at byte {begin}, which {problem}")
            expected_begin = end
        self._check_end(expected_begin)

    def _check_end(self, expected_begin: int) -> None:
        if expected_begin != self.data_size:
            if expected_begin > self.data_size:
                raise self._corrupt(
                    f"needs {expected_begin:,} bytes of tensor data but holds {self.data_size:,} (truncated?)"
                )
            raise self._corrupt(
                f"has {self.data_size - expected_begin:,} stray bytes after the last tensor"
            )


def shared_storage_note(aliases: dict[str, str]) -> str:
    """What the file says of save_model's dropped names, and what it leaves unsaid (their shapes)."""
    name, kept = next(iter(aliases.items()))
    if len(aliases) == 1:
        return (
            f"save_model recorded {name} only as sharing {kept}'s storage, not its shape: shown as {kept}, "
            "which it may view only in part"
        )
    return (
        f"save_model recorded {len(aliases)} names only as sharing a stored tensor's storage (e.g. {name} -> "
        f"{kept}), not their shapes: shown as that tensor, which they may view only in part"
    )


def alias_map(metadata: dict[str, str], names: Collection[str]) -> dict[str, str]:
    """Tied names that `safetensors.torch.save_model` dropped, as {dropped name: kept name}."""
    return {k: v for k, v in metadata.items() if k not in names and v in names}


class SafetensorsSource(Source):
    """A single .safetensors file."""

    def __init__(
        self,
        path: Path,
        label: str | None = None,
        header: SafetensorsHeader | None = None,
        storage_prefix: str | None = None,
    ) -> None:
        self.path = path
        self.header = header or SafetensorsHeader(path)
        tensors = safetensors_infos(
            self.header, storage_prefix=f"{path}:" if storage_prefix is None else storage_prefix
        )
        super().__init__(
            label=label or str(path),
            format="safetensors",
            tensors=tensors,
            metadata=self.header.metadata,
        )
        self._aliases = alias_map(self.header.metadata, self.header.entries.keys())
        self.shared_storage = dict(self._aliases)
        if self._aliases:
            self.notes.append(shared_storage_note(self._aliases))

    def _read(self, name: str) -> torch.Tensor:
        return read_safetensors_tensor(self.header, self._aliases.get(name, name))

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        dtype, _, begin, end = self.header.entries[
            self._aliases.get(name, name)
        ]  # KeyError for a stranger
        return (
            None
            if dtypes.BITS[dtype] % 8
            else (self.path, self.header.data_start + begin, end - begin)
        )

    def byte_ranges(self, names: Iterable[str]) -> list[tuple[Path, int, int] | None]:
        if self._aliases:
            names = [self._aliases.get(name, name) for name in names]
        path, start, bits = self.path, self.header.data_start, dtypes.BITS
        return [
            None if bits[e[0]] % 8 else (path, start + e[2], e[3] - e[2])
            for e in map(self.header.entries.__getitem__, names)
        ]

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        dtype, shape, begin, _end = self.header.entries[self._aliases.get(name, name)]
        numel = 1
        for d in shape:
            numel *= d
        if dtypes.BITS[dtype] % 8:
            yield from super()._chunks(name, chunk_elems)
            return
        with self.path.open("rb") as f:
            f.seek(self.header.data_start + begin)
            yield from read_chunks(f, numel, dtype, chunk_elems, str(self.path))


def natural_key(name: str) -> list[tuple[int, int, str]]:
    """'h.10.w' sorts after 'h.9.w': runs of ASCII digits compare as numbers, however long they are."""
    key = []
    for i, part in enumerate(re.split(r"([0-9]+)", name)):
        if (
            i % 2
        ):  # a digit run: by length without leading zeros, then digit by digit, as int() would
            digits = part.lstrip("0")
            key.append((0, len(digits), digits))
        elif part:
            key.append((1, 0, part))
    return key


_DIGIT_RUNS = re.compile(r"([0-9]+)")


def _natural_strings(names: list[str]) -> list[str] | None:
    """One string per name that sorts, as a plain string, exactly as natural_key sorts; None if none can.

    A text part ends in chr(1) (below any character it holds, so a prefix sorts first); a digit run becomes
    chr(1), a character counting its significant digits, then those digits: by length, then digit by digit.
    Comparing strings is C; comparing natural_key's lists of tuples is Python, three times slower.
    """
    split = _DIGIT_RUNS.split
    runs: dict[str, str] = {}
    out = []
    for name in names:
        parts = split(name)
        for i in range(1, len(parts), 2):
            digits = parts[i]
            encoded = runs.get(digits)
            if encoded is None:
                significant = digits.lstrip("0")
                if len(significant) + 2 > 0x10FFFF:
                    return None
                encoded = runs[digits] = "\x01" + chr(len(significant) + 2) + significant
            parts[i] = encoded
        parts.append("\x01")
        out.append("".join(parts))
    return out


def natural_order(names: list[str]) -> list[str]:
    """`names` sorted by natural_key (stable), through plain string keys when every name allows it."""
    keys = None if any("\x00" in n or "\x01" in n for n in names) else _natural_strings(names)
    if keys is None:
        return sorted(names, key=natural_key)
    order = sorted(range(len(names)), key=keys.__getitem__)
    return [names[i] for i in order]


def safetensors_infos(header: SafetensorsHeader, storage_prefix: str) -> list[TensorInfo]:
    """TensorInfos in natural name order (writers sort keys by dtype, not by module), plus save_model aliases."""
    entries = header.entries
    with paused_gc():
        infos = []
        for name in header.natural_names():
            dtype, shape, begin, end = entries[name]
            infos.append(
                TensorInfo(
                    name, shape, dtype, end - begin, checkpoint_kind(name), storage_prefix + name
                )
            )
        aliases = alias_map(header.metadata, entries)
    if aliases:
        by_name = {t.name: t for t in infos}
        for alias, kept in aliases.items():
            k = by_name[kept]
            infos.append(
                TensorInfo(
                    name=alias,
                    shape=k.shape,
                    dtype=k.dtype,
                    nbytes=k.nbytes,
                    kind=k.kind,
                    storage=k.storage,
                )
            )
    return infos


def read_safetensors_tensor(header: SafetensorsHeader, name: str) -> torch.Tensor:
    """Read one tensor's bytes with plain file reads, so no whole-file mapping stays resident."""
    import torch

    dtype, shape, begin, end = header.entries[name]
    torch_dtype = getattr(torch, dtype, None)
    if torch_dtype is None:
        raise CorruptFileError(f"{header.path}: this torch cannot hold {dtype} tensors ({name!r})")
    if begin == end:
        return torch.empty(shape, dtype=torch_dtype)
    buf = bytearray(end - begin)
    with header.path.open("rb") as f:
        f.seek(header.data_start + begin)
        got = f.readinto(buf)
    if got != len(buf):
        raise CorruptFileError(
            f"{header.path} is truncated: {name!r} ends past the end of the file"
        )
    return from_little_endian(buf, torch_dtype).reshape(shape)
