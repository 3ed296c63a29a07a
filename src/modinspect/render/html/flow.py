"""The gradient-flow chart: mean and max gradient norm per module, as bars on a log axis (unchanged)."""

from __future__ import annotations

import math

from modinspect.render.html.svg import e, name
from modinspect.render.text import num
from modinspect.reports import RunReport


def _decades(values: list[float]) -> tuple[float, float]:
    vals = [math.log10(v) for v in values if v > 0]
    return (min(vals), max(vals)) if vals else (0.0, 1.0)


def _position(value: float, lo: float, hi: float) -> float:
    value = math.log10(value) if value > 0 else lo
    return 0.5 if hi - lo <= 1e-12 else (value - lo) / (hi - lo)


def gradient_flow(report: RunReport, run: str = "") -> str:
    """Mean and max ‖∇out‖ per module on a log axis, in execution order: the chart users liked, kept as it was."""
    rows = [
        m for m in report.modules if m.grad_norm_mean is not None and m.grad_norm_max is not None
    ]
    if not rows:
        return '<p class="note">No gradient norms in this log (forward only).</p>'
    values = [v for m in rows for v in (m.grad_norm_mean, m.grad_norm_max) if v is not None]
    lo, hi = _decades(values)
    lo, hi = math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)
    bw, left, top, height = 22, 60, 10, 200
    width = left + len(rows) * (bw + 8) + 20
    labels = min(160, 8 + 6 * max(len(name(m.name)) for m in rows))  # room for the slanted names
    out = [
        f'<svg data-chart="gradient-flow" data-run="{e(run)}" width="{width}" height="{height + labels}" role="img" '
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
            h = max(1.0, _position(value, lo, hi) * height)
            dx = 0 if kind == "max" else 4
            out.append(
                f'<rect class="bar {kind}" data-module="{e(m.name)}" x="{x + dx}" y="{top + height - h:.1f}" '
                f'width="{w}" height="{h:.1f}"><title>{e(name(m.name))}: {kind} ‖∇out‖ {num(value)}'
                f"</title></rect>"
            )
        out.append(
            f'<text transform="translate({x + bw / 2:.1f},{top + height + 8}) rotate(55)">'
            f"{e(name(m.name))}</text>"
        )
    out.append("</svg>")
    legend = (
        '<p class="meta"><span style="color:#1f77b4">■</span> mean and <span style="color:#aec7e8">■</span> '
        "max over the logged steps of the gradient norm w.r.t. each module's output (log scale), in "
        "execution order.</p>"
    )
    return "".join(out) + legend
