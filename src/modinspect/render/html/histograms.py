"""Activation histograms over time: one ridgeline per module, a row per step, earliest at the top.

A histogram whose edges are not finite numbers in order (a step where every value was NaN/Inf, logged with
float32's largest value as both ends) is a row that says so: its edges are never an axis label. The value
axis is shared by the rows whose ranges are alike; a row spanning 50× more or less than the median row (a
blow-up) is drawn over its own range and labelled with it, so the other rows are not a line at zero.
"""

from __future__ import annotations

from collections.abc import Sequence

from modinspect.render.html.svg import FLOAT32_MAX, colour, e, name
from modinspect.render.text import num
from modinspect.reports import ModuleSeries, StepHistogram

MAX_ROWS = 12  # steps per ridgeline by default: evenly spaced over the steps with a histogram
ROW, PEAK, LEFT, WIDTH = 16, 34, 58, 228  # row pitch, tallest bar, label gutter, plot width


def usable(g: StepHistogram) -> bool:
    """Whether the edges are finite, in order and not a sentinel: a range the row can be drawn over."""
    edges = g.edges
    return (
        len(edges) >= 2
        and edges[0] <= edges[-1]
        and all(abs(x) < FLOAT32_MAX * 0.999 for x in (edges[0], edges[-1]))
        and sum(g.counts) > 0
    )


def pick_steps(m: ModuleSeries, requested: tuple[int, ...]) -> list[StepHistogram]:
    """The module's histograms at `requested` steps, or up to MAX_ROWS spread evenly over its run."""
    if requested:
        at = {g.step: g for g in m.histograms}
        return [at[s] for s in requested if s in at]
    hs = m.histograms
    if len(hs) <= MAX_ROWS:
        return list(hs)
    idx = sorted({round(k * (len(hs) - 1) / (MAX_ROWS - 1)) for k in range(MAX_ROWS)})
    return [hs[i] for i in idx]


def _common(rows: Sequence[StepHistogram]) -> tuple[tuple[float, float] | None, set[int]]:
    """The value range the typical rows share, and the steps of the rows spanning 50× more or less than the
    median row (a blow-up): those are drawn over their own range, labelled with it."""
    spans = sorted(g.edges[-1] / 2 - g.edges[0] / 2 for g in rows)
    median = spans[len(spans) // 2] if spans else 0.0
    apart = {
        g.step
        for g in rows
        if median > 0 and not median / 50 <= g.edges[-1] / 2 - g.edges[0] / 2 <= 50 * median
    }
    common = [g for g in rows if g.step not in apart]
    if not common:
        return None, apart
    return (min(g.edges[0] for g in common), max(g.edges[-1] for g in common)), apart


def ridgeline(m: ModuleSeries, requested: tuple[int, ...]) -> str:
    chosen = pick_steps(m, requested)
    if not chosen:
        return ""
    shared, apart = _common([g for g in chosen if usable(g)])
    height = 8 + PEAK + (len(chosen) - 1) * ROW + 34
    out = [
        f'<svg data-chart="histogram" data-module="{e(m.name)}" width="{LEFT + WIDTH + 96}" '
        f'height="{height}" role="img" aria-label="activation histograms of {e(name(m.name))} over steps">'
    ]
    for k, g in enumerate(chosen):
        base = 8 + PEAK + k * ROW
        out.append(
            f'<text class="tick y" x="{LEFT - 6}" y="{base}" text-anchor="end">step {g.step}</text>'
        )
        if not usable(g):
            out.append(
                f'<text class="note row" data-step="{g.step}" x="{LEFT}" y="{base}">no finite values '
                "at this step (NaN/Inf)</text>"
            )
            continue
        own = g.step in apart or shared is None
        lo, hi = (g.edges[0], g.edges[-1]) if own or shared is None else shared
        out.append(_row(g, lo, hi, base, colour(k / max(1, len(chosen) - 1))))
        if own:
            out.append(
                f'<text class="tick range" x="{LEFT + WIDTH + 6}" y="{base}">'
                f"{num(g.edges[0], 3)} … {num(g.edges[-1], 3)}</text>"
            )
    axis = 8 + PEAK + (len(chosen) - 1) * ROW + 14
    if shared is not None:
        lo, hi = shared
        out.append(
            f'<text class="tick x" x="{LEFT}" y="{axis}">{num(lo, 3)}</text>'
            f'<text class="tick x" x="{LEFT + WIDTH}" y="{axis}" text-anchor="end">{num(hi, 3)}</text>'
        )
        if lo < 0 < hi:
            x = LEFT + (0 - lo) / (hi - lo) * WIDTH
            out.append(
                f'<path class="zero" d="M{x:.1f},8 V{axis - 11}"/>'
                f'<text class="tick x" x="{x:.1f}" y="{axis}" text-anchor="middle">0</text>'
            )
        if apart:
            out.append(
                f'<text class="tick x" x="{LEFT}" y="{axis + 14}">rows with a range at the right: each '
                "over its own range</text>"
            )
    out.append("</svg>")
    return "".join(out)


def _row(g: StepHistogram, lo: float, hi: float, base: float, fill: str) -> str:
    span = hi / 2 - lo / 2
    top = max(g.counts) or 1

    def x(v: float) -> float:
        return LEFT + (0.5 if span <= 0 else (v / 2 - lo / 2) / span) * WIDTH

    outline = [f"M{x(g.edges[0]):.1f},{base}"]
    bins = []
    for i, c in enumerate(g.counts):
        a, b = x(g.edges[i]), x(g.edges[i + 1])
        h = c / top * PEAK
        outline.append(f"L{a:.1f},{base - h:.1f} L{b:.1f},{base - h:.1f}")
        bins.append(
            f'<rect class="bin" x="{a:.1f}" y="{base - PEAK}" width="{max(0.5, b - a):.1f}" height="{PEAK}">'
            f"<title>step {g.step}: [{num(g.edges[i])}, {num(g.edges[i + 1])}): {c}</title></rect>"
        )
    outline.append(f"L{x(g.edges[-1]):.1f},{base} Z")
    return (
        f'<g class="ridge-row" data-step="{g.step}"><path class="ridge" fill="{fill}" '
        f'd="{" ".join(outline)}"/>{"".join(bins)}</g>'
    )
