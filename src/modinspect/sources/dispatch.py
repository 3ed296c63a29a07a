"""Which reader opens a SOURCE: tables of (probe, opener) rows, by what the path is and by its first bytes,
not its extension. A new format is one reader module and one row here."""

from __future__ import annotations

import contextlib
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modinspect.errors import (
    CorruptFileError,
    ModinspectError,
    SourceNotFoundError,
    UnknownFormatError,
    UnsafePickleError,
)
from modinspect.sources.base import Source
from modinspect.sources.options import OpenOptions
from modinspect.sources.sniff import sniff

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")

__all__ = [
    "DIR_READERS",
    "FILE_READERS",
    "ZIP_READERS",
    "OpenOptions",
    "Reader",
    "open_file",
    "open_path",
    "reader_errors",
    "sniff",
]


@dataclass(frozen=True)
class Reader:
    """One row of a dispatch table: the first row whose `probe` accepts the input opens it with `open`."""

    name: str
    probe: Callable[[Any], bool]
    open: Callable[..., Source]


def open_path(path: Path, label: str, options: OpenOptions) -> Source:
    """Open a file or directory SOURCE."""
    try:
        if path.is_dir():
            with reader_errors(label):
                return _open_dir(path, label, options)
        if not path.exists():
            if path.is_symlink():
                raise SourceNotFoundError(
                    f"{label} is a symbolic link that leads nowhere (a loop or a missing target)"
                )
            raise SourceNotFoundError(f"{label} does not exist")
    except OSError as exc:  # symlink loops, permissions
        raise SourceNotFoundError(f"cannot open {label}: {exc.strerror or exc}") from None
    with reader_errors(label):
        if path.name.endswith(".index.json"):
            return _open_sharded(path, label, options)
        return open_file(path, label, options)


@contextlib.contextmanager
def reader_errors(label: str) -> Iterator[None]:
    """Whatever escapes a reader while it parses a file is the file's fault: a corrupt-file error naming it.

    A ModinspectError passes as it is; so do KeyboardInterrupt and MemoryError's parent BaseException.
    """
    try:
        yield
    except ModinspectError:
        raise
    except (
        RecursionError,
        MemoryError,
        OverflowError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        LookupError,
        UnicodeError,
        ArithmeticError,
        EOFError,
        OSError,
        RuntimeError,
        struct.error,
        zipfile.BadZipFile,
    ) as exc:
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
        raise CorruptFileError(f"{label} could not be read ({detail})") from exc


# ---- directories: probe(path) on the directory ------------------------------------------------------------


def _has(name: str) -> Callable[[Path], bool]:
    return lambda path: (path / name).is_file()


def _open_dcp(path: Path, label: str, options: OpenOptions) -> Source:
    from modinspect.sources.dcp import DcpSource

    return DcpSource(path, label, options)


def _open_peft(path: Path, label: str, options: OpenOptions) -> Source:
    from modinspect.sources.peft_adapter import PeftAdapterSource

    return PeftAdapterSource(path, label, options, open_file)


def _open_hf(path: Path, label: str, options: OpenOptions) -> Source:
    from modinspect.sources.hf_dir import open_hf_dir

    try:
        weights: Source | None = open_path(path, label, replace(options, plain_dir=True))
        missing = None
    except UnknownFormatError as exc:  # a config alone still describes the model
        weights, missing = None, exc
    return open_hf_dir(
        path,
        label,
        weights,
        options.model_weights,  # type: ignore[arg-type]
        missing,
        options.max_layers,
    )


def _index_of(path: Path) -> Path | None:
    indexes = [path / n for n in INDEX_NAMES if (path / n).is_file()]
    if not indexes:
        indexes = sorted(p for p in path.glob("*.index.json") if p.is_file())
    return indexes[0] if indexes else None


def _open_sharded(index: Path, label: str, options: OpenOptions) -> Source:
    from modinspect.sources.sharded import ShardedSource

    return ShardedSource(index, label, options, open_file)


def _open_single(path: Path, label: str, options: OpenOptions) -> Source:
    name = next(n for n in SINGLE_NAMES if (path / n).is_file())
    return open_file(path / name, label, options)


# Directories that are more than their weights come first; `plain_dir` (a config.json directory's own
# weights) starts at the first row that is not special.
SPECIAL_DIRS = 3
DIR_READERS: tuple[Reader, ...] = (
    Reader("dcp", _has(".metadata"), _open_dcp),
    Reader("peft-adapter", _has("adapter_config.json"), _open_peft),
    Reader("hf-dir", _has("config.json"), _open_hf),
    Reader(
        "sharded",
        lambda path: _index_of(path) is not None,
        lambda path, label, options: _open_sharded(_index_of(path), label, options),  # type: ignore[arg-type]
    ),
    Reader(
        "single-file", lambda path: any((path / n).is_file() for n in SINGLE_NAMES), _open_single
    ),
)


def _open_dir(path: Path, label: str, options: OpenOptions) -> Source:
    for row in DIR_READERS[SPECIAL_DIRS if options.plain_dir else 0 :]:
        if row.probe(path):
            return row.open(path, label, options)
    raise UnknownFormatError(
        f"{label} is a directory without a checkpoint: expected {INDEX_NAMES[0]}, {INDEX_NAMES[1]}, "
        f"{SINGLE_NAMES[0]} or {SINGLE_NAMES[1]}"
    )


# ---- single files: probe(kind) on what sniff() read from the first bytes -------------------------------------


def _open_safetensors(
    path: Path, label: str, options: OpenOptions, storage_prefix: str | None = None
) -> Source:
    from modinspect.sources.safetensors import SafetensorsSource

    return SafetensorsSource(path, label, storage_prefix=storage_prefix)


def _open_gguf(
    path: Path, label: str, options: OpenOptions, storage_prefix: str | None = None
) -> Source:
    """One GGUF file, or (a part of) a GGUF split: every part then, as one source."""
    from modinspect.sources.gguf_split import open_gguf

    return open_gguf(path, label)


def _open_torch(
    path: Path, label: str, options: OpenOptions, storage_prefix: str | None = None
) -> Source:
    """A pickle or a zip: through the weights-only gate, or torch.load itself with --unsafe-pickle."""
    try:
        source = _open_pickled(path, label, sniff(path), options)
    except UnsafePickleError as exc:
        if not options.unsafe_pickle:
            raise
        return _open_unsafe(path, label, exc.globals)
    if options.unsafe_pickle and source.standins and source.format != "torchscript":
        # The user trusts the file: build the real objects (a live module, a real Namespace).
        source.close()
        return _open_unsafe(path, label, source.standins)
    return source


FILE_READERS: tuple[Reader, ...] = (
    Reader("safetensors", lambda kind: kind == "safetensors", _open_safetensors),
    Reader("gguf", lambda kind: kind == "gguf", _open_gguf),
    Reader("torch", lambda kind: kind in ("pickle", "zip"), _open_torch),
)


def open_file(
    path: Path, label: str, options: OpenOptions, storage_prefix: str | None = None
) -> Source:
    """The single-file reader for `path`. `storage_prefix`: a safetensors file's storage keys start with it
    (a sharded index passes its own, so the shard's descriptions need no copy); other formats ignore it."""
    kind = sniff(path)
    for row in FILE_READERS:
        if row.probe(kind):
            return row.open(path, label, options, storage_prefix)
    raise UnknownFormatError(
        f"{label} is not a checkpoint modinspect reads (safetensors, GGUF, torch .pt/.pth/.bin, TorchScript, "
        "or a sharded index)"
    )


# ---- torch zip archives: probe(listing) on the archive's member names, scanned once ----------------------


@dataclass(frozen=True)
class ZipListing:
    """A zip's member names and the `<prefix>/` of its top-level data.pkl (None without one)."""

    names: list[str]
    prefix: str | None

    @classmethod
    def of(cls, names: list[str]) -> ZipListing:
        pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        return cls(names, pkl[: -len("data.pkl")] if pkl is not None else None)


def _is_pt2(listing: ZipListing) -> bool:
    from modinspect.sources.pt2 import is_pt2

    return listing.prefix is None and is_pt2(listing.names)


def _is_torchscript(listing: ZipListing) -> bool:
    prefix = listing.prefix
    return prefix is not None and (
        f"{prefix}constants.pkl" in listing.names
        or any(n.startswith(f"{prefix}code/") for n in listing.names)
    )


def _open_pt2(
    path: Path, label: str, zf: zipfile.ZipFile, listing: ZipListing, options: OpenOptions
) -> Source:
    from modinspect.sources.pt2 import Pt2Source

    return Pt2Source(path, label, zf)  # torch.export.save: JSON and raw bytes, no data.pkl


def _open_torchscript(
    path: Path, label: str, zf: zipfile.ZipFile, listing: ZipListing, options: OpenOptions
) -> Source:
    from modinspect.sources.torchscript import open_torchscript

    return open_torchscript(
        path, label, zf, listing.prefix or "", options.gate(label), unsafe=options.unsafe_pickle
    )


def _open_zip_checkpoint(
    path: Path, label: str, zf: zipfile.ZipFile, listing: ZipListing, options: OpenOptions
) -> Source:
    from modinspect.sources import torchfile

    return torchfile.ZipTorchSource(path, label, zf, listing.prefix or "", options.gate(label))


ZIP_READERS: tuple[Reader, ...] = (
    Reader("pt2", _is_pt2, _open_pt2),
    Reader("torchscript", _is_torchscript, _open_torchscript),
    Reader("torch-zip", lambda listing: listing.prefix is not None, _open_zip_checkpoint),
)


def _open_pickled(path: Path, label: str, kind: str, options: OpenOptions) -> Source:
    from modinspect.sources import torchfile

    if kind == "pickle":
        gate = options.gate(label)
        if torchfile.is_legacy_file(path):
            return torchfile.LegacyTorchSource(path, label, gate)
        return torchfile.open_raw_pickle(path, label, gate)
    try:
        zf = zipfile.ZipFile(path)
    except torchfile.ZIP_ERRORS as exc:
        raise CorruptFileError(f"{label} is a damaged zip file ({exc})") from None
    try:
        listing = ZipListing.of(zf.namelist())
        row = next((r for r in ZIP_READERS if r.probe(listing)), None)
        if row is None:
            raise UnknownFormatError(
                f"{label} is a zip file but not a torch checkpoint (no data.pkl)"
            )
        source = row.open(path, label, zf, listing, options)
    except BaseException:
        zf.close()
        raise
    if source.module is not None and row.name != "pt2":  # torch.jit.load has read all it needs
        zf.close()
    return source


def _open_unsafe(path: Path, label: str, globals_: list[str]) -> Source:
    import torch

    from modinspect.sources.base import EntrySummary
    from modinspect.sources.memory import TensorDictSource
    from modinspect.sources.module import ModuleSource
    from modinspect.sources.torchfile import find_state_dict, summarize

    warning = (
        f"--unsafe-pickle: fully unpickling {label}, which imports {', '.join(globals_[:6])}"
        f"{' and more' if len(globals_) > 6 else ''}; this runs code from the file"
    )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CorruptFileError(
            f"{label} failed to unpickle even with --unsafe-pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(obj, torch.nn.Module):
        src: Source = ModuleSource(obj, label, "torch-pickled-module")
    else:
        found = find_state_dict(obj, tensor_type=torch.Tensor)
        if found is None:
            raise CorruptFileError(f"{label} holds no state dict ({summarize(obj)})")
        state, key = found
        others = []
        if key is not None and isinstance(obj, dict):
            top = key.split(".")[0]
            others = [EntrySummary(str(k), summarize(v)) for k, v in obj.items() if k != top]
        src = TensorDictSource(state, label, "torch-unsafe", key, others)
    src.warnings.append(warning)
    return src
