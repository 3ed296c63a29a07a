"""The named records of per-call statistics and their exact merges (pure Python floats, no torch).

Each record (`Moments`, `GradTotals`, `ParamGradTotals`, `Units`) has one `merge()`, used alike for the calls
of a batch (`Collector.merge`), the steps of a `watch` run and the ranks of a torchrun (`ranks.merge_states`).
A record's field order is also its chunk's layout on the device and in the one transfer (`chunk_builder`,
`from_chunk`): adding a statistic is a field here, its merge, and its reduction in `device_stats.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from modinspect.names import collapse_names, name_family
from modinspect.reports import ModuleStats

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

STEP_RATIO = (
    10.0  # ‖∇out‖ growth (or shrinkage) from one depth to the next that is evidence on its own
)
COMPOUND_RATIO = 1e3  # ... and from the deepest module of the same family
NEAR_LIMIT = 8.0  # max |∇| within this factor of the dtype's largest finite value
MOSTLY_DEAD = 0.5


R = TypeVar("R", bound="DataclassInstance")


def fields_of(record: type[Any]) -> tuple[str, ...]:
    """The field names of a record, in order: the layout of its chunk on the device and in the transfer."""
    return _layout(record).names


def slot(record: type[Any], name: str) -> int:
    """Where field `name` sits in `record`'s chunk."""
    return fields_of(record).index(name)


def chunk_builder(record: type[Any]) -> Callable[..., list[Any]]:
    """A function of `record`'s fields, keyword-only, that returns their values in the record's field order.

    The one place the device side decides a layout: a reduction names what it computes
    (`MOMENTS(n=..., mean=..., ...)`), and `from_chunk` reads it back by the same field list. A missing or
    unknown name is a TypeError, not a silent shift. Generated like a dataclass's `__init__`, so Python binds
    the names itself: this runs per hook call, and a `**kwargs` dict would cost ~1.7 µs each time.
    """
    names = fields_of(record)
    args = ", ".join(names)
    scope: dict[str, Any] = {}
    exec(f"def chunk(*, {args}):\n    return [{args}]\n", scope)  # our own identifiers only
    builder: Callable[..., list[Any]] = scope["chunk"]
    builder.__qualname__ = builder.__name__ = f"{record.__name__}_chunk"
    return builder


def from_chunk(record: type[R], values: Sequence[float]) -> R:
    """The record of one chunk read back from the device (floats): counts become ints, flags bools."""
    layout = _LAYOUTS.get(record) or _layout(record)
    if len(values) != len(layout.names):
        raise ValueError(
            f"{record.__name__} has {len(layout.names)} fields, got {len(values)} values"
        )
    v = list(values)
    for i in layout.ints:
        v[i] = int(v[i])
    for i in layout.bools:
        v[i] = v[i] > 0
    return record(*v)


@dataclass(frozen=True)
class _Layout:
    names: tuple[str, ...]
    ints: tuple[int, ...]
    bools: tuple[int, ...]


_LAYOUTS: dict[type[Any], _Layout] = {}


def _layout(record: type[Any]) -> _Layout:
    # Built once per record class: from_chunk() runs per hook call, on the hot path.
    layout = _LAYOUTS.get(record)
    if layout is None:
        fields = dataclasses.fields(record)
        names = tuple(f.name for f in fields)
        kinds = [str(f.type) for f in fields]
        layout = _LAYOUTS[record] = _Layout(
            names,
            tuple(i for i, k in enumerate(kinds) if k == "int"),
            tuple(i for i, k in enumerate(kinds) if k == "bool"),
        )
    return layout


@dataclass
class Moments:
    """Count, mean and M2 over finite values (Chan et al.'s parallel merge), min/max/Σ|x|, zero/NaN/Inf counts.

    One module output's statistics: of one call (as reduced on the device, `device_stats.moments_fast` /
    `moments_exact`), or merged over calls, batches, steps and ranks by `merge()`.
    """

    n: int = 0  # finite values
    mean: float = 0.0
    m2: float = 0.0  # Σ (x - mean)²
    lo: float = math.inf
    hi: float = -math.inf
    abs_sum: float = 0.0
    zeros: int = 0
    nan: int = 0
    inf: int = 0

    def merge(self, other: Moments) -> None:
        """Add `other`'s values in, exactly (Chan's merge of mean and M2)."""
        self.zeros += other.zeros
        self.nan += other.nan
        self.inf += other.inf
        n = other.n
        if n == 0:
            return
        total = self.n + n
        delta = other.mean - self.mean
        self.mean += delta * n / total
        self.m2 += other.m2 + delta * delta * self.n * n / total
        self.n = total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        self.abs_sum += other.abs_sum


@dataclass
class GradTotals:
    """One module's output-gradient totals over calls, steps or ranks; `merge()` is the one way to add two up.

    `seen`: a gradient reached the output at all (an output cut off from the loss has no norm, not a norm of 0).
    `near`: the largest max|∇| over its dtype's largest finite value (half precision close to overflow).
    """

    squares: float = 0.0  # Σ‖∇out‖² over the calls merged
    nan: int = 0
    inf: int = 0
    seen: bool = False
    near: float = 0.0

    def merge(self, other: GradTotals, scale: float = 1.0) -> None:
        """Add `other` in, its squares times `scale` (1 / world² for averaged gradients of mean losses)."""
        self.squares += other.squares * scale
        self.nan += other.nan
        self.inf += other.inf
        self.seen = self.seen or other.seen
        self.near = max(self.near, other.near)


@dataclass
class ParamGradTotals:
    """One module's own parameters' gradient totals (Σ‖∇w‖², NaN/Inf counts); `seen`: some had a gradient."""

    squares: float = 0.0
    nan: int = 0
    inf: int = 0
    seen: bool = False

    def merge(self, other: ParamGradTotals) -> None:
        self.squares += other.squares
        self.nan += other.nan
        self.inf += other.inf
        self.seen = self.seen or other.seen


@dataclass
class Units:
    """Which units (channels, features) of a ReLU-family output were ever non-zero; `ok`: one unit count throughout.

    Merged by OR: a unit is dead only if it is zero in every call, step and rank. A unit count that changes
    between two merged records leaves no per-unit answer (`ok` False, for good).
    """

    alive: list[bool] = field(default_factory=list)
    ok: bool = True

    def merge(self, other: Units) -> None:
        self.ok = self.ok and other.ok
        if not other.alive:
            return
        if not self.alive:
            self.alive = list(other.alive)
        elif len(self.alive) != len(other.alive):
            self.ok = False
        else:
            self.alive = [a or b for a, b in zip(self.alive, other.alive, strict=True)]


class ActivationFields(TypedDict):
    """The `ModuleStats` fields that come from a module's `Running` record (`stats` rows and `watch` totals)."""

    calls: int
    count: int
    finite: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    mean_abs: float | None
    zero_fraction: float | None
    nan: int
    inf: int


@dataclass
class Running(Moments):
    """A module's `Moments` over its calls, with the number of calls and its units' alive flags."""

    calls: int = 0
    alive: list[bool] = field(default_factory=list)

    def moments(self) -> Moments:
        """The `Moments` part of this record, as its own record."""
        return Moments(*(getattr(self, name) for name in fields_of(Moments)))

    @property
    def count(self) -> int:
        """Every value seen, finite or not."""
        return self.n + self.nan + self.inf

    @property
    def units(self) -> int:
        return len(self.alive)

    def set_alive(self, alive: Sequence[float]) -> None:
        # The device keeps OR-ing across calls and batches; the latest readback is the whole story.
        self.alive = [a > 0 for a in alive]

    def mean_or_none(self) -> float | None:
        return self.mean if self.n else None

    def std(self) -> float | None:
        """Bessel-corrected, like torch.std's default."""
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else None

    def min_or_none(self) -> float | None:
        return self.lo if self.n else None

    def max_or_none(self) -> float | None:
        return self.hi if self.n else None

    def mean_abs(self) -> float | None:
        return self.abs_sum / self.n if self.n else None

    def zero_fraction(self) -> float | None:
        return self.zeros / self.count if self.count else None

    def dead_fraction(self) -> float | None:
        if not self.alive:
            return None
        return sum(1 for a in self.alive if not a) / len(self.alive)

    def report_fields(self) -> ActivationFields:
        """The report's view of this record: what a `ModuleStats` row shows of it."""
        return ActivationFields(
            calls=self.calls,
            count=self.count,
            finite=self.n,
            mean=self.mean_or_none(),
            std=self.std(),
            min=self.min_or_none(),
            max=self.max_or_none(),
            mean_abs=self.mean_abs(),
            zero_fraction=self.zero_fraction(),
            nan=self.nan,
            inf=self.inf,
        )


def grad_outliers(
    names: Sequence[str],
    types: Sequence[str],
    norms: Sequence[float | None],
    near_limit: Sequence[bool],
) -> tuple[set[int], set[int]]:
    """Indices of exploding and vanishing gradient norms, on evidence only (the rule the README documents).

    Norms are compared between modules of one type at consecutive depths (names that differ only in
    their last layer index: `h.3.mlp`/`h.4.mlp`, or `0`/`2` in an nn.Sequential). Going backward, from
    the deepest toward the input, a module is exploding when its ‖∇out‖ is at least STEP_RATIO times
    the next deeper one's, or COMPOUND_RATIO times the deepest one's; vanishing the other way round.
    A gradient within a factor of 8 of its dtype's largest finite value is exploding whatever its depth.
    Modules without a gradient (outputs that depend on neither the parameters nor the input) and
    singletons (the root, a head) are never compared.
    """
    families: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, name in enumerate(names):
        g = norms[i]
        key = name_family(name)
        if key is None or g is None or not math.isfinite(g) or g <= 0:
            continue
        families.setdefault((key[0], types[i]), []).append((key[1], i))
    exploding = {i for i, near in enumerate(near_limit) if near}
    vanishing: set[int] = set()
    for members in families.values():
        if len(members) < 2:
            continue
        members.sort()
        deepest = norms[members[-1][1]]
        assert deepest is not None
        for (_, i), (_, deeper) in itertools.pairwise(members):
            g, g_next = norms[i], norms[deeper]
            assert g is not None and g_next is not None
            if g >= g_next * STEP_RATIO or g >= deepest * COMPOUND_RATIO:
                exploding.add(i)
            elif g * STEP_RATIO <= g_next or g * COMPOUND_RATIO <= deepest:
                vanishing.add(i)
    return exploding, vanishing


def flags_for(row: ModuleStats, exploding: bool, vanishing: bool) -> tuple[str, ...]:
    flags = []
    if row.nan:
        flags.append("nan")
    if row.inf:
        flags.append("inf")
    if row.grad_nan or row.grad_inf or row.param_grad_nan or row.param_grad_inf:
        flags.append("nonfinite-grad")
    if row.dead_fraction is not None and row.dead_fraction >= 1.0:
        flags.append("dead")
    elif row.dead_fraction is not None and row.dead_fraction >= MOSTLY_DEAD:
        flags.append("mostly-dead")
    if exploding:
        flags.append("exploding-grad")
    if vanishing and "nonfinite-grad" not in flags:
        flags.append("vanishing-grad")
    return tuple(flags)


def diagnose(rows: Sequence[ModuleStats]) -> list[str]:
    """Plain-language causes where the evidence is unambiguous (a dead ReLU fed only values <= 0)."""
    by_name = {r.name: r for r in rows}
    groups: dict[tuple[str, str], list[tuple[ModuleStats, ModuleStats]]] = {}
    for r in rows:
        feeder = by_name.get(r.input_from) if r.input_from is not None else None
        if "dead" not in r.flags or feeder is None or feeder.max is None or feeder.max > 0:
            continue
        groups.setdefault((feeder.type, r.type), []).append((feeder, r))
    lines = []
    for (ftype, rtype), pairs in groups.items():
        feeders = ", ".join(collapse_names([f.name for f, _ in pairs]))
        relus = ", ".join(collapse_names([r.name for _, r in pairs]))
        top = max(f.max for f, _ in pairs if f.max is not None)
        bound = "< 0" if top < 0 else "<= 0"
        many = len(pairs) > 1
        lines.append(
            f"{feeders} ({ftype})'s outputs are all {bound} (max {top:.3g}), so {relus} ({rtype}) "
            f"never {'fire' if many else 'fires'}: check {'their' if many else 'its'} bias or init"
        )
    return lines
