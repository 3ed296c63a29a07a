"""Atomic, non-clobbering file writes: a temporary file in the target's folder, fsync, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from modinspect.errors import UsageError


def check_writable(target: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse to overwrite an existing file without `force`, and never overwrite one of the inputs.

    A sharded input is its whole folder: a directory, or an `*.index.json` beside its shards. An
    existing file inside it may be one of the shards, so it is refused too; a new file there is not.
    """
    resolved = target.resolve()
    for source in inputs:
        with contextlib.suppress(OSError, ValueError):
            if source.exists() and source.resolve() == resolved:
                raise UsageError(f"{target} is also an input; write the result to another file")
            if source.is_dir() or source.name.endswith(".index.json"):
                folder = (source if source.is_dir() else source.parent).resolve()
                if target.exists() and resolved.is_relative_to(folder):
                    raise UsageError(
                        f"{target} is part of the input {source}; write the result to another file"
                    )
    if target.is_dir():
        raise UsageError(f"{target} is a directory; give a file name")
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it")
    if not target.parent.exists():
        raise UsageError(f"cannot write {target}: folder {target.parent} does not exist")


def atomic_write(
    target: Path, write: Callable[[Path], None], force: bool = False, inputs: Iterable[Path] = ()
) -> None:
    """Call `write(tmp_path)` and move the result onto `target` in one rename.

    A crash or kill at any moment leaves either the old file (or none) and possibly a stray
    `.modinspect-*.tmp` beside it, never a torn `target`.
    """
    check_writable(target, force, inputs)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.modinspect-", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file 0600: give it the mode of the file it replaces, or of a plain new file.
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask())
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        if target.exists() and not force:  # appeared while we wrote
            raise UsageError(f"{target} exists; pass --force to overwrite it")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
