"""Host-side merging of per-call statistics (pure Python floats, no torch)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from modinspect.report import ModuleStats

EXPLODING_RATIO = 1e3  # grad norm this many times the median of all modules' grad norms
VANISHING_RATIO = 1e-3
MOSTLY_DEAD = 0.5


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

    def merge(self, n: int, mean: float, m2: float, lo: float, hi: float, abs_sum: float, zeros: int,
              nan: int, inf: int) -> None:
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


def grad_outliers(norms: Sequence[float | None]) -> tuple[set[int], set[int]]:
    """Indices of exploding and vanishing gradient norms, relative to the median of the finite, non-zero ones."""
    finite = [g for g in norms if g is not None and math.isfinite(g) and g > 0]
    if len(finite) < 3:
        return set(), set()
    median = statistics.median(finite)
    exploding = {i for i, g in enumerate(norms) if g is not None and math.isfinite(g) and g > median * EXPLODING_RATIO}
    vanishing = {i for i, g in enumerate(norms) if g is not None and math.isfinite(g) and g < median * VANISHING_RATIO}
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
