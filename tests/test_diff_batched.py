"""diff's batched byte check: runs of small neighbouring tensors, compared a run at a time, report exactly
what comparing pair by pair through the arithmetic alone reports."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modinspect.analysis.diff import DiffOptions, diff_sources
from modinspect.names import rollup_key, rollup_keys
from modinspect.reports import DiffReport
from modinspect.run.source import open_source
from modinspect.sources.byteread import WINDOW, PairReader
from modinspect.sources.safetensors import SafetensorsSource

ST_CODES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int8: "I8",
    torch.bool: "BOOL",
    torch.uint8: "U8",
}


def write_ordered(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> Path:
    """A safetensors file whose data lies in exactly this order (save_file orders it by dtype and name)."""
    header: dict[str, object] = {}
    data = bytearray()
    for name, t in tensors:
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": ST_CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data))
    return path


def both_ways(
    a: Path, b: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[DiffReport, DiffReport]:
    """The report with the byte paths, and with every pair through the arithmetic (no byte range known)."""

    def run() -> DiffReport:
        with open_source(str(a)) as sa, open_source(str(b)) as sb:
            return diff_sources(sa, sb, DiffOptions(**options))

    fast = run()
    with monkeypatch.context() as m:
        m.setattr(SafetensorsSource, "byte_range", lambda self, name: None)
        m.setattr(SafetensorsSource, "byte_ranges", lambda self, names: [None for _ in names])
        slow = run()
    return fast, slow


def small_model() -> list[tuple[str, torch.Tensor]]:
    """300 small tensors of several dtypes, with empty and 0-dim ones among them, in natural name order."""
    g = torch.Generator().manual_seed(0)
    out: list[tuple[str, torch.Tensor]] = []
    dtypes = [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int8,
        torch.bool,
        torch.uint8,
    ]
    for i in range(300):
        dtype = dtypes[i % len(dtypes)] if i % 5 == 4 else torch.float32
        t = torch.randn(3, generator=g) * 10
        out.append((f"h.{i}.w", t > 0 if dtype == torch.bool else t.to(dtype)))
        if i % 37 == 0:
            out.append((f"h.{i}.empty", torch.zeros(0, 2)))
        if i % 53 == 0:
            out.append((f"h.{i}.scalar", torch.tensor(float(i))))
    out.append(("h.300.nan", torch.tensor([1.0, float("nan")])))
    return out


def flip_byte(t: torch.Tensor, byte: int) -> torch.Tensor:
    """t with one byte of its data (counted from the end when negative) changed."""
    raw = t.contiguous().reshape(-1).view(torch.uint8).clone()
    raw[byte] ^= 0x01 if t.dtype == torch.bool else 0x40
    return raw.view(t.dtype).reshape(t.shape)


CHANGES = {  # name -> byte flipped: first and last tensors, neighbours, the last byte before the next one's first
    "h.0.w": 0,
    "h.299.w": -1,
    "h.100.w": 4,
    "h.101.w": 0,
    "h.102.w": -1,
    "h.150.w": -1,
    "h.151.w": 0,
    "h.4.w": 0,
    "h.9.w": -1,  # float16 and int8, in the middle of a run
}


def changed_model(order: str = "same") -> list[tuple[str, torch.Tensor]]:
    out = [(n, flip_byte(t, CHANGES[n]) if n in CHANGES else t) for n, t in small_model()]
    if order == "reversed":
        out.reverse()
    elif order == "shuffled":
        random.Random(1).shuffle(out)
    return out


@pytest.mark.parametrize("order", ["same", "reversed", "shuffled"])
@pytest.mark.parametrize(
    "options", [{}, {"exact": True}, {"nan_equal": False}], ids=["default", "exact", "nan-unequal"]
)
def test_runs_of_small_tensors_report_what_the_arithmetic_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str, options: dict[str, object]
) -> None:
    a = write_ordered(tmp_path / "a.safetensors", small_model())
    b = write_ordered(tmp_path / "b.safetensors", changed_model(order))
    fast, slow = both_ways(a, b, monkeypatch, **options)
    assert fast == slow
    expected = set(CHANGES) | ({"h.300.nan"} if options.get("nan_equal") is False else set())
    # --exact sees every changed byte; the tolerances let a flipped low bit of a float pass as close
    assert {d.name for d in fast.changed} | {d.name for d in fast.close} == expected
    assert fast.compared == len(small_model()) and fast.identical == fast.compared - len(expected)


def test_mismatches_in_a_run_and_a_large_tensor_among_small_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = small_model()
    model.insert(120, ("h.119.big", torch.arange(WINDOW // 2 + 5, dtype=torch.float32)))
    other = [(n, t) for n, t in model]
    index = {n: i for i, (n, _) in enumerate(other)}
    other[index["h.50.w"]] = (
        "h.50.w",
        model[index["h.50.w"]][1].double(),
    )  # dtype mismatch mid-run
    other[index["h.60.w"]] = ("h.60.w", torch.zeros(4))  # shape mismatch mid-run
    big = model[index["h.119.big"]][1].clone()
    big[-1] += 1
    other[index["h.119.big"]] = ("h.119.big", big)
    other[index["h.121.w"]] = (
        "h.121.w",
        flip_byte(model[index["h.121.w"]][1], 0),
    )  # right after the big one
    fast, slow = both_ways(
        write_ordered(tmp_path / "a.safetensors", model),
        write_ordered(tmp_path / "b.safetensors", other),
        monkeypatch,
    )
    assert fast == slow
    assert [m.name for m in fast.dtype_mismatch] == ["h.50.w"] and [
        m.name for m in fast.shape_mismatch
    ] == ["h.60.w"]
    assert {d.name for d in fast.changed} == {
        "h.119.big",
        "h.121.w",
    }  # h.50.w: the same values, as float64
    assert fast.compared == len(model) - 1 and fast.identical == fast.compared - 2


def test_runs_longer_than_the_window_are_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    per = WINDOW // 64  # 64 tensors a window: the 64th starts the next run
    model = [(f"w.{i}", torch.full((per // 4,), float(i))) for i in range(150)]
    other = list(model)
    for i in (63, 64, 127, 128, 149):
        other[i] = (f"w.{i}", flip_byte(model[i][1], 0 if i % 2 else -1))
    fast, slow = both_ways(
        write_ordered(tmp_path / "a.safetensors", model),
        write_ordered(tmp_path / "b.safetensors", other),
        monkeypatch,
        exact=True,
    )
    assert fast == slow
    assert sorted(d.name for d in fast.changed) == sorted(f"w.{i}" for i in (63, 64, 127, 128, 149))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=60),
    flips=st.lists(st.integers(0, 10_000), max_size=8),
    gaps=st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_same_each_is_same_pair_by_pair(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], flips: list[int], gaps: list[bool]
) -> None:
    """Ranges in runs and out of them (a gap after a range on one side breaks the run), bytes flipped anywhere."""
    d = tmp_path_factory.mktemp("same_each")
    total = sum(sizes) + len(sizes)
    data_a = bytearray(random.Random(len(sizes)).randbytes(total))
    data_b = bytearray(data_a)
    for f in flips:
        data_b[f % total] ^= 0xFF
    (d / "a").write_bytes(data_a)
    (d / "b").write_bytes(data_b)
    pa, pb = d / "a", d / "b"
    ranges_a, ranges_b, at_a, at_b = [], [], 0, 0
    for n, gap in zip(sizes, gaps, strict=False):
        ranges_a.append((pa, at_a, n))
        ranges_b.append((pb, at_b, n))
        at_a += n + int(gap)
        at_b += n  # b's ranges follow one another: runs hold on b's side, a's gaps end them
    reader = PairReader()
    try:
        got = reader.same_each(ranges_a, ranges_b)
        expected = [
            data_a[x : x + n] == data_b[y : y + n]
            for (_, x, n), (_, y, _) in zip(ranges_a, ranges_b, strict=True)
        ]
        assert (
            got
            == expected
            == [reader.same(ra, rb) for ra, rb in zip(ranges_a, ranges_b, strict=True)]
        )
    finally:
        reader.close()


NAME_PARTS = st.sampled_from(["h", "0", "1", "12", "007", "a1", "", "layers", "9" * 19, "x"])


@given(st.lists(st.lists(NAME_PARTS, min_size=1, max_size=5).map(".".join), max_size=40))
def test_rollup_keys_is_rollup_key_per_name(names: list[str]) -> None:
    for order in (names, sorted(names)):
        assert rollup_keys(order) == [rollup_key(n) for n in order]
