"""What a file is, from its first bytes, not its extension."""

from __future__ import annotations

import stat
from pathlib import Path

from modinspect.errors import CorruptFileError, SourceNotFoundError, UnknownFormatError


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
