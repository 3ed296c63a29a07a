"""Every field of every merged record survives each path a record takes, checked against torch's reductions.

A statistic is one record field (`run/reductions.py`) and its reduction (`run/device_stats.py`). These tests
walk the records' field lists, so a field added without its reduction, its place in the device chunk, its
merge, or its way through the torchrun and `watch` merges fails here:

- the device chunk: reduced on the device, packed, read back in one transfer, rebuilt by `from_chunk`;
- the batch merge (`merge()` over calls), the torchrun merge (`ranks.merge_states` over `asdict` states)
  and the `watch` run totals (`_Totals.fold` over windows);

each time the merge of two parts equals the record of their concatenation as torch computes it, with
NaN, +Inf, -Inf and zeros, in float32 and float16.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from modinspect.run import device_stats
from modinspect.run.collector import Collector, StatsOptions
from modinspect.run.ranks import collector_state, merge_states
from modinspect.run.reductions import (
    GradTotals,
    Moments,
    ParamGradTotals,
    Running,
    Units,
    chunk_builder,
    fields_of,
    from_chunk,
)
from modinspect.run.transfer import TransferQueue, to_host, unpack
from modinspect.watching.record import _Totals


def transferred(record: type[Any], values: list[Any]) -> Any:
    """`values` (a device chunk) through the real path: queued, packed, one transfer, unpacked, rebuilt."""
    queue = TransferQueue(torch.float64)
    queue.push("chunk", 0, values)
    packed = queue.pack([], [], exact=True)
    [(_, _, flat)] = unpack(packed, to_host(packed.data))
    assert len(flat) == len(fields_of(record))
    return from_chunk(record, flat)


def finite(x: torch.Tensor) -> torch.Tensor:
    d = x.double().reshape(-1)  # float16 and float32 widen to float64 exactly
    return d[torch.isfinite(d)]


# One torch reduction per field, over a whole tensor: a field missing here fails the test below.
MOMENTS: dict[str, Callable[[torch.Tensor], float]] = {
    "n": lambda x: finite(x).numel(),
    "mean": lambda x: finite(x).mean().item(),
    "m2": lambda x: (finite(x) - finite(x).mean()).square().sum().item(),
    "lo": lambda x: finite(x).min().item(),
    "hi": lambda x: finite(x).max().item(),
    "abs_sum": lambda x: finite(x).abs().sum().item(),
    "zeros": lambda x: int((x == 0).sum()),
    "nan": lambda x: int(torch.isnan(x).sum()),
    "inf": lambda x: int(torch.isinf(x).sum()),
}
GRAD: dict[str, Callable[[torch.Tensor], Any]] = {
    "squares": lambda g: finite(g).square().sum().item(),
    "nan": lambda g: int(torch.isnan(g).sum()),
    "inf": lambda g: int(torch.isinf(g).sum()),
    "seen": lambda g: True,
    "near": lambda g: (
        finite(g).abs().max().item() / torch.finfo(g.dtype).max
        if g.dtype in (torch.float16, torch.bfloat16)
        else 0.0
    ),
}
PARAM_GRAD = {name: GRAD[name] for name in ("squares", "nan", "inf", "seen")}


def test_every_record_field_has_its_torch_reference_here() -> None:
    assert list(MOMENTS) == list(fields_of(Moments))
    assert list(GRAD) == list(fields_of(GradTotals))
    assert list(PARAM_GRAD) == list(fields_of(ParamGradTotals))
    # Running is Moments plus what is not a per-call statistic (calls, alive units: merged by their owners).
    assert [n for n in fields_of(Running) if n not in MOMENTS] == ["calls", "alive"]


def assert_record(record: Any, reference: dict[str, Callable[[torch.Tensor], Any]], x: Any) -> None:
    for name, of in reference.items():
        got, want = getattr(record, name), of(x)
        if isinstance(want, int):  # bool too
            assert got == want and type(got) is type(want), name
        else:
            assert got == pytest.approx(want, rel=2e-5, abs=1e-9), name


def parts(dtype: torch.dtype, nonfinite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    a = torch.randn(1000) * 3
    b = torch.randn(300, 2) + 2
    a[::7] = 0.0
    b[5] = 0.0
    if nonfinite:
        a[3], a[10], b[4, 1] = math.nan, math.inf, -math.inf
    return a.to(dtype), b.to(dtype)


def whole(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a.reshape(-1), b.reshape(-1)])


CASES = [
    (dtype, exact, nonfinite)
    for dtype in (torch.float32, torch.float16)
    for exact, nonfinite in ((True, True), (True, False), (False, False))
]


def moments_of(x: torch.Tensor, exact: bool) -> Moments:
    values = (
        device_stats.moments_exact(x)
        if exact
        else device_stats.moments_fast(x, device_stats.Scratch())
    )
    record = transferred(Moments, values)
    assert isinstance(record, Moments)
    return record


@pytest.mark.parametrize(("dtype", "exact", "nonfinite"), CASES)
def test_moments_chunk_and_merge_equal_torch_on_the_concatenation(
    dtype: torch.dtype, exact: bool, nonfinite: bool
) -> None:
    a, b = parts(dtype, nonfinite)
    assert_record(moments_of(a, exact), MOMENTS, a)
    merged = Moments()
    merged.merge(moments_of(a, exact))
    merged.merge(moments_of(b, exact))
    merged.merge(Moments())  # an empty record (a call with no finite value) changes nothing
    assert_record(merged, MOMENTS, whole(a, b))


@pytest.mark.parametrize(("dtype", "exact", "nonfinite"), CASES)
def test_grad_totals_chunk_and_merge_equal_torch_on_the_concatenation(
    dtype: torch.dtype, exact: bool, nonfinite: bool
) -> None:
    a, b = parts(dtype, nonfinite)
    merged, params = GradTotals(), ParamGradTotals()
    for g in (a, b):
        merged.merge(transferred(GradTotals, device_stats.grad_totals(g, exact)))
        params.merge(transferred(ParamGradTotals, device_stats.param_grad_totals([g], exact)))
    assert_record(merged, GRAD, whole(a, b))
    assert_record(params, PARAM_GRAD, whole(a, b))
    # One module's parameters: their gradients' totals together equal those of their concatenation.
    together = transferred(ParamGradTotals, device_stats.param_grad_totals([a, b], exact))
    assert_record(together, PARAM_GRAD, whole(a, b))


def collector_with(x: torch.Tensor, alive: list[bool], units_ok: bool = True) -> Collector:
    """A one-module Collector whose host totals are the records of `x` (as one batch would leave them)."""
    c = Collector(["m"], [nn.Identity()], StatsOptions(), torch.float64)
    c.running[0] = Running(
        **dataclasses.asdict(moments_of(x, exact=True)), calls=1, alive=list(alive)
    )
    c.grad[0] = transferred(GradTotals, device_stats.grad_totals(x, exact=True))
    c.units_ok[0] = units_ok
    return c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_torchrun_merge_and_the_watch_totals_keep_every_field(dtype: torch.dtype) -> None:
    a, b = parts(dtype, nonfinite=True)
    ca = collector_with(a, [True, False, False])
    cb = collector_with(b, [False, False, True])
    states = [collector_state(ca), collector_state(cb)]
    # What travels between ranks is each record's fields by name, every field of it.
    assert list(states[0][0]["moments"]) == list(fields_of(Moments))
    assert list(states[0][0]["grad"]) == list(fields_of(GradTotals))
    assert list(states[0][0]["units"]) == list(fields_of(Units))
    [(ranked, units_ok, grad)] = merge_states(states, grad_scale=1.0)
    assert_record(ranked, MOMENTS, whole(a, b))
    assert_record(grad, GRAD, whole(a, b))
    assert (ranked.calls, ranked.alive, units_ok) == (1, [True, False, True], True)

    totals = _Totals(1)
    totals.fold(ca, 1)
    totals.fold(cb, 1)
    assert_record(totals.running[0], MOMENTS, whole(a, b))
    assert_record(totals.grad[0], GRAD, whole(a, b))
    assert (totals.running[0].calls, totals.alive[0], totals.units_ok[0]) == (
        2,
        [True, False, True],
        True,
    )


def test_units_merge_by_or_and_a_changed_unit_count_has_no_answer() -> None:
    units = Units()
    units.merge(Units([False, True]))
    units.merge(Units([True, False]))
    assert units == Units([True, True], ok=True)
    units.merge(Units([True]))
    assert not units.ok
    not_ok = Units([True], ok=False)
    not_ok.merge(Units([True]))
    assert not not_ok.ok
    # Through the torchrun merge: a rank whose unit count differs leaves no dead fraction.
    x = torch.randn(10)
    states = [
        collector_state(collector_with(x, [True, False])),
        collector_state(collector_with(x, [True])),
    ]
    assert merge_states(states, 1.0)[0][1] is False


def test_a_chunk_is_built_by_field_name_and_read_back_by_field_type() -> None:
    build = chunk_builder(GradTotals)
    with pytest.raises(TypeError, match="missing 3 required keyword-only arguments"):
        build(squares=1.0, nan=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'norm'"):
        build(squares=1.0, nan=0, inf=0, seen=1, near=0.0, norm=2.0)
    with pytest.raises(TypeError, match="positional"):
        build(4.0, 1, 2, 1, 0.25)  # names only: a chunk is never built by position
    values = build(near=0.25, seen=1, inf=2, nan=1, squares=4.0)
    assert values == [4.0, 1, 2, 1, 0.25]  # the field order, whatever the keyword order
    assert from_chunk(GradTotals, [4.0, 1.0, 2.0, 1.0, 0.25]) == GradTotals(4.0, 1, 2, True, 0.25)
    with pytest.raises(ValueError, match="GradTotals has 5 fields, got 2 values"):
        from_chunk(
            GradTotals, [4.0, 1.0]
        )  # a chunk one field short is an error, not a shifted record
