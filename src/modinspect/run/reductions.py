"""Host-side merging of per-call statistics (pure Python floats, no torch)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from modinspect.names import collapse_names, name_family
from modinspect.reports import ModuleStats

STEP_RATIO = (
    10.0  # ‖∇out‖ growth (or shrinkage) from one depth to the next that is evidence on its own
)
COMPOUND_RATIO = 1e3  # ... and from the deepest module of the same family
NEAR_LIMIT = 8.0  # max |∇| within this factor of the dtype's largest finite value
MOSTLY_DEAD = 0.5


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
class Running:
    """Count, mean and M2 merged with Chan et al.'s parallel formula; min/max/|x| sums over finite values."""

    calls: int = 0
    count: int = 0
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    abs_sum: float = 0.0
    zeros: int = 0
    nan: int = 0
    inf: int = 0
    alive: list[bool] = field(default_factory=list)

    @property
    def units(self) -> int:
        return len(self.alive)

    def merge(
        self,
        n: int,
        mean: float,
        m2: float,
        lo: float,
        hi: float,
        abs_sum: float,
        zeros: int,
        nan: int,
        inf: int,
    ) -> None:
        self.count += n + nan + inf
        self.zeros += zeros
        self.nan += nan
        self.inf += inf
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        self.abs_sum += abs_sum

    def merge_call(self, chunk: Sequence[float]) -> None:
        """Merge one call's [n, mean, M2, min, max, sum|x|, zeros, nan, inf] as read back from the device."""
        n, mean, m2, lo, hi, abs_sum, zeros, nan, inf = chunk
        self.merge(int(n), mean, m2, lo, hi, abs_sum, int(zeros), int(nan), int(inf))

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
