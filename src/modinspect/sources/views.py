"""Strided views described by a file: their integers bounded, their storage checked, their elements gathered.

A `.pt2` weights config or a DCP chunk gives a tensor as sizes, strides and a storage offset over a
storage of some bytes. Every such integer is bounded below 2**63, as torch's own are, before any
arithmetic (a 4,000-digit size made the byte count overflow a float); the storage a view reaches is
checked against the elements stored; and a view that claims far more elements than its storage holds
(an `expand()`ed stride-0 or overlapping view: 2^36 elements over one float in a 10 KB file) is
refused when read, as the torch-file reader refuses it. Views that pass are gathered a chunk at a
time, never materialised whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeGuard

from modinspect.errors import CorruptFileError

if TYPE_CHECKING:
    import torch

INT64_LIMIT = 1 << 63  # sizes, strides, offsets and element counts: torch's own int64
# A view may expand its storage, but one that claims this many times more elements than its storage
# holds, and this many in all, is a file built to make every reader loop over 2^40 elements.
MAX_EXPANSION = 4096
MAX_EXPANDED = 1 << 24


def is_int64(value: object) -> TypeGuard[int]:
    """A non-negative int (not a bool) below 2**63."""
    return type(value) is int and 0 <= value < INT64_LIMIT


def describe_int(value: object) -> str:
    """A short text for a value that failed is_int64, without printing thousands of digits."""
    if type(value) is int and abs(value) >= INT64_LIMIT:
        return f"an integer of {value.bit_length():,} bits"
    text = repr(value) if type(value) is not int else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def bounded_numel(shape: tuple[int, ...]) -> int | None:
    """The element count of `shape`, or None when it reaches 2**63 (each size already below it)."""
    numel = 1
    for size in shape:
        numel *= size
        if numel >= INT64_LIMIT:
            return None if all(shape) else 0
    return numel


def view_extent(shape: tuple[int, ...], stride: tuple[int, ...], offset: int) -> int:
    """Elements of storage a view reaches: offset + sum((size - 1) * stride) + 1; 0 for an empty view."""
    if not all(shape):
        return 0
    return offset + sum((size - 1) * step for size, step in zip(shape, stride, strict=True)) + 1


def check_view(
    where: str, name: str, shape: tuple[int, ...], stride: tuple[int, ...], offset: int, stored: int
) -> None:
    """Refuse a view that reaches past its `stored` elements, or that claims absurdly many for them."""
    if view_extent(shape, stride, offset) > stored:
        raise CorruptFileError(f"{where}: {name!r} reaches past the end of its storage")
    numel = math.prod(shape)
    if numel > MAX_EXPANDED and numel > MAX_EXPANSION * max(stored, 1):
        raise CorruptFileError(
            f"{where}: {name!r} claims {numel:,} elements over a storage of {stored:,} (a stride-0 or overlapping "
            "view): too large to read, and no real tensor needs it"
        )


def strided_chunks(
    flat: torch.Tensor,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    offset: int,
    chunk_elems: int,
) -> Iterator[torch.Tensor]:
    """The view's elements in row-major order as 1-d tensors of at most chunk_elems, gathered chunk by chunk."""
    import torch

    numel = math.prod(shape)
    if (
        chunk_elems >= numel
    ):  # the whole view at once (read_tensor): one copy, check_view bounded its size
        yield flat.as_strided(shape, stride, offset).reshape(-1)
        return
    for start in range(0, numel, chunk_elems):
        index = torch.arange(start, min(start + chunk_elems, numel), dtype=torch.int64)
        position = torch.full_like(index, offset)
        for size, step in zip(reversed(shape), reversed(stride), strict=True):
            position += (index % size) * step
            index = index.div(size, rounding_mode="floor")
        yield flat[position]
