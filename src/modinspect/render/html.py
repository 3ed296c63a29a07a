"""RunReport -> one self-contained HTML page: inline SVG and CSS, no script, no network.

Every chart is an `<svg data-chart=...>` whose data marks carry a class (`bar`, `cell`, `line`, `bin`), so a
test can count them against the log. Every name from the log (modules come from user models) is escaped.
"""

from __future__ import annotations

import math
from html import escape

from modinspect.render.text import bad_step_text, buckets, num, percent, visible
from modinspect.reports import ModuleSeries, RunReport

# viridis at five stops: perceptually even, readable in grey.
_PALETTE = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_NONFINITE = "#d62728"
_MISSING = "#e8e8e8"
_LINE_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
MAX_COLUMNS = 300  # heatmap columns; longer runs are averaged over runs of steps

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 6px; }
.meta, .note { color: #666; } .bad { color: #b00; font-weight: 600; } .ok { color: #070; font-weight: 600; }
svg { display: block; margin: 6px 0; overflow: visible; } svg text { font-size: 11px; fill: #333; }
.axis { stroke: #999; fill: none; } .line { fill: none; stroke-width: 1.5; }
.bar.mean { fill: #1f77b4; } .bar.max { fill: #aec7e8; }
.bin { fill: #4c78a8; } .hists { display: flex; flex-wrap: wrap; gap: 16px; }
.hist h3 { font-size: 12px; margin: 4px 0; font-weight: 600; }
"""


def _colour(t: float) -> str:
    """t in [0, 1] -> an interpolated palette colour."""
    t = min(1.0, max(0.0, t)) * (len(_PALETTE) - 1)
    i = min(int(t), len(_PALETTE) - 2)
    f = t - i
    a, b = _PALETTE[i], _PALETTE[i + 1]
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


def _e(text: object) -> str:
    return escape(
        visible(str(text)), quote=True
    )  # a bidi override would reorder the page's names too


def _name(name: str) -> str:
    return name or "(model)"


def _scale(values: list[float], log: bool) -> tuple[float, float]:
    vals = [math.log10(v) for v in values if v > 0] if log else values
    return (min(vals), max(vals)) if vals else (0.0, 1.0)


def _position(value: float, lo: float, hi: float, log: bool) -> float:
    if log:
        value = math.log10(value) if value > 0 else lo
    return 0.5 if hi - lo <= 1e-12 else (value - lo) / (hi - lo)


def _gradient_flow(report: RunReport) -> str:
    rows = [
        m for m in report.modules if m.grad_norm_mean is not None and m.grad_norm_max is not None
    ]
    if not rows:
        return '<p class="note">No gradient norms in this log (forward only).</p>'
    values = [v for m in rows for v in (m.grad_norm_mean, m.grad_norm_max) if v is not None]
    lo, hi = _scale(values, log=True)
    lo, hi = math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)
    bw, left, top, height = 22, 60, 10, 200
    width = left + len(rows) * (bw + 8) + 20
    labels = min(160, 8 + 6 * max(len(_name(m.name)) for m in rows))  # room for the slanted names
    out = [
        f'<svg data-chart="gradient-flow" width="{width}" height="{height + labels}" role="img" '
        f'aria-label="mean and max gradient norm per module">',
        f'<path class="axis" d="M{left},{top} V{top + height} H{width - 10}"/>',
    ]
    for decade in range(lo, hi + 1):
        y = top + height - (decade - lo) / (hi - lo) * height
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">1e{decade}</text>')
    for i, m in enumerate(rows):
        x = left + 6 + i * (bw + 8)
        for kind, value, w in (("max", m.grad_norm_max, bw), ("mean", m.grad_norm_mean, bw - 8)):
            assert value is not None
            h = max(1.0, _position(value, lo, hi, log=True) * height)
            dx = 0 if kind == "max" else 4
            out.append(
                f'<rect class="bar {kind}" data-module="{_e(m.name)}" x="{x + dx}" y="{top + height - h:.1f}" '
                f'width="{w}" height="{h:.1f}"><title>{_e(_name(m.name))}: {kind} ‖∇out‖ {num(value)}'
                f"</title></rect>"
            )
        out.append(
            f'<text transform="translate({x + bw / 2:.1f},{top + height + 8}) rotate(55)">'
            f"{_e(_name(m.name))}</text>"
        )
    out.append("</svg>")
    legend = (
        '<p class="meta"><span style="color:#1f77b4">■</span> mean and <span style="color:#aec7e8">■</span> '
        "max over the logged steps of the gradient norm w.r.t. each module's output (log scale), in "
        "execution order.</p>"
    )
    return "".join(out) + legend


def _heatmap(report: RunReport, chart: str, pick: str, log: bool, label: str) -> str:
    if not report.modules:
        return '<p class="note">No modules in this log.</p>'
    columns = buckets(len(report.steps), MAX_COLUMNS)
    cw = max(2.0, min(14.0, 900 / max(1, len(columns))))
    ch, left, top = (
        14,
        min(260, 12 + 7 * max((len(_name(m.name)) for m in report.modules), default=8)),
        18,
    )

    def cell(m: ModuleSeries, run: range) -> tuple[float | None, bool, bool]:
        values: tuple[float | None, ...] = getattr(m, pick)
        bad = m.nonfinite if pick == "std" else m.grad_nonfinite
        finite = [v for v in (values[i] for i in run) if v is not None and math.isfinite(v)]
        mean = sum(finite) / len(finite) if finite else None
        return mean, any(bad[i] for i in run), any(m.logged[i] for i in run)

    grid = [[cell(m, run) for run in columns] for m in report.modules]
    finite = [v for row in grid for v, _, _ in row if v is not None]
    lo, hi = _scale(finite, log)
    width = left + len(columns) * cw + 10
    height = top + len(report.modules) * ch + 34
    out = [
        f'<svg data-chart="{chart}" width="{width:.0f}" height="{height}" role="img" '
        f'aria-label="{_e(label)} per module and step">'
    ]
    for r, (m, row) in enumerate(zip(report.modules, grid, strict=True)):
        y = top + r * ch
        out.append(
            f'<text x="{left - 6}" y="{y + ch - 3}" text-anchor="end">{_e(_name(m.name))}</text>'
        )
        for c, (value, bad, logged) in enumerate(row):
            run = columns[c]
            steps = (
                f"step {report.steps[run[0]]}"
                if len(run) == 1
                else f"steps {report.steps[run[0]]}–{report.steps[run[-1]]}"
            )
            if bad:
                state, fill, shown = "nonfinite", _NONFINITE, "NaN/Inf"
            elif value is None:
                state, fill, shown = "missing", _MISSING, "not logged" if not logged else "no value"
            else:
                state, fill, shown = "value", _colour(_position(value, lo, hi, log)), num(value)
            out.append(
                f'<rect class="cell {state}" x="{left + c * cw:.1f}" y="{y}" width="{cw:.1f}" height="{ch}" '
                f'fill="{fill}"><title>{_e(_name(m.name))}, {steps}: {shown}</title></rect>'
            )
    axis_y = top + len(report.modules) * ch + 14
    for c in sorted({0, len(columns) // 2, len(columns) - 1}):
        out.append(
            f'<text x="{left + c * cw:.1f}" y="{axis_y}">{report.steps[columns[c][0]]}</text>'
        )
    low, high = (10**lo, 10**hi) if log else (lo, hi)
    out.append(
        f'<text x="{left}" y="{axis_y + 16}">step → · colour from {num(low)} (dark) to {num(high)} '
        f"(yellow){' on a log scale' if log else ''}; red: NaN/Inf; grey: no value</text>"
    )
    out.append("</svg>")
    return "".join(out)


def _dead(report: RunReport) -> str:
    rows = [m for m in report.modules if any(v is not None for v in m.dead_fraction)]
    if not rows:
        return '<p class="note">No ReLU-family modules in this log: no dead-unit fractions.</p>'
    left, top, w, h = 50, 10, 760, 200
    n = len(report.steps)

    def x(i: int) -> float:
        return left + (i / (n - 1) * w if n > 1 else w / 2)

    out = [
        f'<svg data-chart="dead-fraction" width="{left + w + 240}" height="{top + h + 40}" role="img" '
        f'aria-label="dead-unit fraction over steps">',
        f'<path class="axis" d="M{left},{top} V{top + h} H{left + w}"/>',
    ]
    for frac in (0, 0.5, 1):
        out.append(
            f'<text x="{left - 6}" y="{top + h - frac * h + 4:.1f}" text-anchor="end">{percent(frac)}</text>'
        )
    out.append(
        f'<text x="{left}" y="{top + h + 16}">{report.steps[0]}</text>'
        f'<text x="{left + w}" y="{top + h + 16}" text-anchor="end">{report.steps[-1]}</text>'
    )
    for k, m in enumerate(rows):
        colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
        points, pen = [], "M"
        for i, v in enumerate(m.dead_fraction):
            if v is None:
                pen = "M"  # a gap where the module was not logged
                continue
            points.append(f"{pen}{x(i):.1f},{top + h - v * h:.1f}")
            pen = "L"
        out.append(
            f'<path class="line" data-module="{_e(m.name)}" stroke="{colour}" d="{" ".join(points)}">'
            f"<title>{_e(_name(m.name))}</title></path>"
        )
        out.append(
            f'<text x="{left + w + 10}" y="{top + 12 + k * 14}" fill="{colour}" style="fill:{colour}">'
            f"{_e(_name(m.name))}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _histograms(report: RunReport, steps: tuple[int, ...]) -> str:
    rows = [m for m in report.modules if m.histograms]
    if not rows:
        return '<p class="note">No histograms in this log.</p>'
    out = []
    for m in rows:
        at = {g.step: g for g in m.histograms}
        panels = []
        for step in steps:
            g = at.get(step)
            if g is None:
                panels.append(
                    f'<div class="hist"><h3>step {step}</h3><p class="note">no histogram</p></div>'
                )
                continue
            bw, h = max(2.0, 180 / max(1, len(g.counts))), 70
            top = max(g.counts, default=0) or 1
            bars = "".join(
                f'<rect class="bin" x="{i * bw:.1f}" y="{h - c / top * h:.1f}" width="{max(1.0, bw - 1):.1f}" '
                f'height="{c / top * h:.1f}"><title>[{num(g.edges[i])}, {num(g.edges[i + 1])}): {c}</title></rect>'
                for i, c in enumerate(g.counts)
            )
            panels.append(
                f'<div class="hist"><h3>step {step}</h3><svg data-chart="histogram" '
                f'data-module="{_e(m.name)}" data-step="{step}" width="{len(g.counts) * bw:.0f}" '
                f'height="{h + 16}">{bars}<text x="0" y="{h + 13}">{num(g.edges[0])}</text>'
                f'<text x="{len(g.counts) * bw:.0f}" y="{h + 13}" text-anchor="end">{num(g.edges[-1])}'
                f"</text></svg></div>"
            )
        out.append(
            f'<h3>{_e(_name(m.name))} <span class="meta">{_e(m.type)}</span></h3>'
            f'<div class="hists">{"".join(panels)}</div>'
        )
    return "".join(out)


def _summary(report: RunReport) -> str:
    h, bad = report.header, report.first_bad
    parts = [
        f'<p class="meta">{_e(h.schema)}: {_e(h.model)} on {_e(h.device)}, {h.world_size} rank(s), every '
        f"{h.every} steps; {len(report.steps)} logged step(s), {report.steps[0]} … {report.steps[-1]}.</p>"
    ]
    if bad is None:
        parts.append(f'<p class="ok">No NaN/Inf in {len(report.steps)} logged step(s).</p>')
    else:
        parts.append(f'<p class="bad">{_e(bad_step_text(bad))}</p>')
    parts += [f'<p class="note">note: {_e(n)}</p>' for n in report.notes]
    return "".join(parts)


def run_html(report: RunReport, histogram_steps: tuple[int, ...]) -> str:
    """The whole page: summary, gradient flow, the two heatmaps, dead fractions, histograms at `histogram_steps`."""
    shown = ", ".join(str(s) for s in histogram_steps)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # Defence in depth: even a name that escaped escaping could neither run script nor fetch anything.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>modinspect report: {_e(report.path)}</title><style>{_CSS}</style></head><body>"
        f"<h1>modinspect report: {_e(report.path)}</h1>{_summary(report)}"
        f'<section id="gradient-flow"><h2>Gradient flow</h2>{_gradient_flow(report)}</section>'
        f'<section id="std"><h2>Activation std, module × step</h2>'
        f"{_heatmap(report, 'std-heatmap', 'std', False, 'activation std')}</section>"
        f'<section id="grad"><h2>Gradient norm ‖∇out‖, module × step</h2>'
        f"{_heatmap(report, 'grad-heatmap', 'grad_norm', True, 'gradient norm')}</section>"
        f'<section id="dead"><h2>Dead-unit fraction over steps</h2>{_dead(report)}</section>'
        f'<section id="histograms"><h2>Activation histograms at steps {shown}</h2>'
        f"{_histograms(report, histogram_steps)}</section>"
        "</body></html>\n"
    )
