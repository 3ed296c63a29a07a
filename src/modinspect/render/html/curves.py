"""Curves over steps: loss, learning rate, steps/s, update ratios, dead fractions; one run or two on one axis.

Each curve is a `path.line` (and, smoothed, a `path.ema` over it) plus one `circle.point` per plotted step
carrying `data-step` and `data-value` (the log's value, as Python writes it) and a tooltip, so a test can
read every point back against the log. A step whose value is NaN/Inf is a red × at the top, never a gap
that could pass for "not logged".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modinspect.render.html.svg import Frame, Scale, e, finite, step_axis, y_axis
from modinspect.render.text import buckets, num

MAX_POINTS = 500  # points per curve; longer runs are averaged over runs of steps
MAX_MARKERS = 6000  # hover points on one chart; beyond, the curves keep only their name as tooltip
EMA_WEIGHT = 0.6  # TensorBoard's default smoothing


@dataclass(frozen=True)
class Curve:
    """One series to draw: `values` aligned with `steps`; `bad[i]`: the value at step i was NaN/Inf."""

    label: str
    steps: tuple[int, ...]
    values: tuple[float | None, ...]
    colour: str
    dash: str = ""
    bad: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Chart:
    """How to draw a set of curves: `log` None picks a log axis when the values span two decades."""

    chart: str
    title: str
    unit: str
    log: bool | None = None
    fixed: Scale | None = None
    guide: float | None = None  # a dashed reference line (the update ratio's 1e-3)
    band: tuple[float, float] | None = None  # a shaded healthy range
    smooth: bool = False
    events: tuple[
        tuple[int, str], ...
    ] = ()  # (step, what): a dashed vertical line (the first bad step)
    width: int = 580  # two side by side in a 1280-pixel window, scroll bar included
    height: int = 250


def _points(curve: Curve) -> list[tuple[int, float | None, bool]]:
    """(step, value, bad) per plotted point: the log's own values, or run means where a run is long."""
    n = len(curve.steps)
    if n <= MAX_POINTS:
        return [
            (curve.steps[i], curve.values[i], i < len(curve.bad) and curve.bad[i]) for i in range(n)
        ]
    out: list[tuple[int, float | None, bool]] = []
    for run in buckets(n, MAX_POINTS):
        vals = finite(curve.values[i] for i in run)
        mean = math.fsum(v / len(vals) for v in vals) if vals else None
        out.append(
            (curve.steps[run[0]], mean, any(i < len(curve.bad) and curve.bad[i] for i in run))
        )
    return out


def _ema(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's debiased exponential moving average, skipping gaps (on the axis' own scale)."""
    out: list[float | None] = []
    last, debias = 0.0, 0.0
    for v in values:
        if v is None:
            out.append(None)
            continue
        last = last * weight + (1 - weight) * v
        debias = debias * weight + (1 - weight)
        out.append(last / debias)
    return out


def _path(xy: Sequence[tuple[float, float] | None]) -> str:
    parts, pen = [], "M"
    for p in xy:
        if p is None:
            pen = "M"
            continue
        parts.append(f"{pen}{p[0]:.1f},{p[1]:.1f}")
        pen = "L"
    return " ".join(parts)


def line_chart(spec: Chart, curves: Sequence[Curve]) -> str:
    """An svg of the curves on shared axes, with its legend under it; a note when none has a value."""
    curves = [c for c in curves if c.steps]
    plotted = [(c, _points(c)) for c in curves]
    values = [v for _, pts in plotted for _, v, _ in pts if v is not None]
    scale = spec.fixed or Scale.over(values, spec.log).decades()
    if not finite(values) and not any(b for _, pts in plotted for *_, b in pts):
        return f'<p class="note">No {e(spec.unit)} in this log.</p>'
    steps = [s for c in curves for s in c.steps]
    xs = Scale(float(min(steps)), float(max(steps)))
    frame = Frame(66, 12, spec.width - 66 - 14, spec.height - 12 - 36)
    markers = sum(len(p) for _, p in plotted) <= MAX_MARKERS
    out = [
        f'<svg data-chart="{spec.chart}" data-scale="{"log" if scale.log else "linear"}" '
        f'data-lo="{scale.lo!r}" data-hi="{scale.hi!r}" width="{spec.width}" height="{spec.height}" '
        f'role="img" aria-label="{e(spec.title)}">',
        y_axis(frame, scale, spec.unit + (" (log)" if scale.log else "")),
        step_axis(frame, xs),
    ]
    out += _guides(spec, scale, frame)
    for step, what in spec.events:
        t = xs.position(float(step))
        if t is not None and 0 <= t <= 1:
            out.append(
                f'<path class="event" d="M{frame.x(t):.1f},{frame.top} V{frame.top + frame.height}">'
                f"<title>{e(what)}: {step}</title></path>"
            )
    for curve, pts in plotted:
        out.append(_curve(curve, pts, spec, scale, xs, frame, markers))
    out.append("</svg>")
    return "".join(out) + _legend(curves)


def _guides(spec: Chart, scale: Scale, frame: Frame) -> list[str]:
    out = []
    if spec.band is not None:
        lo, hi = (scale.position(v) for v in spec.band)
        if lo is not None and hi is not None:
            a, b = max(0.0, min(1.0, lo)), max(0.0, min(1.0, hi))
            if b > a:
                out.append(
                    f'<rect class="band" x="{frame.left}" y="{frame.y(b):.1f}" width="{frame.width}" '
                    f'height="{frame.y(a) - frame.y(b):.1f}"><title>{num(spec.band[0])} to '
                    f"{num(spec.band[1])}: the usual range</title></rect>"
                )
    if spec.guide is not None:
        t = scale.position(spec.guide)
        if t is not None and 0 <= t <= 1:
            y = frame.y(t)
            out.append(
                f'<path class="guide" d="M{frame.left},{y:.1f} H{frame.left + frame.width}"/>'
                f'<text class="guide-label" x="{frame.left + frame.width - 4}" y="{y - 4:.1f}" '
                f'text-anchor="end">{num(spec.guide)}</text>'
            )
    return out


def _curve(
    curve: Curve,
    pts: list[tuple[int, float | None, bool]],
    spec: Chart,
    scale: Scale,
    xs: Scale,
    frame: Frame,
    markers: bool,
) -> str:
    def at(step: int, v: float | None) -> tuple[float, float] | None:
        t = None if v is None else scale.position(v)
        if t is None:
            return None
        xt = xs.position(float(step))
        assert xt is not None
        return frame.x(xt), frame.y(t)

    label = e(curve.label)
    dash = f' stroke-dasharray="{curve.dash}"' if curve.dash else ""
    xy = [at(s, v) for s, v, _ in pts]
    kind = "line raw" if spec.smooth else "line"
    out = [
        f'<path class="{kind}" data-series="{label}" stroke="{curve.colour}"{dash} d="{_path(xy)}">'
        f"<title>{label}</title></path>"
    ]
    if spec.smooth and len(pts) >= 8:
        space = [
            None if p is None else frame.top + frame.height - p[1] for p in xy
        ]  # the axis' own scale
        smooth = _ema(space, EMA_WEIGHT)
        ema = [
            None if p is None or s is None else (p[0], frame.top + frame.height - s)
            for p, s in zip(xy, smooth, strict=True)
        ]
        out.append(
            f'<path class="line ema" data-series="{label}" stroke="{curve.colour}"{dash} '
            f'd="{_path(ema)}"><title>{label}, smoothed (EMA {EMA_WEIGHT})</title></path>'
        )
    sparse = len(pts) <= 60
    for (step, v, bad), p in zip(pts, xy, strict=True):
        xt = xs.position(float(step))
        assert xt is not None
        if bad:
            x, y = frame.x(xt), frame.top + 4
            out.append(
                f'<path class="marker nonfinite" data-step="{step}" d="M{x - 3:.1f},{y - 3} l6,6 m0,-6 l-6,6">'
                f"<title>{label}, step {step}: NaN/Inf</title></path>"
            )
        elif markers and p is not None and v is not None:
            out.append(
                f'<circle class="point{" shown" if sparse else ""}" data-series="{label}" data-step="{step}" '
                f'data-value="{v!r}" cx="{p[0]:.1f}" cy="{p[1]:.1f}" r="{2.2 if sparse else 3}" '
                f'fill="{curve.colour}"><title>{label}, step {step}: {num(v)}</title></circle>'
            )
    return "".join(out)


def _legend(curves: Sequence[Curve]) -> str:
    if len(curves) <= 1:
        return ""
    items = []
    for c in curves[:24]:
        dash = "dashed" if c.dash else "solid"
        items.append(
            f'<span class="key"><span class="swatch {dash}" style="border-color:{c.colour}"></span>'
            f"{e(c.label)}</span>"
        )
    more = (
        f'<span class="key note">… and {len(curves) - 24} more (hover a curve for its name)</span>'
        if len(curves) > 24
        else ""
    )
    return f'<div class="legend">{"".join(items)}{more}</div>'
