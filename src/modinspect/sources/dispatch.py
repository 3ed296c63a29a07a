"""Which reader opens a SOURCE: by what the path is and by its first bytes, not its extension."""

from __future__ import annotations

import contextlib
import stat
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.errors import (
    CorruptFileError,
    ModinspectError,
    SourceNotFoundError,
    UnknownFormatError,
    UnsafePickleError,
)
from modinspect.sources.base import Source
from modinspect.sources.hf_layers import DEFAULT_MAX_LAYERS
from modinspect.sources.pickle.check import DEFAULT_MAX_PICKLE

if TYPE_CHECKING:  # the gate is imported when a pickle is read: a safetensors diff never needs it
    from modinspect.sources.pickle.gate import Gate

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class OpenOptions:
    unsafe_pickle: bool = False
    model_weights: str = "header"  # a config.json directory's model: "header" (meta), "init" or "pretrained"
    plain_dir: bool = False  # a directory's weights only, without its DCP / PEFT / config.json reader
    allow_globals: frozenset[str] = frozenset()
    max_pickle_bytes: int = DEFAULT_MAX_PICKLE
    max_layers: int = DEFAULT_MAX_LAYERS  # a config.json's layers built at most (--max-layers)

    def gate(self, label: str) -> Gate:
        """The pickle gate; its refusals name the file as the user gave it."""
        from modinspect.sources.pickle.gate import Gate, GatePolicy

        return Gate(label, GatePolicy(allow_globals=self.allow_globals, max_pickle_bytes=self.max_pickle_bytes))


def open_path(path: Path, label: str, options: OpenOptions) -> Source:
    """Open a file or directory SOURCE."""
    try:
        if path.is_dir():
            with reader_errors(label):
                return _open_dir(path, label, options)
        if not path.exists():
            if path.is_symlink():
                raise SourceNotFoundError(f"{label} is a symbolic link that leads nowhere (a loop or a missing target)")
            raise SourceNotFoundError(f"{label} does not exist")
    except OSError as exc:  # symlink loops, permissions
        raise SourceNotFoundError(f"cannot open {label}: {exc.strerror or exc}") from None
    with reader_errors(label):
        if path.name.endswith(".index.json"):
            from modinspect.sources.sharded import ShardedSource

            return ShardedSource(path, label, options)
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
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, LookupError, UnicodeError, ArithmeticError, EOFError, OSError, RuntimeError,
            struct.error, zipfile.BadZipFile) as exc:
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
        raise CorruptFileError(f"{label} could not be read ({detail})") from exc


def _open_dir(path: Path, label: str, options: OpenOptions) -> Source:
    from modinspect.sources.sharded import ShardedSource

    if not options.plain_dir:
        from modinspect.sources.dirs import open_special_dir

        special = open_special_dir(path, label, options)
        if special is not None:
            return special
    indexes = [path / n for n in INDEX_NAMES if (path / n).is_file()]
    if not indexes:
        indexes = sorted(p for p in path.glob("*.index.json") if p.is_file())
    if indexes:
        return ShardedSource(indexes[0], label, options)
    for name in SINGLE_NAMES:
        if (path / name).is_file():
            return open_file(path / name, label, options)
    raise UnknownFormatError(
        f"{label} is a directory without a checkpoint: expected {INDEX_NAMES[0]}, {INDEX_NAMES[1]}, "
        f"{SINGLE_NAMES[0]} or {SINGLE_NAMES[1]}"
    )


def sniff(path: Path) -> str:
    """'gguf', 'safetensors', 'zip', 'pickle' or 'unknown', from the first bytes."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read below forever
            raise UnknownFormatError(f"{path} is not a regular file")
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise SourceNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise CorruptFileError(f"{path} is empty")
    if head[:4] == b"GGUF":  # before safetensors': a GGUF of 123 tensors has "{" at byte 8
        return "gguf"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def open_file(path: Path, label: str, options: OpenOptions, storage_prefix: str | None = None) -> Source:
    """The single-file reader for `path`. `storage_prefix`: a safetensors file's storage keys start with it
    (a sharded index passes its own, so the shard's descriptions need no copy); other formats ignore it."""
    kind = sniff(path)
    if kind == "safetensors":
        from modinspect.sources.safetensors import SafetensorsSource

        return SafetensorsSource(path, label, storage_prefix=storage_prefix)
    if kind == "gguf":
        from modinspect.sources.gguf import GGUFSource

        return GGUFSource(path, label)
    if kind == "unknown":
        raise UnknownFormatError(
            f"{label} is not a checkpoint modinspect reads (safetensors, GGUF, torch .pt/.pth/.bin, TorchScript, "
            "or a sharded index)"
        )
    try:
        source = _open_pickled(path, label, kind, options)
    except UnsafePickleError as exc:
        if not options.unsafe_pickle:
            raise
        return _open_unsafe(path, label, exc.globals)
    if options.unsafe_pickle and source.standins and source.format != "torchscript":
        # The user trusts the file: build the real objects (a live module, a real Namespace).
        source.close()
        return _open_unsafe(path, label, source.standins)
    return source


def _open_pickled(path: Path, label: str, kind: str, options: OpenOptions) -> Source:
    from modinspect.sources import torchfile

    gate = options.gate(label)
    if kind == "pickle":
        if torchfile.is_legacy_file(path):
            return torchfile.LegacyTorchSource(path, label, gate)
        return torchfile.open_raw_pickle(path, label, gate)
    try:
        zf = zipfile.ZipFile(path)
    except torchfile.ZIP_ERRORS as exc:
        raise CorruptFileError(f"{label} is a damaged zip file ({exc})") from None
    try:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            from modinspect.sources.pt2 import Pt2Source, is_pt2

            if is_pt2(names):  # torch.export.save: JSON and raw bytes, no data.pkl
                return Pt2Source(path, label, zf)
            raise UnknownFormatError(f"{label} is a zip file but not a torch checkpoint (no data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
            from modinspect.sources.torchscript import open_torchscript

            source = open_torchscript(path, label, zf, prefix, gate, unsafe=options.unsafe_pickle)
        else:
            source = torchfile.ZipTorchSource(path, label, zf, prefix, gate)
    except BaseException:
        zf.close()
        raise
    if source.module is not None:  # torch.jit.load has read everything it needs
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
        raise CorruptFileError(f"{label} failed to unpickle even with --unsafe-pickle ({type(exc).__name__}: {exc})") from exc
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
