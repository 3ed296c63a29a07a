"""The pieces every chart of the HTML page is drawn with: escaping, colour, scales and their tick labels.

Pure functions over numbers; no chart knows another's layout. A Scale maps a value to [0, 1] on a linear or
log10 axis and names its own ticks, so what a chart draws and what its axis says cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape

from modinspect.render.text import num, visible

# viridis at five stops: perceptually even, readable in grey.
PALETTE = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
NAN_COLOUR = "#d62728"  # a NaN (or NaN/Inf where the log does not tell them apart)
INF_COLOUR = "#ff7f0e"  # an Inf, or a statistic that overflowed float64 over finite values
MISSING_COLOUR = "#e8e8e8"  # the module was not logged at that step
LINE_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
RUN_DASH = ("", "6 3")  # run A solid, run B dashed: two runs on one axis
FLOAT32_MAX = (
    3.4028234663852886e38  # what a histogram of no finite value has for edges: never a label
)


def e(text: object) -> str:
    """Text from the log as HTML: escaped, control characters shown (a bidi override would reorder the page)."""
    return escape(visible(str(text)), quote=True)


def name(module: str) -> str:
    return module or "(model)"


def colour(t: float) -> str:
    """t in [0, 1] -> an interpolated palette colour."""
    t = min(1.0, max(0.0, t)) * (len(PALETTE) - 1)
    i = min(int(t), len(PALETTE) - 2)
    f = t - i
    a, b = PALETTE[i], PALETTE[i + 1]
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


def finite(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


@dataclass(frozen=True)
class Scale:
    """A value axis from `lo` to `hi` (the values' own ends, not padded); log10 when `log`."""

    lo: float
    hi: float
    log: bool = False

    @classmethod
    def over(cls, values: Iterable[float], log: bool | None = None) -> Scale:
        """The scale spanning the finite `values` (the positive ones on a log axis); None for `log`: log when
        they are all positive and span two decades or more."""
        vals = finite(values)
        if log is None:
            log = bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= 100
        if log:
            vals = [v for v in vals if v > 0]
        if not vals:
            return cls(1.0, 10.0, log) if log else cls(0.0, 1.0, log)
        return cls(min(vals), max(vals), log)

    def decades(self) -> Scale:
        """A log scale widened to whole decades at both ends (an axis labelled at its ends); else itself."""
        if not self.log:
            return self
        a = max(-323, math.floor(math.log10(self.lo)))
        b = min(308, math.ceil(math.log10(self.hi)))
        return Scale(10.0**a, 10.0 ** max(b, a + 1), True)

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def position(self, value: float) -> float | None:
        """`value` on the axis, 0 at `lo` and 1 at `hi` (a flat scale puts everything at 0.5); None when a log
        axis cannot show it (zero or negative)."""
        if self.log and value <= 0:
            return None
        lo, hi = self._t(self.lo), self._t(self.hi)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            return 0.5
        # Halved before subtracting: -1e308 to 1e308 spans inf.
        return (self._t(value) / 2 - lo / 2) / (hi / 2 - lo / 2)

    def ticks(self, most: int = 6) -> list[tuple[float, str]]:
        """(value, label) for the axis: whole decades on a log axis, round numbers on a linear one."""
        if self.log:
            # Decades float64 can hold: 1e309 would overflow.
            a, b = (
                max(-323, math.floor(math.log10(self.lo))),
                min(308, math.ceil(math.log10(self.hi))),
            )
            stride = max(1, math.ceil((b - a + 1) / most))
            return [
                (10.0**k, f"1e{k}")
                for k in range(-(-a // stride) * stride, b + 1, stride)
                if self.lo <= 10.0**k * (1 + 1e-9) and 10.0**k <= self.hi * (1 + 1e-9)
            ] or [(self.lo, num(self.lo, 3)), (self.hi, num(self.hi, 3))]
        if self.hi - self.lo <= 1e-12 * max(1.0, abs(self.hi)):
            return [(self.lo, num(self.lo, 3))]
        raw = (self.hi / most - self.lo / most) * 1.0
        mag = 10.0 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        first = math.ceil(self.lo / step)
        out = []
        for k in range(first, first + most + 2):
            v = k * step
            if not math.isfinite(v) or v > self.hi * (1 + 1e-9) + 1e-300:
                break
            out.append(
                (0.0 if abs(v) < step * 1e-9 else v, num(0.0 if abs(v) < step * 1e-9 else v, 3))
            )
        return out or [(self.lo, num(self.lo, 3)), (self.hi, num(self.hi, 3))]


@dataclass(frozen=True)
class Frame:
    """A chart's plotting box inside its svg: x from `left` to `left + width`, y from `top` down `height`."""

    left: float
    top: float
    width: float
    height: float

    def x(self, t: float) -> float:
        return self.left + t * self.width

    def y(self, t: float) -> float:
        return self.top + (1 - t) * self.height


def y_axis(frame: Frame, scale: Scale, label: str = "") -> str:
    """The y axis line, its tick labels and faint grid lines."""
    out = [
        f'<path class="axis" d="M{frame.left},{frame.top} V{frame.top + frame.height} '
        f'H{frame.left + frame.width}"/>'
    ]
    for value, text in scale.ticks():
        t = scale.position(value)
        if t is None or not -0.001 <= t <= 1.001:
            continue
        y = frame.y(t)
        out.append(
            f'<path class="grid" d="M{frame.left},{y:.1f} H{frame.left + frame.width}"/>'
            f'<text class="tick y" x="{frame.left - 5}" y="{y + 4:.1f}" text-anchor="end">{text}</text>'
        )
    if label:
        out.append(
            f'<text class="label" transform="translate(12,{frame.top + frame.height / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle">{e(label)}</text>'
        )
    return "".join(out)


def step_axis(frame: Frame, scale: Scale) -> str:
    """Whole step numbers under the plotting box, at round values."""
    out, seen = [], set()
    for value, _ in scale.ticks(7):
        t = scale.position(value)
        if t is None or not -0.001 <= t <= 1.001 or value != round(value) or value in seen:
            continue
        seen.add(value)
        out.append(
            f'<text class="tick x" x="{frame.x(t):.1f}" y="{frame.top + frame.height + 14}" '
            f'text-anchor="middle">{round(value)}</text>'
        )
    out.append(
        f'<text class="label" x="{frame.left + frame.width}" y="{frame.top + frame.height + 28}" '
        'text-anchor="end">step →</text>'
    )
    return "".join(out)
