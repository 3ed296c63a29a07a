"""RunReport(s) -> one self-contained HTML page: inline SVG and CSS, no script, no network.

The page: each run's summary and first bad step; loss, learning rate, update ratio ‖Δw‖/‖w‖ per parameter
tensor and steps/s over steps (smoothing toggled by a checkbox, in CSS); gradient flow; module × step
heatmaps of std and ‖∇out‖ on a shared log colour scale with a colour bar; dead fractions; activation
histograms over time as ridgelines. Two runs share every axis: curves overlaid (run B dashed), one heatmap
and one ridgeline per run side by side.

Every chart is an `<svg data-chart=...>` whose marks carry a class (`line`, `point`, `cell`, `bin`, `bar`)
and, where they stand for a logged value, that value: a test reads them back against the log. Everything
from the log is escaped (svg.e), and the Content-Security-Policy forbids script and every fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import PurePath

from modinspect.render.html import heatmap as heat
from modinspect.render.html.curves import Chart, Curve, line_chart
from modinspect.render.html.flow import gradient_flow
from modinspect.render.html.histograms import MAX_ROWS, ridgeline
from modinspect.render.html.svg import LINE_COLOURS, RUN_DASH, Scale, e, finite, name
from modinspect.render.text import bad_step_text
from modinspect.reports import ModuleSeries, RunReport

__all__ = ["run_html", "runs_html"]

MAX_CURVES = 40  # update-ratio and dead-fraction curves per run; past it, per layer or the largest
MAX_RIDGELINES = 120  # modules with a ridgeline (a page of a few MB for any model)

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 6px; }
h3 { font-size: 13px; margin: 6px 0 2px; font-weight: 600; }
.meta, .note { color: #666; } .bad { color: #b00; font-weight: 600; } .ok { color: #070; font-weight: 600; }
svg { display: block; margin: 4px 0; overflow: visible; } svg text { font-size: 11px; fill: #333; }
.axis { stroke: #999; fill: none; } .grid { stroke: #eee; } .zero { stroke: #bbb; stroke-dasharray: 2 2; }
.line { fill: none; stroke-width: 1.6; } .point { stroke: none; fill-opacity: 0; } .point.shown { fill-opacity: 1; }
.nonfinite { stroke: #d62728; stroke-width: 2; fill: none; }
.guide { stroke: #555; stroke-dasharray: 5 4; } .guide-label { fill: #555; }
.band { fill: #2ca02c; fill-opacity: .07; } .event { stroke: #d62728; stroke-dasharray: 3 3; }
.bar.mean { fill: #1f77b4; } .bar.max { fill: #aec7e8; }
.cell.novalue, .state.novalue { stroke: #ccc; stroke-width: .5; }
.ridge { stroke: #fff; stroke-width: 1; fill-opacity: .9; } .bin { fill: transparent; }
.panels { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.curves .panel { width: 580px; }
.legend { font-size: 12px; color: #444; max-width: 600px; }
.key { margin-right: 12px; white-space: nowrap; }
.swatch { display: inline-block; width: 18px; height: 0; border-top: 2px solid; margin-right: 4px;
  vertical-align: middle; }
.swatch.dashed { border-top-style: dashed; }
#smooth:checked ~ .curves .raw { stroke-opacity: .3; } #smooth:not(:checked) ~ .curves .ema { display: none; }
.row-range { display: none; fill: #666; }
.rows:checked ~ .panels .cell.value { fill: var(--row); } .rows:checked ~ .panels .row-range { display: inline; }
.rows:checked ~ .panels .colour-bar text { display: none; }
"""


def run_html(report: RunReport, histogram_steps: tuple[int, ...] = ()) -> str:
    """One run's page; histograms at `histogram_steps` (empty: up to 12 steps spread over the run)."""
    return runs_html((report,), histogram_steps)


def runs_html(runs: Sequence[RunReport], histogram_steps: tuple[int, ...] = ()) -> str:
    """One page for one run or two on the same axes; histograms at `histogram_steps` (empty: spread)."""
    labels = _labels(runs)
    title = " vs ".join(e(r.path) for r in runs)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # Defence in depth: even a name that escaped escaping could neither run script nor fetch anything.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>modinspect report: {title}</title><style>{_CSS}</style></head><body>"
        f"<h1>modinspect report: {title}</h1>"
        + "".join(_summary(r, label) for r, label in zip(runs, labels, strict=True))
        + f'<section id="curves"><h2>Training curves</h2>{_curves(runs, labels)}</section>'
        + _section("gradient-flow", "Gradient flow", runs, labels, gradient_flow)
        + _heatmaps(
            runs, labels, "std", "std-heatmap", "Activation std, module × step", "activation std"
        )
        + _heatmaps(
            runs,
            labels,
            "grad_norm",
            "grad-heatmap",
            "Gradient norm ‖∇out‖, module × step",
            "gradient norm",
        )
        + f'<section id="dead"><h2>Dead-unit fraction over steps</h2>{_dead(runs, labels)}</section>'
        + f'<section id="histograms"><h2>Activation histograms over steps</h2>'
        f"{_histograms(runs, labels, histogram_steps)}</section>"
        "</body></html>\n"
    )


def _labels(runs: Sequence[RunReport]) -> list[str]:
    """'' for one run; 'A', 'B' (with the file names where they differ) for two."""
    if len(runs) == 1:
        return [""]
    names = [PurePath(r.path).name for r in runs]
    if len(set(names)) == len(names):
        return [f"{chr(65 + k)} ({n})" for k, n in enumerate(names)]
    return [chr(65 + k) for k in range(len(runs))]


def _summary(report: RunReport, label: str) -> str:
    h, bad = report.header, report.first_bad
    head = f"<h3>{e(label.split(' ')[0])}: {e(report.path)}</h3>" if label else ""
    parts = [
        head,
        f'<p class="meta">{e(h.schema)}: {e(h.model)} on {e(h.device)}, {h.world_size} rank(s), every '
        f"{h.every} steps; {len(report.steps)} logged step(s), {report.steps[0]} … {report.steps[-1]}.</p>",
    ]
    if bad is None:
        parts.append(f'<p class="ok">No NaN/Inf in {len(report.steps)} logged step(s).</p>')
    else:
        parts.append(f'<p class="bad">{e(bad_step_text(bad))}</p>')
        if bad.explanation:
            parts.append(f'<p class="explain">Before it: {e(bad.explanation)}.</p>')
    parts += [f'<p class="note">note: {e(n)}</p>' for n in report.notes]
    return "".join(parts)


def _prefix(label: str, text: str) -> str:
    return f"{label.split(' ')[0]} · {text}" if label else text


def _curves(runs: Sequence[RunReport], labels: list[str]) -> str:
    loss, lr, rate, ratio = [], [], [], []
    notes: set[str] = set()
    for k, (r, label) in enumerate(zip(runs, labels, strict=True)):
        colour, dash = LINE_COLOURS[k], RUN_DASH[k % 2]
        if any(v is not None for v in r.loss):
            bad = tuple(v is None for v in r.loss)  # the writer logs a NaN/Inf loss as null
            loss.append(Curve(label or "loss", r.steps, r.loss, colour, dash, bad))
        if r.lr:
            lr.append(
                Curve(label or "lr", r.steps, r.lr, colour, dash, tuple(v is None for v in r.lr))
            )
        speed = _steps_per_second(r)
        if speed is not None:
            rate.append(Curve(label or "steps/s", r.steps, speed, colour, dash))
        series, note = _ratio_series(r)
        notes.add(note)
        for j, (what, values) in enumerate(series):
            ratio.append(
                Curve(
                    _prefix(label, what), r.steps, values, LINE_COLOURS[j % len(LINE_COLOURS)], dash
                )
            )
    events = tuple(
        (r.first_bad.step, _prefix(lb, "first bad step"))
        for r, lb in zip(runs, labels, strict=True)
        if r.first_bad
    )
    panels = [
        _panel(
            "Loss",
            line_chart(Chart("loss", "loss over steps", "loss", smooth=True, events=events), loss),
        ),
        _panel(
            "Learning rate (first param group)",
            line_chart(Chart("lr", "learning rate over steps", "lr", events=events), lr),
        ),
        _panel(
            "Update ratio ‖Δw‖/‖w‖ per parameter tensor",
            line_chart(
                Chart(
                    "update-ratio",
                    "update ratio per parameter tensor over steps",
                    "‖Δw‖/‖w‖",
                    log=True,
                    guide=1e-3,
                    band=(1e-4, 1e-1),
                    events=events,
                ),
                ratio,
            ),
            " ".join(
                [
                    "Dashed: 1e-3, where a healthy update usually sits; shaded: 1e-4 to 1e-1.",
                    *sorted(notes),
                ]
            ).strip(),
        ),
        _panel(
            "Steps per second",
            line_chart(
                Chart("steps-per-second", "training speed over steps", "steps/s", smooth=True), rate
            ),
            "Between consecutive logged steps, from the log's time stamps.",
        ),
    ]
    toggle = (
        '<input type="checkbox" id="smooth" checked> <label for="smooth">smooth the loss and speed '
        "curves (EMA 0.6; the raw values stay, faint)</label>"
    )
    return f'{toggle}<div class="curves panels">{"".join(panels)}</div>'


def _largest(
    series: list[tuple[str, tuple[float | None, ...]]], most: int
) -> list[tuple[str, tuple[float | None, ...]]]:
    """The `most` series with the largest values, in their own order."""
    top = sorted(
        range(len(series)), key=lambda i: max(finite(series[i][1]), default=0.0), reverse=True
    )
    keep = set(top[:most])
    return [s for i, s in enumerate(series) if i in keep]


def _ratio_series(r: RunReport) -> tuple[list[tuple[str, tuple[float | None, ...]]], str]:
    """The update-ratio curves: one per parameter tensor, or per layer (its tensors' largest ratio at each
    step) past MAX_CURVES tensors, and the MAX_CURVES largest of those; and a note saying which."""
    series = [
        (p.name, p.update_ratio) for p in r.params if any(v is not None for v in p.update_ratio)
    ]
    if len(series) <= MAX_CURVES:
        return series, ""
    layers: dict[str, list[tuple[float | None, ...]]] = {}
    for what, values in series:
        layers.setdefault(what.rpartition(".")[0] or what, []).append(values)
    grouped = [
        (layer, tuple(max(finite(col), default=None) for col in zip(*values, strict=True)))
        for layer, values in layers.items()
    ]
    note = f"{len(series):,} tensors: one curve per layer, its tensors' largest ratio at each step"
    if len(grouped) > MAX_CURVES:
        note += f"; the {MAX_CURVES} layers with the largest ratios of {len(grouped):,}"
        grouped = _largest(grouped, MAX_CURVES)
    return grouped, note + "."


def _panel(title: str, body: str, note: str = "") -> str:
    tail = f'<p class="note">{note}</p>' if note and not body.startswith('<p class="note">') else ""
    return f'<div class="panel"><h3>{title}</h3>{body}{tail}</div>'


def _steps_per_second(r: RunReport) -> tuple[float | None, ...] | None:
    """Steps per second between each logged step and the one before; None without usable time stamps."""
    out: list[float | None] = [None]
    for i in range(1, len(r.steps)):
        dt = r.times[i] - r.times[i - 1]
        out.append((r.steps[i] - r.steps[i - 1]) / dt if dt > 0 else None)
    return tuple(out) if any(v is not None for v in out) else None


def _section(
    anchor: str,
    title: str,
    runs: Sequence[RunReport],
    labels: list[str],
    chart: Callable[[RunReport, str], str],
) -> str:
    """One chart per run, each under its run's label."""
    body = "".join(
        (f"<h3>{e(label)}</h3>" if label else "") + chart(r, label)
        for r, label in zip(runs, labels, strict=True)
    )
    return f'<section id="{anchor}"><h2>{title}</h2>{body}</section>'


def _heatmaps(
    runs: Sequence[RunReport], labels: list[str], pick: str, chart: str, title: str, what: str
) -> str:
    grids = [heat.grid(r, pick) for r in runs]
    scale = heat.shared_scale(grids)
    maps = "".join(
        '<div class="panel">'
        + (f"<h3>{e(label)}</h3>" if label else "")
        + heat.heatmap(r, g, scale, chart, what, label, pick)
        + "</div>"
        for r, g, label in zip(runs, grids, labels, strict=True)
    )
    shared = " (one scale for both runs)" if len(runs) > 1 else ""
    note = (
        f'<p class="note">Colour: the mean {what} of each cell on a log scale{shared}; hover a cell for '
        "its value.</p>"
    )
    section = "std" if pick == "std" else "grad"
    toggle = (
        f'<input type="checkbox" id="rows-{section}" class="rows"> <label for="rows-{section}">each row on '
        "its own log scale (its range at the right; dark: the row's smallest value, yellow: its largest)"
        "</label>"
    )
    return f'<section id="{section}"><h2>{title}</h2>{note}{toggle}<div class="panels">{maps}</div></section>'


def _dead(runs: Sequence[RunReport], labels: list[str]) -> str:
    curves, more = [], 0
    for k, (r, label) in enumerate(zip(runs, labels, strict=True)):
        rows = [
            (name(m.name), m.dead_fraction)
            for m in r.modules
            if any(v is not None for v in m.dead_fraction)
        ]
        more += max(0, len(rows) - MAX_CURVES)
        for j, (what, values) in enumerate(_largest(rows, MAX_CURVES)):
            curves.append(
                Curve(
                    _prefix(label, what),
                    r.steps,
                    values,
                    LINE_COLOURS[j % len(LINE_COLOURS)],
                    RUN_DASH[k % 2],
                )
            )
    if not curves:
        return '<p class="note">No ReLU-family modules in this log: no dead-unit fractions.</p>'
    spec = Chart(
        "dead-fraction", "dead-unit fraction over steps", "dead fraction", fixed=Scale(0.0, 1.0)
    )
    note = (
        f'<p class="note">The {MAX_CURVES} modules with the largest dead fractions per run; {more:,} '
        "more not drawn.</p>"
        if more
        else ""
    )
    return line_chart(spec, curves) + note


def _common_steps(modules: list[ModuleSeries | None]) -> tuple[int, ...]:
    """Two runs' ridgelines of a module show the same steps: up to MAX_ROWS spread over those both have;
    one run (or none in common): () and each ridgeline spreads its own."""
    present = [m for m in modules if m is not None]
    if len(present) < 2:
        return ()
    common = sorted(set.intersection(*({g.step for g in m.histograms} for m in present)))
    if len(common) <= MAX_ROWS:
        return tuple(common)
    return tuple(
        common[i]
        for i in sorted({round(k * (len(common) - 1) / (MAX_ROWS - 1)) for k in range(MAX_ROWS)})
    )


def _histograms(runs: Sequence[RunReport], labels: list[str], steps: tuple[int, ...]) -> str:
    names = list(dict.fromkeys(m.name for r in runs for m in r.modules if m.histograms))
    if not names:
        return '<p class="note">No histograms in this log.</p>'
    shown = (
        f"at steps {', '.join(map(str, steps))}"
        if steps
        else "at up to 12 steps spread over the run"
    )
    head = [
        f'<p class="note">One row per step ({shown}), the earliest at the top; hover a bin for its count.</p>'
    ]
    out: list[str] = []
    by_run = [{m.name: m for m in r.modules} for r in runs]
    if len(names) > MAX_RIDGELINES:
        head.append(
            f'<p class="note">The first {MAX_RIDGELINES} modules with histograms, of {len(names):,} '
            "(`--json` has them all).</p>"
        )
        names = names[:MAX_RIDGELINES]
    for module in names:
        panels = []
        rows = steps or _common_steps([index.get(module) for index in by_run])
        for index, label in zip(by_run, labels, strict=True):
            m = index.get(module)
            body = ridgeline(m, rows) if m is not None else ""
            title = f"<h3>{e(label)}</h3>" if label else ""
            body = body or '<p class="note">no histogram</p>'
            panels.append(f'<div class="panel">{title}{body}</div>')
        m0 = next(index[module] for index in by_run if module in index)
        out.append(
            f'<div class="hist"><h3>{e(name(module))} <span class="meta">{e(m0.type)}</span></h3>'
            f'<div class="panels">{"".join(panels)}</div></div>'
        )
    return "".join(head) + f'<div class="panels">{"".join(out)}</div>'
