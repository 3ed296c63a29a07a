"""Python entry points: `path/to/file.py:NAME` and `package.module:NAME`."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.errors import EntryPointError
from modinspect.sources.module import ModuleSource

if TYPE_CHECKING:
    from torch import nn

_ATTR = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MODULE_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


# `model.ckpt:latest` is a missing checkpoint, not the module `ckpt` of a package `model`.
CHECKPOINT_SUFFIXES = frozenset(
    {
        "pt",
        "pth",
        "bin",
        "ckpt",
        "safetensors",
        "json",
        "pt2",
        "pkl",
        "pickle",
        "tar",
        "zip",
        "distcp",
        "gguf",
        "onnx",
        "h5",
        "npz",
        "npy",
        "msgpack",
    }
)


def looks_like_entry_point(spec: str) -> bool:
    """'file.py:NAME' or 'pkg.mod:NAME' (and not an existing path that merely contains a colon)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not _ATTR.match(attr) or Path(spec).exists():
        return False
    if target.endswith(".py"):
        return True
    return (
        bool(_MODULE_PATH.match(target))
        and target.rpartition(".")[2].lower() not in CHECKPOINT_SUFFIXES
    )


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _import_target(target: str, base: Path) -> Any:
    if target.endswith(".py"):
        path = (base / target).resolve()
        if not path.is_file():
            raise EntryPointError(f"entry point file {target} does not exist")
        name = f"_modinspect_entry_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise EntryPointError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        with _on_sys_path(path.parent):
            spec.loader.exec_module(module)
        return module
    with _on_sys_path(base):
        return importlib.import_module(target)


def entry_folder(spec: str, base: Path | None = None) -> Path:
    """The folder an entry point's imports resolve from: the file's own, or `base` for package.module."""
    target = spec.rpartition(":")[0]
    base = base or Path.cwd()
    return (base / target).resolve().parent if target.endswith(".py") else base


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve_entry_point(spec: str, base: Path | None = None) -> Any:
    """Import the target and return the object NAME (dotted attributes allowed)."""
    target, _, attr = spec.rpartition(":")
    base = base or Path.cwd()
    try:
        obj = _import_target(target, base)
    except EntryPointError:
        raise
    except ModuleNotFoundError as exc:
        raise EntryPointError(f"cannot import {target}: {_describe(exc)}") from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise EntryPointError(f"importing {target} raised {_describe(exc)}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EntryPointError(f"{target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_module(spec: str, base: Path | None = None, meta: bool = False) -> nn.Module:
    """The nn.Module an entry point names: an instance, a class built with no arguments, or a factory's result."""
    import torch

    obj = resolve_entry_point(spec, base)
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise EntryPointError(
            f"{spec} is a {type(obj).__name__}, not an nn.Module, a Module class or a function"
        )
    device = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with device, _on_sys_path(entry_folder(spec, base)):  # NAME may import its siblings lazily
            built = obj()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise EntryPointError(f"{spec} raised {_describe(exc)} while building the model") from exc
    if not isinstance(built, torch.nn.Module):
        raise EntryPointError(f"{spec} returned a {type(built).__name__}, not an nn.Module")
    return built


def open_entry_point(
    spec: str, base: Path | None = None, meta: bool = False, label: str | None = None
) -> ModuleSource:
    model = build_module(spec, base, meta)
    notes = []
    if meta:
        # An instance (or a factory's cached one) was built before --meta could apply.
        real = any(t.device.type != "meta" for t in (*model.parameters(), *model.buffers()))
        notes.append(
            f"--meta has no effect: {spec} is a model already built with its data"
            if real
            else "built on the meta device: no tensor data"
        )
    return ModuleSource(
        model, label or spec, "entrypoint", notes, import_path=str(entry_folder(spec, base))
    )
