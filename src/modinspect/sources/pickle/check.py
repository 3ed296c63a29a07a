"""A structural pass over one pickle, before anything unpickles it: bounded cost, no execution.

It walks the opcodes without building a single object, and refuses a pickle whose shape would make
the C unpickler allocate far more than the file holds:

- a memo index past any a pickler would use (LONG_BINPUT 2^28 in a 10-byte pickle makes the C
  unpickler grow its memo to 4 GB);
- a FRAME or a length-prefixed string longer than what remains;
- more than `budget` bytes of memory to unpickle: the pickle's own bytes (the unpickler reads
  a copy), plus OBJECT_COST per opcode, plus the bytes of each argument. Ten bytes of `]a` build
  five lists; a 64 MB pickle of them builds 32 million (2 GB).

One tight loop over the bytes: about ten times faster than `pickletools.genops`, which allocates a
tuple per opcode. When a value other than a string, a number or a global is used twice (GET, DUP), a
second loop (`sources/pickle/shadow.py`) replays the opcodes on a shadow stack to bound what hashing the pickle's
dict keys and sets would cost.
"""

from __future__ import annotations

import pickletools
import struct

from modinspect.errors import CorruptFileError
from modinspect.sources.pickle.shadow import (
    COLLISION_LIMIT,
    CallKind,
    default_call_kind,
    shadow_pickle,
)

# The largest pickle read by default, counted as check_pickle counts (--max-pickle-size changes it).
DEFAULT_MAX_PICKLE = 256 << 20
# Bytes of memory per opcode: most build one small object (a tuple, an int, a dict entry). Measured on
# torch.save files, 30 opcodes per tensor entry and about 1.4 KB of unpickled objects each.
OBJECT_COST = 48

# Codes for how an opcode's argument is laid out; >= 0 is a fixed number of bytes.
_NEWLINE = -1  # one line
_TWO_LINES = -2  # GLOBAL, INST: module and name lines
_LEN1 = -3  # 1-byte length, then that many bytes
_LEN4 = -4  # 4-byte little-endian length (LONG4 and BINSTRING: signed)
_LEN8 = -5
_PUT_TEXT = -6  # PUT: a decimal line that indexes the memo
_FRAME = -8
_STOP = -9
_PROTO = -10
_INVALID = -11

_LAYOUT = [_INVALID] * 256
_ARG_NAME: dict[int, str] = {}
for _op in pickletools.opcodes:
    _code = ord(_op.code.encode("latin1"))
    _n = _op.arg.n if _op.arg is not None else 0
    _ARG_NAME[_code] = _op.arg.name if _op.arg is not None else _op.name
    if _op.name == "PUT":
        _LAYOUT[_code] = _PUT_TEXT
    elif _op.name == "FRAME":
        _LAYOUT[_code] = _FRAME
    elif _op.name == "STOP":
        _LAYOUT[_code] = _STOP
    elif _op.name == "PROTO":
        _LAYOUT[_code] = _PROTO
    elif _op.name in ("GLOBAL", "INST"):
        _LAYOUT[_code] = _TWO_LINES
    elif _n == pickletools.UP_TO_NEWLINE:
        _LAYOUT[_code] = _NEWLINE
    elif _n == pickletools.TAKEN_FROM_ARGUMENT1:
        _LAYOUT[_code] = _LEN1
    elif _n in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
        _LAYOUT[_code] = _LEN4
    elif _n == pickletools.TAKEN_FROM_ARGUMENT8U:
        _LAYOUT[_code] = _LEN8
    else:
        _LAYOUT[_code] = _n
# Sharing: a value fetched from the memo (GET) or copied (DUP) is used twice. Without it, or with only
# light values shared (strings, numbers, globals, hashed once or cheaply), each tuple is hashed once where
# it is used, hashing is linear in the pickle's size, and the shadow loop (pickle/shadow.py) can be skipped.
_MEMO_PUT = -12  # BINPUT, LONG_BINPUT, MEMOIZE: remember whether the slot holds a light value
_MEMO_GET = -13  # BINGET, LONG_BINGET
_DUP = -14
# Collisions: strings and bytes hash with a per-process random key, so only keys built from numbers (and
# tuples and frozensets of them) can be chosen to share one hash value. A flood of more than COLLISION_LIMIT
# keys needs at least that many numbers that can be chosen (every key but one holds one): floats, ints
# written as LONG1/LONG4 or as text (a hash takes any value up to 2^61), and -1 and -2 (hash(-1) ==
# hash(-2)), pushed or fetched again; or frozensets. Nearly every checkpoint has none of them (its numbers
# are sizes and strides as BININTs), and the shadow loop, which counts colliding keys, is skipped.
_NUMBER = -15  # BININT and BINFLOAT: fixed width, looked at for -1 and -2
_FIXED_WIDTH = tuple(max(n, 0) for n in _LAYOUT)
_LIGHT: list[bool | None] = [False] * 256  # None: a GET, as light as what it fetched
for _op in pickletools.opcodes:
    _code = ord(_op.code.encode("latin1"))
    if _op.name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
        _LAYOUT[_code] = _MEMO_PUT
    elif _op.name in ("BINGET", "LONG_BINGET"):
        _LAYOUT[_code] = _MEMO_GET
    elif _op.name in ("DUP", "FROZENSET"):  # both make the shadow run (a frozenset: see _NUMBER)
        _LAYOUT[_code] = _DUP
    elif _op.name in ("BININT", "BINFLOAT"):
        _LAYOUT[_code] = _NUMBER
    _LIGHT[_code] = _op.name in (
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "BINSTRING",
        "SHORT_BINSTRING",
        "STRING",
        "UNICODE",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG1",
        "BINFLOAT",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "EMPTY_TUPLE",
        "GLOBAL",
        "STACK_GLOBAL",
        "EXT1",
        "EXT2",
        "EXT4",
        "PERSID",
        "BINPERSID",
    )
    if _op.name in ("BINGET", "LONG_BINGET"):
        _LIGHT[_code] = None
_LIGHT_T = tuple(_LIGHT)
_GET_TEXT, _LONG_BINPUT_OP, _LONG_BINGET_OP = ord("g"), ord("r"), ord("j")
_BININT_OP, _LONGS, _TEXT_NUMBERS = ord("J"), (0x8A, 0x8B), (ord("I"), ord("L"), ord("F"))
_UINT4 = struct.Struct("<I").unpack_from
_LAYOUT_T = tuple(_LAYOUT)
_MAX_LINE = (
    1 << 16
)  # a GLOBAL's module or a decimal number: a line longer than this is not a pickler's


def check_pickle(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    budget: int = 1 << 62,
    call_kind: CallKind = default_call_kind,
) -> int:
    """Validate the pickle at `data[start:]` and return the offset just past its STOP.

    `data` must support indexing by int, slicing and `find` (bytes or an mmap). Raises
    CorruptFileError (the message completes "<file> ...") for a damaged pickle,
    PickleTooLargeError when building it would cost more than `budget` bytes, and HashBombError
    when hashing its dict keys and sets would visit more than `hash_limit(budget)` items.
    `call_kind(module, name)` says what calling each global does (`shadow.CALL_*`).
    """
    return measure_pickle(data, start, budget, call_kind)[0]


def measure_pickle(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    budget: int = 1 << 62,
    call_kind: CallKind = default_call_kind,
) -> tuple[int, int]:
    """`check_pickle`'s checks; returns the offset past the STOP and the bytes the opcodes build."""
    end, shares, cost = _check_structure(data, start, budget)
    if shares:  # a heavy value used twice, or enough numbers that could collide
        shadow_pickle(data, start, end, hash_limit(budget), call_kind)
    return end, cost


def hash_limit(budget: int) -> int:
    """How many items hashing a pickle's keys may visit: an item is hashed in a few nanoseconds, and a real
    pickle hashes about one per dict entry, far fewer than the opcodes `budget` allows."""
    return max(budget // 8, 1 << 20)


def _check_structure(
    data: bytes | bytearray | memoryview, start: int, budget: int
) -> tuple[int, bool, int]:
    """The offset past the pickle's STOP, whether the shadow loop must run, and its cost.

    The shadow must run when a value that is not light is used twice (hash bombs), or when the pickle holds
    more than COLLISION_LIMIT numbers that can collide or a frozenset (collision floods).
    """
    layout, uint4 = _LAYOUT_T, _UINT4
    end = len(data)
    pos = start
    prev = -1  # the last opcode that pushed something (PUT, FRAME and PROTO push nothing)
    light_slots: dict[int, bool] = {}  # memo index -> holds a light value
    got_light = False  # the last GET fetched a light value
    shares = False
    numbers = 0  # numbers that can collide, pushed or fetched again
    number_at = -2  # where the last of them was pushed (a PUT right after it memoizes one)
    number_slots: set[int] = set()
    cost = 0
    objects = 0
    find = data.find  # type: ignore[union-attr]
    while pos < end:
        op = data[pos]
        kind = layout[op]
        objects += 1
        if kind >= 0:
            prev = pos
            pos += 1 + kind
            if not objects & 0xFFFF:
                _check_budget(objects * OBJECT_COST + cost, budget)
            continue
        if kind == _NUMBER:
            width = 4 if op == _BININT_OP else 8
            if pos + 1 + width > end:
                break
            if width == 8 or (  # a float, or a BININT of -1 or -2 (ff ff ff ff, fe ff ff ff)
                data[pos + 4] == 0xFF
                and data[pos + 3] == 0xFF
                and data[pos + 2] == 0xFF
                and data[pos + 1] >= 0xFE
            ):
                numbers += 1
                number_at = pos
            prev = pos
            pos += 1 + width
            continue
        if kind == _MEMO_PUT:
            if op == _LONG_BINPUT_OP:
                if pos + 5 > end:
                    break
                index = uint4(data, pos + 1)[0]
                width = 4
            else:
                width = _FIXED_WIDTH[op]
                if pos + 1 + width > end:
                    break
                index = data[pos + 1] if width else len(light_slots)
            if index > pos - start:  # inline: a memo-heavy pickle has one of these every few bytes
                _check_memo_index(index, pos, start)
            if not shares:  # once a heavy value is shared, the shadow runs anyway
                light = _LIGHT_T[data[prev]]  # prev is -1 (the STOP: not light) before any push
                light_slots[index] = got_light if light is None else light
                if prev == number_at:
                    number_slots.add(index)
            pos += 1 + width
        elif kind == _MEMO_GET:
            prev = pos
            if op == _LONG_BINGET_OP:
                if pos + 5 > end:
                    break
                index = uint4(data, pos + 1)[0]
                pos += 5
            else:
                if pos + 2 > end:
                    break
                index = data[pos + 1]
                pos += 2
            if not shares:
                got_light = light_slots.get(index, False)
                shares = not got_light
                if index in number_slots:
                    numbers += 1
                    number_at = prev
        elif kind in (_LEN1, _LEN4, _LEN8):
            prev = pos
            width = 1 if kind == _LEN1 else 4 if kind == _LEN4 else 8
            if pos + 1 + width > end:
                break
            length = int.from_bytes(data[pos + 1 : pos + 1 + width], "little", signed=kind == _LEN4)
            if length < 0:
                raise CorruptFileError(
                    f"is not a readable pickle (negative length at byte {pos - start:,})"
                )
            left = end - pos - 1 - width
            if length > left:
                raise CorruptFileError(
                    f"is not a readable pickle (expected {length} bytes in a {_ARG_NAME[op]}, but only {left} remain)"
                )
            if op in _LONGS:  # an int of any size (ints past 2^61 - 1 collide)
                numbers += 1
                number_at = pos
            pos += 1 + width + length
            cost += length
        elif kind in (_NEWLINE, _PUT_TEXT, _TWO_LINES):
            lines = 2 if kind == _TWO_LINES else 1
            line_start = pos + 1
            at = pos
            for _ in range(lines):
                nl = find(b"\n", pos + 1, min(end, pos + 2 + _MAX_LINE))
                if nl < 0:
                    raise CorruptFileError(
                        f"is not a readable pickle (a text argument at byte {pos - start:,} has no end)"
                    )
                pos = nl
            if kind == _PUT_TEXT:
                index = _decimal(data[line_start:pos])
                _check_memo_index(index, line_start - 1, start)
                light = _LIGHT_T[data[prev]]
                light_slots[index] = got_light if light is None else light
            elif op == _GET_TEXT:
                shares = True  # a text GET (protocol 0): not worth telling light from heavy
                prev = at
            else:
                if op in _TEXT_NUMBERS:  # protocol 0's INT, LONG and FLOAT lines
                    numbers += 1
                    number_at = at
                prev = at
            cost += pos - line_start
            pos += 1
        elif kind == _DUP:
            shares = True  # DUP (a copied number too), or FROZENSET
            prev = pos
            pos += 1
        elif kind == _FRAME:
            if pos + 9 > end:
                break
            length = int.from_bytes(data[pos + 1 : pos + 9], "little")
            if length > end - pos - 9:
                raise CorruptFileError(
                    f"is not a readable pickle (a frame of {length:,} bytes, but only {end - pos - 9:,} remain)"
                )
            pos += 9
        elif kind == _PROTO:
            if pos + 1 >= end:
                break
            if data[pos + 1] > 5:
                raise CorruptFileError(
                    f"is not a readable pickle (unsupported protocol {data[pos + 1]})"
                )
            pos += 2
        elif kind == _STOP:
            total = objects * OBJECT_COST + cost + pos - start
            _check_budget(total, budget)
            floods = numbers >= COLLISION_LIMIT or _mentions_frozenset(data, start, pos)
            return pos + 1, shares or floods, total
        else:
            raise CorruptFileError(
                f"is not a readable pickle (unknown opcode {op:#04x} at byte {pos - start:,})"
            )
        if cost > budget or not objects & 0xFFFF:
            _check_budget(objects * OBJECT_COST + cost, budget)
    raise CorruptFileError("is not a readable pickle (it is truncated)")


def _mentions_frozenset(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """The name `frozenset` (a global; the FROZENSET opcode counts as sharing): frozensets of small ints can be
    chosen to collide. The name in a string too only makes the shadow run where it was not needed."""
    find = data.find  # type: ignore[union-attr]
    return bool(find(b"frozenset", start, end) >= 0)


class PickleTooLargeError(CorruptFileError):
    """The pickle would build more than the caller's budget allows."""

    def __init__(self, cost: int, budget: int) -> None:
        self.cost = cost
        self.budget = budget
        super().__init__(f"would build more than {format_size(budget)} of objects")


def _check_budget(cost: int, budget: int) -> None:
    if cost > budget:
        raise PickleTooLargeError(cost, budget)


def _decimal(raw: bytes | bytearray | memoryview) -> int:
    text = bytes(raw).strip()
    if not text.isdigit():
        raise CorruptFileError("is not a readable pickle (a memo index is not a number)")
    return int(text)


def _check_memo_index(index: int, pos: int, start: int) -> None:
    # A pickler numbers the memo from 0, one PUT at a time, so no index exceeds the opcode's offset.
    if index > pos - start:
        raise CorruptFileError(
            f"is not a readable pickle (memo index {index:,} at byte {pos - start:,}, past any index a pickler "
            "would use)"
        )


def format_size(n: int) -> str:
    """1536 -> '1.5 KiB'; the unit people pass back to --max-pickle-size."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """'256M', '1G', '512KiB', '1000000' -> bytes; ValueError for anything else."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number = raw.rstrip("KMGT")
    unit = raw[len(number) :]
    if unit not in units or not number.replace(".", "", 1).isdigit():
        raise ValueError(text)
    value = int(float(number) * units[unit])
    if value <= 0:
        raise ValueError(text)
    return value
