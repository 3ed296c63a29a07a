"""Module × step heatmaps (activation std, gradient norm) on a log colour scale, with a colour bar.

The scale is shared by every run on the page (two runs compare cell by cell) and spans the positive finite
values drawn; the colour bar's end labels are its ends. A checkbox (CSS, no script) colours each row on its own
log scale instead (each value cell carries that colour as `--row`), the row's range written at its right: a
drift inside a row whose neighbours span decades shows. A cell is one of: `value` (coloured), `nan` (red:
a NaN, or NaN/Inf where the log does not say which), `inf` (orange: an Inf, or a std that overflowed
float64 over finite values), `novalue` (logged, but no value: no backward, a zero-size output) and
`missing` (the module was not logged at that step). Each cell's tooltip says which, with the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modinspect.render.html.svg import (
    INF_COLOUR,
    MISSING_COLOUR,
    NAN_COLOUR,
    Scale,
    colour,
    e,
    finite,
    name,
)
from modinspect.render.text import buckets, num
from modinspect.reports import ModuleSeries, RunReport

MAX_COLUMNS = 300  # heatmap columns; longer runs are averaged over runs of steps
MIN_COLUMNS = 20  # however many modules
MAX_CELLS = 120_000  # rows × columns, before the columns shrink towards MIN_COLUMNS
MAX_ROWS = 2_000  # modules drawn; the rest are named in a note (--json has them all)
BAR_STOPS = 24  # the colour bar is drawn as this many rects (no gradient ids to collide)

_FILL = {"nan": NAN_COLOUR, "inf": INF_COLOUR, "novalue": "#ffffff", "missing": MISSING_COLOUR}
_SAYS = {
    "std": {
        "nan": "NaN/Inf in the output",
        "inf": "overflowed (inf)",
        "novalue": "logged, no value",
        "missing": "not logged",
    },
    "grad_norm": {
        "nan": "NaN",
        "inf": "Inf",
        "novalue": "no gradient",
        "missing": "not logged",
    },
}


@dataclass(frozen=True)
class Cell:
    state: str  # value | nan | inf | novalue | missing
    value: float | None  # the mean of the finite values in the cell's steps
    first: int  # the cell's first and last step
    last: int


def _cell(m: ModuleSeries, pick: str, steps: tuple[int, ...], run: range) -> Cell:
    values: tuple[float | None, ...] = getattr(m, pick)
    vals = finite(values[i] for i in run)
    mean = math.fsum(v / len(vals) for v in vals) if vals else None
    first, last = steps[run[0]], steps[run[-1]]
    if pick == "std":
        nan = any(m.nonfinite[i] for i in run)
        inf = any(i < len(m.std_overflow) and m.std_overflow[i] for i in run)
    else:
        bad = [i for i in run if m.grad_nonfinite[i]]
        nan = any(i < len(m.grad_nan) and m.grad_nan[i] for i in bad) or (
            bool(bad) and not m.grad_nan
        )
        inf = bool(bad) and not nan
    if nan:
        return Cell("nan", mean, first, last)
    if inf:
        return Cell("inf", mean, first, last)
    if mean is not None:
        return Cell("value", mean, first, last)
    return Cell("novalue" if any(m.logged[i] for i in run) else "missing", None, first, last)


def grid(report: RunReport, pick: str) -> list[list[Cell]]:
    """One row per module (the first MAX_ROWS), one cell per step, or per run of steps where the log is longer
    than MAX_COLUMNS or the rows times the columns would pass MAX_CELLS: the page stays a few MB."""
    rows = report.modules[:MAX_ROWS]
    width = max(MIN_COLUMNS, min(MAX_COLUMNS, MAX_CELLS // max(1, len(rows))))
    columns = buckets(len(report.steps), width)
    return [[_cell(m, pick, report.steps, run) for run in columns] for m in rows]


def shared_scale(grids: Sequence[list[list[Cell]]]) -> Scale:
    return Scale.over(
        (c.value for g in grids for row in g for c in row if c.state == "value" and c.value),
        log=True,
    )


def heatmap(
    report: RunReport,
    cells: list[list[Cell]],
    scale: Scale,
    chart: str,
    label: str,
    run: str,
    pick: str,
) -> str:
    """The heatmap of one run, its colour bar, and a swatch per cell state."""
    if not report.modules:
        return '<p class="note">No modules in this log.</p>'
    ncols = max((len(r) for r in cells), default=1)
    cw = max(2.0, min(36.0, 820 / max(1, ncols)))
    ch, top = 14, 8
    left = min(260, 12 + 7 * max(len(name(m.name)) for m in report.modules[: len(cells)]))
    width = max(left + ncols * cw + 130, left + 560)
    bottom = top + len(cells) * ch
    out = [
        f'<svg data-chart="{chart}" data-run="{e(run)}" width="{width:.0f}" height="{bottom + 74}" '
        f'role="img" aria-label="{e(label)} per module and step">'
    ]
    modules = report.modules[: len(cells)]
    for r, (m, row) in enumerate(zip(modules, cells, strict=True)):
        y = top + r * ch
        out.append(
            f'<text class="row" x="{left - 6}" y="{y + ch - 3}" text-anchor="end">{e(name(m.name))}</text>'
        )
        own = Scale.over((c.value for c in row if c.state == "value" and c.value), log=True)
        if any(c.state == "value" and c.value for c in row):
            out.append(
                f'<text class="row-range" x="{left + ncols * cw + 6:.1f}" y="{y + ch - 3}">'
                f"{num(own.lo, 3)} … {num(own.hi, 3)}</text>"
            )
        for c, cell in enumerate(row):
            steps = (
                f"step {cell.first}"
                if cell.first == cell.last
                else f"steps {cell.first}–{cell.last}"
            )
            if cell.state == "value":
                assert cell.value is not None
                t = scale.position(cell.value)
                fill, shown = colour(0.0 if t is None else t), num(cell.value)
                mine = own.position(cell.value)
                # the colour on the row's own scale: CSS swaps it in when "each row on its own scale" is on
                fill += f'" style="--row:{colour(0.0 if mine is None else mine)}'
            else:
                fill, shown = _FILL[cell.state], _SAYS[pick][cell.state]
                if cell.value is not None:
                    shown += f" (finite values: {num(cell.value)})"
            out.append(
                f'<rect class="cell {cell.state}" x="{left + c * cw:.1f}" y="{y}" width="{cw:.1f}" '
                f'height="{ch}" fill="{fill}"><title>{e(name(m.name))}, {steps}: {shown}</title></rect>'
            )
    axis_y = bottom + 13
    first, mid, last = 0, ncols // 2, ncols - 1
    row0 = cells[0] if cells else []
    for c in sorted({first, mid, last}):
        if c < len(row0):
            out.append(
                f'<text class="tick x" x="{left + c * cw:.1f}" y="{axis_y}">{row0[c].first}</text>'
            )
    out.append(f'<text class="label" x="{left + ncols * cw + 6:.1f}" y="{axis_y}">step →</text>')
    out.append(_colour_bar(scale, left, axis_y + 12, _SAYS[pick]))
    out.append("</svg>")
    hidden = len(report.modules) - len(cells)
    if hidden > 0:
        out.append(
            f'<p class="note">… and {hidden:,} more modules, not drawn (`--json` has them all).</p>'
        )
    return "".join(out)


def _colour_bar(scale: Scale, left: float, top: float, says: dict[str, str]) -> str:
    """The scale as BAR_STOPS swatches with its ends and decades labelled, then the state swatches."""
    w, h = 300.0, 12
    out = [f'<g class="colour-bar" data-lo="{scale.lo!r}" data-hi="{scale.hi!r}">']
    for k in range(BAR_STOPS):
        out.append(
            f'<rect class="bar-stop" x="{left + k * w / BAR_STOPS:.1f}" y="{top}" '
            f'width="{w / BAR_STOPS + 0.4:.1f}" height="{h}" fill="{colour(k / (BAR_STOPS - 1))}"/>'
        )
    out.append(
        f'<text class="bar-end lo" x="{left}" y="{top + h + 13}">{num(scale.lo)}</text>'
        f'<text class="bar-end hi" x="{left + w}" y="{top + h + 13}" text-anchor="end">{num(scale.hi)}</text>'
    )
    for value, text in scale.ticks(5):
        t = scale.position(value)
        if t is not None and 0.15 < t < 0.78:
            out.append(
                f'<text class="tick bar" x="{left + t * w:.1f}" y="{top + h + 13}" '
                f'text-anchor="middle">{text}</text>'
            )
    out.append("</g>")
    x = left + w + 24
    for state in ("nan", "inf", "novalue", "missing"):
        fill, text = _FILL[state], says[state]
        out.append(
            f'<rect class="state {state}" x="{x}" y="{top}" width="{h}" height="{h}" fill="{fill}"/>'
            f'<text x="{x + h + 4}" y="{top + h - 2}">{text}</text>'
        )
        x += h + 16 + 6 * len(text)
    return "".join(out)
