"""The second loop of the structural pass: a shadow of the unpickler's stack, which bounds hashing.

`check_pickle`'s first loop bounds what the opcodes themselves build. Hashing hides a cost no opcode
count shows: a tuple is hashed through everything it holds, every time, and a pickle's memo lets a few
bytes build a tuple that holds the tuple below it twice, sixty levels deep (2^60 items to hash for one
dict key, from 600 bytes). The C unpickler hashes dict keys (SETITEM(S), DICT), set elements
(ADDITEMS, FROZENSET) and what the allowlist's set/frozenset/dict/OrderedDict are given, inside one C
call that nothing can interrupt.

This loop replays the opcodes on a shadow stack whose items are not the objects but a few numbers
about them: `weight`, how many items hashing it would visit (1 for a string, an object, a list; one
more than its items for a tuple), saturating at `CAP`; and `length`, how many elements iterating it
gives. The memo holds shadow items too, so a shared reference is counted each time it is used, as the
hash would. The total weight hashed must stay within the caller's limit.
"""

from __future__ import annotations

import _compat_pickle
import struct
from collections.abc import Callable
from typing import Any

from modinspect.errors import CorruptFileError

CAP = 1 << 62  # weights saturate here: a 10^6-level tower would otherwise grow million-bit integers

# What calling a global does, for the shadow (the gate says which global is which).
CALL_STANDIN = 0  # a stand-in: records its arguments, hashes nothing; hashed by identity
CALL_VALUE = (
    1  # an allowlisted function building a value from its arguments (a tensor reference, a slice)
)
CALL_SEQUENCE = 2  # list(x), tuple(x), torch.Size(x): a copy of x's elements
CALL_SET = 3  # set(x), frozenset(x): hashes x's elements
CALL_DICT = 4  # dict(x), OrderedDict(x): hashes x's keys
CALL_BYTES = 5  # _codecs.encode(str, 'latin1')
CALL_IDENTITY = 6  # returns its first argument (TorchScript's list builders)
CALL_REAL = 7  # --allow-global: real code, which may hash what it is given
CallKind = Callable[[str, str], int]

# Item tags. An item is (weight, length, tag, extra, value); a mutable container's is a list, updated in place,
# with a sixth slot: a dict's or set's keys by hash value (None until a key with a known value is added), or
# a list's elements with a known value (for set(list) and dict(list)). `value` is the item's own value when
# its hash is not randomized (a number, a bool, None, or a tuple of such values), else _NO.
_PLAIN, _STR, _TUPLE, _GLOBAL = 0, 1, 2, 3
_NO = object()
_ATOM = (1, 0, _PLAIN, None, _NO)
_CONSTS = {ord("N"): None, 0x88: True, 0x89: False, ord(")"): ()}
_NOTHING_YET = ()  # a list's sixth slot before an element with a known value is appended
_SMALL = tuple((1, 0, _PLAIN, None, i) for i in range(256))  # BININT1
_TEXT_LIMIT = 256  # strings longer than this are never a global's module or name


def default_call_kind(module: str, name: str) -> int:
    """Builtins by what they do; anything else as real code (for readers without a gate)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return BUILTIN_CALLS.get((module, name), CALL_REAL)


BUILTIN_CALLS: dict[tuple[str, str], int] = {
    ("builtins", "list"): CALL_SEQUENCE,
    ("builtins", "tuple"): CALL_SEQUENCE,
    ("torch", "Size"): CALL_SEQUENCE,
    ("builtins", "set"): CALL_SET,
    ("builtins", "frozenset"): CALL_SET,
    ("builtins", "dict"): CALL_DICT,
    ("collections", "OrderedDict"): CALL_DICT,
    ("_codecs", "encode"): CALL_BYTES,
}


class HashBombError(CorruptFileError):
    """Building the pickle's dict keys and sets would hash more items than the caller allows."""

    def __init__(self, work: int, limit: int) -> None:
        self.work = work
        self.limit = limit
        shown = f"{work:,}" if work < CAP // 2 else "more than 10^18"  # weights saturate at CAP
        super().__init__(
            f"would hash {shown} nested items to build its dict keys and sets, more than the {limit:,} allowed "
            "(a hash bomb: keys that hold the same tuple many times over)"
        )


COLLISION_LIMIT = (
    64  # distinct keys with one hash value in one dict or set; real data has a handful at most
)


class HashCollisionError(CorruptFileError):
    """Too many of one dict's or set's keys share one hash value: building it would take quadratic time."""

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(
            f"has a dict or set with more than {limit} distinct keys of one hash value, the most allowed (a "
            "hash-collision flood: numbers or tuples chosen to collide make building it take quadratic time)"
        )


# Opcode -> what the shadow loop does with it. Fixed-width opcodes also have their length in _STEP.
_CODES: dict[bytes, int] = {}
(
    _ATOM_OP,
    _GET1,
    _GET4,
    _PUT1,
    _PUT4,
    _MEMOIZE,
    _MARK,
    _EMPTY,
    _TUPLE1,
    _TUPLE2,
    _TUPLE3,
    _REDUCE,
    _NEWOBJ,
    _NEWOBJ_EX,
    _APPEND,
    _APPENDS,
    _SETITEM,
    _SETITEMS,
    _ADDITEMS,
    _STR1,
    _STR4,
    _STR8,
    _BYTES1,
    _BYTES4,
    _BYTES8,
    _BYTEARRAY8,
    _LONG1,
    _LONG4,
    _TEXT_STR,
    _TEXT_NUMBER,
    _GET_TEXT,
    _PUT_TEXT,
    _TUPLE_MARK,
    _LIST,
    _DICT,
    _FROZENSET,
    _OBJ,
    _INST,
    _GLOBAL_OP,
    _STACK_GLOBAL,
    _BUILD,
    _POP,
    _POP_MARK,
    _DUP,
    _EXT,
    _PERSID,
    _BINPERSID,
    _STOP,
    _SKIP,
    _CONST,
    _INT1,
    _INTN,
    _FLOAT8,
    _INVALID,
) = range(54)
_OPS = {
    _ATOM_OP: b"\x97",  # NEXT_BUFFER fails in the gate's unpickler
    _CONST: b"N\x88\x89)",
    _INT1: b"K",
    _INTN: b"MJ",
    _FLOAT8: b"G",
    _SKIP: b"\x98\x80\x95",  # READONLY_BUFFER, PROTO and FRAME push nothing
    _GET1: b"h",
    _GET4: b"j",
    _PUT1: b"q",
    _PUT4: b"r",
    _MEMOIZE: b"\x94",
    _MARK: b"(",
    _EMPTY: b"]}\x8f",
    _TUPLE1: b"\x85",
    _TUPLE2: b"\x86",
    _TUPLE3: b"\x87",
    _REDUCE: b"R",
    _NEWOBJ: b"\x81",
    _NEWOBJ_EX: b"\x92",
    _APPEND: b"a",
    _APPENDS: b"e",
    _SETITEM: b"s",
    _SETITEMS: b"u",
    _ADDITEMS: b"\x90",
    # SHORT_BINSTRING and BINSTRING are UTF-8 text to the gate's unpickler, as the BINUNICODEs are
    _STR1: b"\x8cU",
    _STR4: b"XT",
    _STR8: b"\x8d",
    _BYTES1: b"C",
    _BYTES4: b"B",
    _BYTES8: b"\x8e",
    _BYTEARRAY8: b"\x96",
    _LONG1: b"\x8a",
    _LONG4: b"\x8b",
    _TEXT_STR: b"SV",
    _TEXT_NUMBER: b"ILF",  # escaped text the shadow does not decode; decimal numbers
    _GET_TEXT: b"g",
    _PUT_TEXT: b"p",
    _TUPLE_MARK: b"t",
    _LIST: b"l",
    _DICT: b"d",
    _FROZENSET: b"\x91",
    _OBJ: b"o",
    _INST: b"i",
    _GLOBAL_OP: b"c",
    _STACK_GLOBAL: b"\x93",
    _BUILD: b"b",
    _POP: b"0",
    _POP_MARK: b"1",
    _DUP: b"2",
    _EXT: b"\x82\x83\x84",
    _PERSID: b"P",
    _BINPERSID: b"Q",
    _STOP: b".",
}
_CODE = [_INVALID] * 256
for _code, _bytes in _OPS.items():
    for _op in _bytes:
        _CODE[_op] = _code
_WIDTHS = {
    b"K": 1,
    b"M": 2,
    b"J": 4,
    b"G": 8,
    b"\x80": 1,
    b"\x95": 8,
    b"\x82": 1,
    b"\x83": 2,
    b"\x84": 4,
}
_STEP = [1] * 256
for _bytes, _width in _WIDTHS.items():
    _STEP[_bytes[0]] = 1 + _width
_CODE_T, _STEP_T = tuple(_CODE), tuple(_STEP)
_UINT4 = struct.Struct("<I").unpack_from
_FLOAT = struct.Struct(">d").unpack_from
_INT4, _UINT2 = struct.Struct("<i").unpack_from, struct.Struct("<H").unpack_from
_CONST_ITEMS = tuple(
    (1, 0, _PLAIN, None, _CONSTS[op]) if op in _CONSTS else _ATOM for op in range(256)
)
_STRS, _TUPLES23, _CALLS = (
    frozenset({_STR1, _STR4, _STR8}),
    frozenset({_TUPLE2, _TUPLE3}),
    frozenset({_REDUCE, _NEWOBJ, _NEWOBJ_EX}),
)
_ADDS, _SETS = (
    frozenset({_SETITEM, _SETITEMS, _APPENDS, _ADDITEMS}),
    frozenset({_SETITEM, _SETITEMS}),
)
_GLOBALS, _LONGS = frozenset({_GLOBAL_OP, _INST}), frozenset({_LONG1, _LONG4})


def shadow_pickle(
    data: Any, start: int, end: int, hash_limit: int, call_kind: CallKind = default_call_kind
) -> None:
    """Replay the pickle at data[start:end] (already checked by check_pickle's first loop) on a shadow stack.

    Raises HashBombError when hashing its keys and sets would visit more than `hash_limit` items.
    Where the C unpickler would fail (an empty stack, a memo entry never written) the shadow stops
    quietly: the unpickler stops there too, with its own error, before hashing anything further.
    """
    try:
        _shadow(data, start, end, hash_limit, call_kind)
    except (IndexError, KeyError):
        return


def _shadow(data: Any, start: int, end: int, hash_limit: int, call_kind: CallKind) -> None:
    code_of, atom, cap, uint4, small, consts, no = (
        _CODE_T,
        _ATOM,
        CAP,
        _UINT4,
        _SMALL,
        _CONST_ITEMS,
        _NO,
    )
    int4, uint2 = _INT4, _UINT2
    stack: list[Any] = []
    push, pop = stack.append, stack.pop
    marks: list[int] = []
    memo: dict[int, Any] = {}
    hashed = 0
    pos = start
    while pos < end:
        op = data[pos]
        code = code_of[op]
        if code == _PUT4:  # the most frequent opcodes first
            memo[uint4(data, pos + 1)[0]] = stack[-1]
            pos += 5
        elif code == _GET1:
            push(memo[data[pos + 1]])
            pos += 2
        elif code == _INT1:
            push(small[data[pos + 1]])
            pos += 2
        elif code == _INTN:
            if op == 0x4A:  # BININT
                push((1, 0, _PLAIN, None, int4(data, pos + 1)[0]))
                pos += 5
            else:
                push((1, 0, _PLAIN, None, uint2(data, pos + 1)[0]))
                pos += 3
        elif code == _MARK:
            marks.append(len(stack))
            pos += 1
        elif code == _CONST:
            push(consts[op])
            pos += 1
        elif code == _PUT1:
            memo[data[pos + 1]] = stack[-1]
            pos += 2
        elif code == _GET4:
            push(memo[uint4(data, pos + 1)[0]])
            pos += 5
        elif code == _MEMOIZE:
            memo[len(memo)] = stack[-1]
            pos += 1
        elif code in _STRS:
            if code == _STR1:
                length = data[pos + 1]
                pos += 2
            elif code == _STR4:
                length = uint4(data, pos + 1)[0]
                pos += 5
            else:
                length = int.from_bytes(data[pos + 1 : pos + 9], "little")
                pos += 9
            push(
                (1, length, _STR, pos, no)
            )  # the text, for STACK_GLOBAL, is data[pos:pos + length]
            pos += length
        elif code == _TUPLE1:
            first = stack[-1]
            weight = 1 + first[0]
            stack[-1] = (
                weight if weight < cap else cap,
                1,
                _TUPLE,
                first,
                no if first[4] is no else (first[4],),
            )
            pos += 1
        elif code in _TUPLES23:
            items = stack[-2:] if code == _TUPLE2 else stack[-3:]
            if len(items) < code - _TUPLE1 + 1:
                return
            del stack[-len(items) :]
            weight = 1 + sum([i[0] for i in items])
            push((weight if weight < cap else cap, len(items), _TUPLE, items[0], _value_of(items)))
            pos += 1
        elif code in _CALLS:
            args = pop()
            weight = args[0]
            if code == _NEWOBJ_EX:  # cls, args, kwargs
                args = pop()
                weight += args[0]
            callee = stack[-1]
            if (
                callee[2] != _GLOBAL or callee[3] == CALL_STANDIN
            ):  # a stand-in records its arguments
                stack[-1] = atom
            else:
                stack[-1], work = _call(
                    callee[3], args[3] if args[2] == _TUPLE else None, weight, hashed, hash_limit
                )
                hashed += work
                if hashed > hash_limit:
                    raise HashBombError(hashed, hash_limit)
            pos += 1
        elif code == _EMPTY:
            push(
                [1, 0, _PLAIN, None, no, _NOTHING_YET if op == 0x5D else None]
            )  # a list ("]") records its elements' values
            pos += 1
        elif code == _APPEND:
            value = pop()
            target = stack[-1]
            if type(target) is list:
                weight = target[0] + value[0]
                target[0] = weight if weight < cap else cap
                target[1] += 1
                if value[4] is not no and target[5] is not None:
                    _append_value(target, value[4])
            pos += 1
        elif code in _ADDS:
            if code == _SETITEM:
                items = stack[-2:]
                if len(items) < 2:
                    return
                del stack[-2:]
            else:
                mark = marks.pop()
                items = stack[mark:]
                del stack[mark:]
            target = stack[-1]
            weight = sum([i[0] for i in items])
            if code in _SETS:  # the keys are hashed
                keys = items[0 : len(items) - 1 : 2]
                hashed += sum([i[0] for i in keys])
                count = len(items) // 2
            else:
                keys = items if code == _ADDITEMS else []
                hashed += weight if code == _ADDITEMS else 0
                count = len(items)
            if hashed > hash_limit:
                raise HashBombError(hashed, hash_limit)
            if type(target) is list:
                weight += target[0]
                target[0] = weight if weight < cap else cap
                target[1] += count
                if code == _APPENDS:
                    elements = target[5]
                    if elements is not None:
                        values = [i[4] for i in items if i[4] is not no]
                        if elements is _NOTHING_YET:
                            target[5] = values
                        elif type(elements) is list:
                            elements += values
                else:
                    _add_keys(target, [i[4] for i in keys if i[4] is not no])
            pos += 1
        else:
            pos, hashed = _rare(
                code, op, data, pos, stack, marks, memo, hashed, hash_limit, call_kind
            )
            if pos < 0:
                return
            if hashed > hash_limit:
                raise HashBombError(hashed, hash_limit)


def _rare(
    code: int,
    op: int,
    data: Any,
    pos: int,
    stack: list[Any],
    marks: list[int],
    memo: dict[int, Any],
    hashed: int,
    hash_limit: int,
    call_kind: CallKind,
) -> tuple[int, int]:
    """The shadow of the less frequent opcodes: (the next position, or -1 to stop; the hashing so far)."""
    push, cap = stack.append, CAP
    if code in (_TUPLE_MARK, _LIST, _DICT, _FROZENSET, _OBJ):
        mark = marks.pop()
        items = stack[mark:]
        del stack[mark:]
        weight = min(cap, 1 + sum([i[0] for i in items]))
        if code == _TUPLE_MARK:
            push((weight, len(items), _TUPLE, items[0] if items else None, _value_of(items)))
        elif code == _LIST:
            push([weight, len(items), _PLAIN, None, _NO, [i[4] for i in items if i[4] is not _NO]])
        elif code == _DICT:
            keys = items[0 : len(items) - 1 : 2]
            hashed += sum([i[0] for i in keys])
            target = [weight, len(items) // 2, _PLAIN, None, _NO, None]
            _add_keys(target, [i[4] for i in keys if i[4] is not _NO], hashed, hash_limit)
            push(target)
        elif code == _FROZENSET:
            hashed += weight - 1
            _add_keys(
                [weight, 0, _PLAIN, None, _NO, None],
                [i[4] for i in items if i[4] is not _NO],
                hashed,
                hash_limit,
            )
            value = _frozen_value([i[4] for i in items]) if hashed <= hash_limit else _NO
            push((weight, len(items), _PLAIN, None, value))
        else:  # OBJ: the class, then its arguments
            callee = items[0]
            what = callee[3] if callee[2] == _GLOBAL else CALL_STANDIN
            item, work = _call(
                what, items[1] if len(items) > 1 else None, weight, hashed, hash_limit
            )
            push(item)
            hashed += work
        return pos + 1, hashed
    if code in _GLOBALS:
        first_nl = data.find(b"\n", pos + 1)
        second_nl = data.find(b"\n", first_nl + 1)
        what = call_kind(_text(data[pos + 1 : first_nl]), _text(data[first_nl + 1 : second_nl]))
        if code == _GLOBAL_OP:
            push((1, 0, _GLOBAL, what, _NO))
        else:  # INST: calls the class with what lies above the MARK
            mark = marks.pop()
            items = stack[mark:]
            del stack[mark:]
            item, work = _call(
                what,
                items[0] if items else None,
                min(cap, 1 + sum([i[0] for i in items])),
                hashed,
                hash_limit,
            )
            push(item)
            hashed += work
        return second_nl + 1, hashed
    if code == _STACK_GLOBAL:
        name, module = stack.pop(), stack.pop()
        if module[2] == _STR and name[2] == _STR and module[3] is not None and name[3] is not None:
            what = call_kind(
                _text(data[module[3] : module[3] + module[1]]),
                _text(data[name[3] : name[3] + name[1]]),
            )
        else:  # names the shadow cannot read (escaped text): assume real code
            what = CALL_REAL
        push((1, 0, _GLOBAL, what, _NO))
        return pos + 1, hashed
    if code in (_BYTES1, _BYTES4, _BYTES8, _BYTEARRAY8, _LONG1, _LONG4):
        width = 1 if code in (_BYTES1, _LONG1) else 4 if code in (_BYTES4, _LONG4) else 8
        length = int.from_bytes(data[pos + 1 : pos + 1 + width], "little", signed=code == _LONG4)
        if code in _LONGS:  # hashing an int reads all its digits, every time
            value = int.from_bytes(
                data[pos + 1 + width : pos + 1 + width + length], "little", signed=True
            )
            push((1 + length // 8, 0, _PLAIN, None, value))
        elif code == _BYTEARRAY8:
            push([1, length, _PLAIN, None, _NO, None])
        else:
            push((1, length, _PLAIN, None, _NO))
        return pos + 1 + width + length, hashed
    if code in (_TEXT_STR, _TEXT_NUMBER, _GET_TEXT, _PUT_TEXT, _PERSID):
        nl = data.find(b"\n", pos + 1)
        if code == _TEXT_STR:
            push((1, nl - pos, _STR, None, _NO))
        elif code == _TEXT_NUMBER:
            push(
                (1 + (nl - pos) // 16, 0, _PLAIN, None, _text_number(op, bytes(data[pos + 1 : nl])))
            )
        elif code == _PERSID:
            push(_ATOM)
        else:
            try:
                index = int(bytes(data[pos + 1 : nl]))
            except ValueError:
                raise CorruptFileError(
                    f"is not a readable pickle (a memo index that is not a number at byte {pos:,})"
                ) from None
            if code == _GET_TEXT:
                push(memo[index])
            else:
                memo[index] = stack[-1]
        return nl + 1, hashed
    if code == _SKIP:
        return pos + _STEP_T[op], hashed
    if code == _FLOAT8:
        push((1, 0, _PLAIN, None, _FLOAT(data, pos + 1)[0]))
        return pos + 9, hashed
    if code == _ATOM_OP:
        push(_ATOM)
        return pos + 1, hashed
    if code == _BUILD:
        stack.pop()
        stack[-1]  # an IndexError, as the unpickler's, when there is no object to build
        return pos + 1, hashed
    if code == _POP:
        if marks and marks[-1] == len(
            stack
        ):  # the unpickler's POP discards a MARK on top of the stack
            marks.pop()
        else:
            stack.pop()
        return pos + 1, hashed
    if code == _POP_MARK:
        del stack[marks.pop() :]
        return pos + 1, hashed
    if code == _DUP:
        push(stack[-1])
        return pos + 1, hashed
    if code == _EXT:
        push((1, 0, _GLOBAL, CALL_REAL, _NO))
        return pos + _STEP_T[op], hashed
    if code == _BINPERSID:
        stack[-1] = _ATOM
        return pos + 1, hashed
    return -1, hashed  # STOP, or an opcode the first loop would have refused


def _value_of(items: list[Any]) -> Any:
    """A tuple's value from its items' values: _NO unless every item has one."""
    values = [i[4] for i in items]
    return _NO if _NO in values else tuple(values)


def _text_number(op: int, text: bytes) -> Any:
    """The value of a protocol-0 INT, LONG or FLOAT line (as the unpickler reads it), or _NO."""
    try:
        if op == 0x46:  # F
            return float(text)
        if op == 0x49 and text in (b"00", b"01"):  # I00, I01: False, True
            return text == b"01"
        return int(text.rstrip(b"L"))
    except ValueError:  # the unpickler fails there too, or a number past int's digit limit
        return _NO


def _append_value(target: list[Any], value: Any) -> None:
    """Record an element's value in a list's shadow (for set(list) and dict(list))."""
    elements = target[5]
    if elements is _NOTHING_YET:
        target[5] = [value]
    elif type(elements) is list:
        elements.append(value)


class _Colliding(list):  # type: ignore[type-arg]
    """The distinct keys of one dict or set that share one hash value."""


class _Pending(list):  # type: ignore[type-arg]
    """The keys of a dict or set that has at most COLLISION_LIMIT of them: not hashed until it has more."""


def _add_keys(
    target: list[Any], keys: list[Any] | tuple[Any, ...], hashed: int = 0, hash_limit: int = CAP
) -> None:
    """Record keys with a known value in a dict or set's shadow; refuse more than COLLISION_LIMIT distinct
    keys with one hash value (each insertion compares with every key of its hash: quadratic time).

    Called after the hash bomb check, so hashing the values costs at most the limit it allows."""
    by_hash = target[5]
    if not keys or hashed > hash_limit:
        return
    if (
        by_hash is None or type(by_hash) is _Pending
    ):  # a small dict or set (most are) costs one list
        pending = list(keys) if by_hash is None else by_hash + list(keys)
        if len(pending) <= COLLISION_LIMIT:
            target[5] = _Pending(pending)
            return
        keys, by_hash = pending, {}
        target[5] = by_hash
    elif type(by_hash) is not dict:  # a list's elements
        return
    try:
        fresh = dict(zip(map(hash, keys), keys, strict=True))
    except TypeError:
        fresh = {}
    if len(fresh) == len(keys) and by_hash.keys().isdisjoint(
        fresh
    ):  # no two hash values alike: the usual case
        by_hash.update(fresh)
        return
    limit = COLLISION_LIMIT
    for key in keys:
        try:
            h = hash(key)
        except TypeError:
            continue
        same = by_hash.get(h, _NO)
        if same is _NO:
            by_hash[h] = key
        elif type(same) is _Colliding:
            if key not in same:  # at most COLLISION_LIMIT comparisons: the list is refused past it
                same.append(key)
                if len(same) > limit:
                    raise HashCollisionError(len(same), limit)
        elif not (same is key or same == key):
            by_hash[h] = _Colliding([same, key])


def _text(raw: Any) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


def _call(
    what: int, first: Any, weight: int, hashed: int = 0, hash_limit: int = CAP
) -> tuple[Any, int]:
    """The shadow of calling a global of kind `what` with `first` and more arguments weighing `weight`,
    and how many items the call hashes (`hashed` so far, of `hash_limit`: checked before hashing values)."""
    if what == CALL_STANDIN:
        return _ATOM, 0
    if what == CALL_IDENTITY:
        return (first if first is not None else _ATOM), 0
    weight = min(CAP, weight)
    length = first[1] if first is not None else 0
    if what == CALL_VALUE:
        return (1 + weight, 0, _PLAIN, None, _NO), 0
    if what == CALL_BYTES:
        return (1, length, _PLAIN, None, _NO), 0
    if what == CALL_SEQUENCE:  # a tuple hashes through its items: it keeps their weight
        known = _known_elements(first)
        return (1 + weight, length, _TUPLE, None, _NO if known is None else tuple(known)), 0
    if (
        what == CALL_REAL
    ):  # real code may hash what it is given, and return anything, a callable too
        return [1 + weight, length, _GLOBAL, CALL_REAL, _NO, None], weight
    # set, frozenset, dict, OrderedDict hash the elements of their first argument (a string's characters)
    work = max(first[0] - 1, length) if first is not None else 0
    target = [1 + weight, length, _PLAIN, None, _NO, None]
    if first is not None and hashed + work <= hash_limit:
        elements: Any = first[5] if type(first) is list else first[4]
        if isinstance(elements, (list, tuple)):
            if what == CALL_DICT:  # dict(pairs): the keys are the pairs' first items
                elements = [e[0] for e in elements if type(e) is tuple and len(e) == 2]
            _add_keys(target, elements)
        if what == CALL_SET:  # frozenset(x) may be a key itself (set(x) could not be one)
            known = _known_elements(first)
            target[4] = _NO if known is None else _frozen_value(known)
    return target, work


def _known_elements(first: Any) -> list[Any] | tuple[Any, ...] | None:
    """The values of every element of a list or tuple argument, or None when one is not known."""
    if first is None:
        return None
    elements = first[5] if type(first) is list else first[4]
    if isinstance(elements, (list, tuple)) and len(elements) == first[1] and _NO not in elements:
        return elements
    return None


def _frozen_value(values: list[Any] | tuple[Any, ...]) -> Any:
    """A frozenset's value from its elements' values (frozensets of small ints can be chosen to collide)."""
    if _NO in values:
        return _NO
    try:
        return frozenset(values)
    except TypeError:
        return _NO
