"""Strided views described by a file: their integers bounded before any arithmetic.

A `.pt2` weights config or a DCP chunk gives a tensor as sizes, strides and a storage offset over a
storage of some bytes. Every such integer is bounded below 2**63, as torch's own are, before any
arithmetic: a 4,000-digit size made the byte count overflow a float.
"""

from __future__ import annotations

from typing import TypeGuard

INT64_LIMIT = 1 << 63  # sizes, strides, offsets and element counts: torch's own int64


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
