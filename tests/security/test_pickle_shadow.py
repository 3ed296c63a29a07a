"""The structural pass's shadow stack: it counts what hashing a pickle's keys costs, exactly, and refuses bombs.

Every shape below builds a set or dict key out of a tower of tuples, each holding the one below twice.
Built 8 levels deep it is an ordinary pickle: the gate reads it and gets what pickle.loads gets. Built
100 levels deep, hashing one key would visit 2^101 items: the pass refuses it before anything is built.
The allowlist's copying builtins (list, set, dict, ...) are charged per item of their argument. A dict or set
with more than 64 distinct keys of one hash value (numbers and tuples of numbers chosen to collide) is refused.
"""

from __future__ import annotations

import pickle
import pickletools
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostile import (
    APPENDS,
    MARK,
    POP,
    REDUCE,
    STACK_GLOBAL,
    TUPLE1,
    as_pickle,
    bu,
    colliding_float_pairs,
    colliding_frozensets,
    colliding_int_pairs,
    colliding_ints,
    colliding_small_int_tuples,
    collision_flood,
    hash_bomb,
    hash_bomb_by_dup,
    list_of_a_long_string,
    long_binget,
    long_binput,
    su,
    tower_of_tuples,
)
from modinspect.errors import CorruptFileError
from modinspect.sources.pickle.check import check_pickle, measure_pickle
from modinspect.sources.pickle.gate import Gate, GatePolicy
from modinspect.sources.pickle.shadow import HashBombError, HashCollisionError, shadow_pickle


def _tower_by_tuple_builtin(levels: int) -> bytes:
    """The tower built by calling builtins.tuple([t, t]) at each level instead of TUPLE2."""
    out = b"cbuiltins\ntuple\n" + long_binput(1) + POP + b")" + long_binput(0)
    for _ in range(levels):
        out += (
            POP
            + long_binget(1)
            + b"]"
            + MARK
            + long_binget(0)
            + long_binget(0)
            + APPENDS
            + TUPLE1
            + REDUCE
            + long_binput(0)
        )
    return out


# name -> levels -> a protocol-4 body that pushes one object whose construction hashes the tower
SHAPES: dict[str, Callable[[int], bytes]] = {
    "dict key, memo": lambda n: hash_bomb(n),
    "dict key, DUP": lambda n: hash_bomb_by_dup(n),
    "DICT opcode": lambda n: MARK + tower_of_tuples(n) + b"K\x01d",
    "FROZENSET opcode": lambda n: MARK + tower_of_tuples(n) + b"\x91",
    "ADDITEMS": lambda n: b"\x8f" + MARK + tower_of_tuples(n) + b"\x90",
    "builtins.set([...])": lambda n: (
        b"cbuiltins\nset\n]" + MARK + tower_of_tuples(n) + APPENDS + TUPLE1 + REDUCE
    ),
    "frozenset by STACK_GLOBAL": lambda n: (
        su("builtins")
        + su("frozenset")
        + STACK_GLOBAL
        + b"]"
        + MARK
        + tower_of_tuples(n)
        + APPENDS
        + TUPLE1
        + REDUCE
    ),
    "OrderedDict, SETITEMS": lambda n: (
        b"ccollections\nOrderedDict\n)R" + MARK + tower_of_tuples(n) + b"K\x01u"
    ),
    "set by OBJ": lambda n: (
        MARK + b"cbuiltins\nset\n]" + MARK + tower_of_tuples(n) + APPENDS + b"o"
    ),
    "set by INST": lambda n: (
        MARK + b"]" + MARK + tower_of_tuples(n) + APPENDS + b"ibuiltins\nset\n"
    ),
    "tuple() levels": lambda n: b"}" + _tower_by_tuple_builtin(n) + b"K\x01s",
}


def _items_hashed(value: object) -> int:
    """How many objects hashing `value` visits: a tuple visits itself and each item, recursively."""
    return 1 + sum(_items_hashed(v) for v in value) if isinstance(value, tuple) else 1


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_small_tower_reads_as_pickle_reads_it(shape: str) -> None:
    data = as_pickle(SHAPES[shape](8), 4)
    obj, end = Gate("x.pkl").load(data)
    assert end == len(data)
    assert obj == pickle.loads(data)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_deep_tower_is_refused_before_anything_is_built(shape: str) -> None:
    data = as_pickle(SHAPES[shape](100), 4)
    with pytest.raises(HashBombError) as info:
        check_pickle(data, 0, 256 << 20, Gate("x.pkl").call_kind)
    assert info.value.work >= 2**61  # 2^101 items, counted up to where the count saturates
    assert "would hash more than 10^18 nested items" in str(info.value)
    assert info.value.limit == 33_554_432


def test_the_count_is_the_number_of_items_hashing_visits() -> None:
    """For {tower: 1}, exactly the items tuple.__hash__ visits: 2^(n+1) - 1 for n levels."""
    data = as_pickle(hash_bomb(10), 2)
    key = next(iter(pickle.loads(data)))
    assert _items_hashed(key) == 2047
    shadow_pickle(data, 0, len(data), 2047)  # at the limit: accepted
    with pytest.raises(HashBombError) as info:
        shadow_pickle(data, 0, len(data), 2046)
    assert info.value.work == 2047


def test_allow_global_counts_as_code_that_may_hash() -> None:
    """A global built for real (--allow-global) may hash its arguments: the tower counts there too."""
    body = b"cargparse\nNamespace\n" + MARK + tower_of_tuples(100) + b"t" + REDUCE
    data = as_pickle(body, 2)
    check_pickle(data, 0, 256 << 20, Gate("x.pkl").call_kind)  # a stand-in hashes nothing
    with pytest.raises(HashBombError):
        check_pickle(
            data,
            0,
            256 << 20,
            Gate("x.pkl", GatePolicy(allow_globals=frozenset({"argparse.Namespace"}))).call_kind,
        )


CHILD = """
import resource, sys
sys.path[:0] = sys.argv[2:]
from hostile import as_pickle, hash_bomb
from modinspect.errors import ModinspectError
from modinspect.sources.pickle.gate import Gate
data = as_pickle(hash_bomb(int(sys.argv[1])), 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
try:
    Gate("x.pkl").load(data)
    print("read")
except ModinspectError as exc:
    print(str(exc).split(" would hash")[0])
print(resource.getrusage(resource.RUSAGE_SELF).ru_utime - before)
"""


def test_the_refusal_costs_milliseconds_of_cpu() -> None:
    """CPU time of a child (not wall time): a 100-level tower is refused in well under a second of CPU."""
    paths = [p for p in sys.path if p.endswith(("tests/security", "src"))]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "100", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    label, cpu = out.stdout.splitlines()
    assert label == "x.pkl"
    assert float(cpu) < 0.5, cpu


# ---------------------------------------------------------------- calls that copy their argument


@pytest.mark.parametrize(
    ("text", "per_item"), [("a", 8), ("é", 8 + 80)], ids=["ascii", "beyond-ascii"]
)
def test_a_copying_call_is_charged_per_item_of_its_argument(text: str, per_item: int) -> None:
    """builtins.list(s) costs 8 bytes per character (80 more for a new 1-character string beyond ASCII):
    read at exactly the budget it needs, refused one byte below."""
    data = as_pickle(list_of_a_long_string(1000).replace(bu("a" * 1000), bu(text * 1000)), 2)
    _end, cost = measure_pickle(data)
    needed = cost + 1000 * per_item
    assert Gate("x.pkl", GatePolicy(max_pickle_bytes=needed)).load(data)[0] == list(text * 1000)
    with pytest.raises(CorruptFileError, match=r"x\.pkl's pickle would build more than"):
        Gate("x.pkl", GatePolicy(max_pickle_bytes=needed - 1)).load(data)


# ---------------------------------------------------------------- the count against real pickles

_ATOMS = st.one_of(st.integers(-(2**31), 2**31 - 1), st.text(max_size=4), st.none(), st.booleans())


@st.composite
def _shared_tuples(draw: st.DrawFn) -> list[object]:
    """A pool of tuples, each holding atoms and earlier tuples of the pool (shared, so pickled by memo)."""
    pool: list[object] = []
    for _ in range(draw(st.integers(1, 12))):
        items = draw(
            st.lists(st.one_of(_ATOMS, st.sampled_from(pool) if pool else _ATOMS), max_size=4)
        )
        pool.append(tuple(items))
    return pool


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(pool=_shared_tuples(), data=st.data(), protocol=st.sampled_from([2, 4, 5]))
def test_the_count_equals_the_items_hashed_for_pickler_written_keys(
    pool: list[object], data: st.DataObject, protocol: int
) -> None:
    """Dicts and sets that pickle.dumps wrote, keyed by shared tuples: the shadow counts exactly the items the
    C unpickler hashes (each key once), so it accepts at that limit and refuses one below."""
    keys = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=8, unique_by=id))
    as_set = data.draw(st.booleans())
    obj = {k for k in keys} if as_set else {k: i for i, k in enumerate(keys)}
    raw = pickle.dumps(obj, protocol=protocol)
    expected = sum(_items_hashed(k) for k in obj)
    shadow_pickle(raw, 0, len(raw), expected, Gate("x.pkl").call_kind)
    with pytest.raises(HashBombError) as info:
        shadow_pickle(raw, 0, len(raw), expected - 1, Gate("x.pkl").call_kind)
    assert info.value.work == expected


def _colliding_keys(n: int) -> bytes:
    """{i * (2^61 - 1): 0 for i in 1..n-1}, written opcode by opcode: building that dict takes the minute."""
    keys = [(i * (2**61 - 1)).to_bytes(16, "little", signed=True) for i in range(1, n)]
    return b"\x80\x02}(" + b"".join(b"\x8a\x10" + k + b"K\x00" for k in keys) + b"u."


def test_colliding_keys_are_what_they_claim() -> None:
    assert pickle.loads(_colliding_keys(9)) == {i * (2**61 - 1): 0 for i in range(1, 9)}
    assert {hash(k) for k in pickle.loads(_colliding_keys(9))} == {0}


COLLISION_LINE = (
    "has a dict or set with more than 64 distinct keys of one hash value, the most allowed (a "
    "hash-collision flood"
)


def test_a_hash_collision_flood_is_refused() -> None:
    """Dict keys i * (2^61 - 1) all hash to 0: each insertion compares with every key before it. 20,000 keys
    (280 KB) cost 2.4 s of CPU to unpickle, 100,000 (1.4 MB) about a minute: refused at the 65th."""
    with pytest.raises(HashCollisionError) as info:
        check_pickle(_colliding_keys(100_000), 0, 256 << 20, Gate("x.pkl").call_kind)
    assert (info.value.count, info.value.limit) == (65, 64)
    assert str(info.value).startswith(COLLISION_LINE)


def _dict_call(callee: bytes, pairs: list[tuple[object, object]]) -> bytes:
    """callee([(k, v), ...]) as a REDUCE, the pairs written by pickle (protocol 2, no memo)."""
    items = pickletools.optimize(pickle.dumps(pairs, protocol=2))[2:-1]
    return b"c" + callee + b"\n" + items + TUPLE1 + REDUCE


KEY_FAMILIES: dict[str, Callable[[int], list[object]]] = {
    "ints equal mod 2^61 - 1": colliding_ints,  # type: ignore[dict-item]
    "tuples of -1 and -2": colliding_small_int_tuples,  # type: ignore[dict-item]
    "(small int, solved int)": colliding_int_pairs,  # type: ignore[dict-item]
    "(float, solved float)": colliding_float_pairs,  # type: ignore[dict-item]
    "frozensets of small ints": colliding_frozensets,  # type: ignore[dict-item]
}
CONTAINERS: dict[str, Callable[[list[object]], bytes]] = {
    "dict, protocol 2": lambda keys: as_pickle(collision_flood(keys, 2), 2),
    "dict, protocol 0": lambda keys: pickle.dumps(dict.fromkeys(keys, 0), protocol=0),
    "set, protocol 2 (builtins.set)": lambda keys: as_pickle(
        collision_flood(keys, 2, as_set=True), 2
    ),
    "set, protocol 4 (ADDITEMS)": lambda keys: as_pickle(collision_flood(keys, 4, as_set=True), 4),
    "frozenset, protocol 4 (FROZENSET)": lambda keys: pickle.dumps(frozenset(keys), protocol=4),
    "DICT opcode": lambda keys: as_pickle(
        MARK
        + b"".join(pickletools.optimize(pickle.dumps(k, 2))[2:-1] + b"K\x00" for k in keys)
        + b"d",
        2,
    ),
    "OrderedDict(pairs)": lambda keys: as_pickle(
        _dict_call(b"collections\nOrderedDict", [(k, 0) for k in keys]), 2
    ),
    "dict(pairs)": lambda keys: as_pickle(_dict_call(b"builtins\ndict", [(k, 0) for k in keys]), 2),
}


@pytest.mark.parametrize("family", sorted(KEY_FAMILIES))
def test_the_key_families_collide(family: str) -> None:
    """Each family's keys are distinct and share one hash value, by Python's own hash."""
    keys = KEY_FAMILIES[family](300)
    assert len(set(map(repr, keys))) == 300
    assert len({hash(k) for k in keys}) == 1


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("family", sorted(KEY_FAMILIES))
def test_64_colliding_keys_are_read_and_65_refused(family: str, container: str) -> None:
    """At the bound the gate reads what pickle.loads reads; one key more is refused before anything is built."""
    keys = KEY_FAMILIES[family](65)
    data = CONTAINERS[container](keys[:64])
    assert Gate("x.pkl").load(data)[0] == pickle.loads(data)
    with pytest.raises(CorruptFileError) as info:
        Gate("x.pkl").load(CONTAINERS[container](keys))
    assert str(info.value).startswith("x.pkl " + COLLISION_LINE), info.value


def test_a_key_repeated_is_not_a_collision() -> None:
    """The same key set 1,000 times (a memoized big int, or the value written again) is one key: inserting it
    again finds it at once, so it is not counted twice."""
    big = (2**61 - 1).to_bytes(9, "little")
    again = (
        b"\x80\x02}"
        + b"\x8a\x09"
        + big
        + b"q\x00K\x00s"
        + b"h\x00K\x01s" * 1000
        + b"\x8a\x09"
        + big
        + b"K\x02s."
    )
    assert Gate("x.pkl").load(again)[0] == pickle.loads(again) == {2**61 - 1: 2}


def test_ordinary_number_keys_are_not_collisions() -> None:
    """Optimizer state keys 0..N, float keys, a grid of int pairs: distinct hashes, read as pickle reads them."""
    for obj in (
        {i: [i] for i in range(100_000)},
        {i / 7: 0 for i in range(10_000)},
        {(i, j): 0 for i in range(300) for j in range(300)},
        {(-1, 1), (-2, 2), (-1, -1)},
    ):
        data = pickle.dumps(obj, protocol=2)
        assert Gate("x.pkl").load(data)[0] == obj


FLOOD_CHILD = """
import resource, sys
sys.path[:0] = sys.argv[2:]
from hostile import as_pickle, collision_flood, colliding_small_int_tuples
from modinspect.errors import ModinspectError
from modinspect.sources.pickle.gate import Gate
data = as_pickle(collision_flood(colliding_small_int_tuples(int(sys.argv[1]))), 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
try:
    Gate("x.pkl").load(data)
    print("read")
except ModinspectError as exc:
    print(str(exc).split(" has a dict")[0])
print(resource.getrusage(resource.RUSAGE_SELF).ru_utime - before)
"""


def test_the_flood_refusal_costs_little_cpu() -> None:
    """CPU time of a child (not wall time): 20,000 colliding tuples of -1 and -2, 1.5 MB (the C unpickler would
    compare 2 * 10^8 pairs of them, seconds of CPU) are refused in well under a second of CPU."""
    paths = [p for p in sys.path if p.endswith(("tests/security", "src"))]
    out = subprocess.run(
        [sys.executable, "-c", FLOOD_CHILD, "20000", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    label, cpu = out.stdout.splitlines()
    assert label == "x.pkl"
    assert float(cpu) < 1.0, cpu


def _shadow_runs(data: bytes, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether the structural pass of `data` runs the shadow loop (counted, not timed)."""
    from modinspect.sources.pickle import check

    calls: list[int] = []
    real = check.shadow_pickle  # type: ignore[attr-defined]

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(check, "shadow_pickle", counting)
    check_pickle(data, 0, 256 << 20, Gate("x.pkl").call_kind)
    return bool(calls)


def test_a_real_state_dict_skips_the_shadow(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's pickle of a state dict and an AdamW checkpoint (lr, betas, eps: a few floats; step counts;
    sizes and strides as BININTs): nothing that can collide, so the shadow loop never runs on it."""
    import io
    import zipfile

    import torch

    model = torch.nn.Sequential(*[torch.nn.Linear(300, 300) for _ in range(40)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95))
    model(torch.randn(2, 300)).sum().backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, buffer)
    with zipfile.ZipFile(buffer) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert not _shadow_runs(data, monkeypatch)


@pytest.mark.parametrize(
    ("numbers", "runs"),
    [
        ([0.5] * 63, False),
        ([0.5 + i for i in range(64)], True),  # 64 floats: a flood of 65 keys is possible
        ([-1] * 63 + [7], False),
        ([-1, -2] * 32, True),
        ([2**40 + i for i in range(64)], True),  # LONG1
        ([i for i in range(100_000)], False),  # BININT1, BININT2, BININT: hashes all distinct
    ],
)
def test_the_shadow_runs_when_enough_numbers_could_collide(
    numbers: list[Any], runs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pickletools.optimize(
        pickle.dumps(numbers, protocol=2)
    )  # no memo: each number pushed once
    assert _shadow_runs(data, monkeypatch) is runs


def test_numbers_fetched_again_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """One -1 memoized and fetched 63 more times (the pickler's own memo for a repeated float, or a hand-made
    GET): each use can be a colliding key's part, so 64 uses run the shadow."""
    minus_one = b"J\xff\xff\xff\xffq\x00"
    for fetches, runs in ((62, False), (63, True)):
        data = b"\x80\x02](" + minus_one + b"h\x00" * fetches + b"e."
        assert pickle.loads(data) == [-1] * (fetches + 1)
        assert _shadow_runs(data, monkeypatch) is runs


def test_a_frozenset_runs_the_shadow(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _shadow_runs(pickle.dumps({frozenset({1, 2}): 0}, protocol=4), monkeypatch)
    assert _shadow_runs(pickle.dumps({frozenset({1, 2}): 0}, protocol=2), monkeypatch)
