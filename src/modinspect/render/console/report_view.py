"""`report`'s terminal view: per module, sparklines over the logged steps, then the first bad step."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, replace

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from modinspect.render.console.common import module_name
from modinspect.render.console.fit import Cell, Column, Forms, Name, fit_table, spark_room
from modinspect.render.console.report_params import (
    log_scale_line,
    param_parts,
    range_forms,
    update_verdict,
)
from modinspect.render.console.theme import Themed, flag_style
from modinspect.render.text import (
    TableLayout,
    bad_step_text,
    buckets,
    num,
    percent,
    series_sparkline,
    visible_report,
)
from modinspect.reports import ModuleSeries, RunReport, SeriesScale


def _last(
    values: tuple[float | None, ...],
    fmt: Callable[[float | None], str],
    nan: tuple[bool, ...] = (),
    inf: tuple[bool, ...] = (),
    scale: bool = False,
) -> Text:
    """The last value: a number however large (1.00e+30), `nan` / `inf` where it was not finite, `—` with none.

    With `scale`, the first value before it ('1 → 1.7'): the scale a row's sparkline is drawn on.
    """
    first = next((v for v in values if v is not None), None)
    text = Text(f"{fmt(first)} → " if scale and first is not None else "")
    if nan and nan[-1]:
        return text.append("nan", style="mi.bad")
    if inf and inf[-1]:
        return text.append("inf", style="mi.bad")
    return text.append(fmt(values[-1]) if values else "—")


MIN_SPARK = 16  # cells (steps, or runs of steps) a sparkline keeps before its range column goes
MIN_SPARK_FIRST = 24  # ... and before `first → last` gives way to the last value
SPARK_KEYS = ("std", "grad_norm", "dead")


@dataclass(frozen=True)
class _Shape:
    """Which of the optional columns the module table shows."""

    type: bool
    last: bool
    first: bool  # `first → last` in place of the last value
    range: bool  # min – max, and `log` where the row is log-scaled
    bad_at: bool


def run_renderable(
    report: RunReport, width: int = 200, layout: TableLayout | None = None
) -> RenderableType:
    """Loss and lr, the first bad step once; per module (tree order) sparklines of std, ‖∇out‖ and dead fraction.

    The three sparklines share what the other columns leave of `width` (one cell per step, or per run of
    steps). Beside each, as width allows: its last value (from 90 columns), its range `min – max` with a
    `log` tag where the row is drawn on a log scale (where 16 cells remain), `first → last` (from 150
    columns, where 24 remain); the type from 100 columns. The table is laid out by fit_table: a column the
    same on every row (an empty 'dead') moves above it; 'bad at' per row only with --wide or --columns.
    Then the parameter tensors' update ratios, and the first bad step, explained.
    """
    report = visible_report(report)
    report = replace(report, modules=tree_order(report.modules))
    wide = layout is not None and layout.wide
    chosen = layout is not None and layout.columns is not None
    names = [Name(m.name, tree=True) for m in report.modules]
    steps = len(report.steps)
    if wide:
        shape, spark_w = _Shape(True, True, True, True, True), steps
    else:
        for shape, need in _shapes(width, chosen):
            spark_w = _spark_room(report, names, shape, width, layout)
            if len(buckets(steps, spark_w)) >= min(steps, need):
                break
    columns, rows = _run_table(report, names, spark_w, shape)
    # 35,000 modules: FastTable writes them in about a second, where rich's Table took 22 s
    fitted = fit_table(columns, rows, width, layout)
    return Themed(
        Group(
            _run_header(report, spark_w, width, not shape.bad_at),
            *log_scale_line(_untagged_logs(report, shape, layout), width),
            *fitted.parts(width),
            *param_parts(report, width, layout),
            _run_verdict(report),
        )
    )


def _untagged_logs(report: RunReport, shape: _Shape, layout: TableLayout | None) -> list[str]:
    """'head std', 'fc1 ‖∇out‖': the log-scaled sparklines no range column beside them tags `log`."""
    chosen = layout.columns if layout is not None and layout.columns is not None else None
    rows = []
    for title, key, attr in (
        ("std", "std", "std_scale"),
        ("‖∇out‖", "grad_norm", "grad_norm_scale"),
    ):
        tagged = shape.range and (
            chosen is None or f"{key}_range" in {c.strip().lower() for c in chosen}
        )
        if tagged or (chosen is not None and key not in {c.strip().lower() for c in chosen}):
            continue
        rows += [
            f"{module_name(m.name)} {title}"
            for m in report.modules
            if getattr(m, attr) is not None and getattr(m, attr).log
        ]
    return rows


def _shapes(width: int, chosen: bool) -> list[tuple[_Shape, int]]:
    """The layouts to try, most shown first, each with the sparkline cells it needs left (0: the last resort)."""
    if chosen:  # --columns picks among every column; nothing moves above the table
        return [(_Shape(True, True, width >= 150, True, True), 0)]
    shapes = []
    if width >= 150:
        shapes.append((_Shape(True, True, True, True, False), MIN_SPARK_FIRST))
    if width >= 100:
        shapes.append((_Shape(True, True, False, True, False), MIN_SPARK))
    shapes.append((_Shape(width >= 100, width >= 90, width >= 150, False, False), 0))
    return shapes


def _spark_room(
    report: RunReport, names: list[Name], shape: _Shape, width: int, layout: TableLayout | None
) -> int:
    """The cells each sparkline gets in `shape`: what the other columns (those left in the table) leave."""
    columns, rows = _run_table(report, names, 0, shape)  # 0: the sparklines left empty, not drawn
    # the dead column moves above the table where no module has a dead fraction (no ReLU-family module)
    no_relu = all(v is None for m in report.modules for v in m.dead_fraction)
    dropped = ("dead",) if no_relu and len(report.modules) > 1 else ()
    return spark_room(columns, rows, width, layout, SPARK_KEYS, len(report.steps), dropped)


def tree_order(modules: tuple[ModuleSeries, ...]) -> tuple[ModuleSeries, ...]:
    """The modules in the tree's order: each under its parent, siblings in the order the log first had them.

    A module first logged late (never called until then) is listed under its parent, not at the end.
    """
    first: dict[str, int] = {}
    for i, m in enumerate(modules):
        parts = m.name.split(".") if m.name else []
        for k in range(1, len(parts) + 1):
            first.setdefault(".".join(parts[:k]), i)

    def key(m: ModuleSeries) -> tuple[int, ...]:
        parts = m.name.split(".") if m.name else []
        return tuple(first[".".join(parts[:k])] for k in range(1, len(parts) + 1))

    return tuple(sorted(modules, key=key))


def _run_table(
    report: RunReport, names: list[Name], spark_w: int, shape: _Shape
) -> tuple[list[Column], list[list[Cell]]]:
    """The run table's columns and rows, each sparkline `spark_w` cells wide."""
    columns = [Column("module", kind="name")]
    if shape.type:
        columns.append(Column("type", kind="text", style="mi.type"))
    for title, key in (("std", "std"), ("‖∇out‖", "grad_norm"), ("dead", "dead")):
        # Sparklines are scaled per row: the same shape on every row is no shared value, but no dead fraction is.
        no_relu = (("—", "no ReLU-family modules"),) if key == "dead" else ()
        columns.append(
            Column(
                title,
                kind="text",
                style="mi.spark",
                key=key,
                shared=(("", "no ReLU-family modules"),) if key == "dead" else (),
                lift=key == "dead",
            )
        )
        if shape.last:
            last = "first → last" if shape.first else "last"
            columns.append(Column(last, key=f"{key}_last", about=f"{last} {title}", shared=no_relu))
        if shape.range:
            columns.append(
                Column("range", key=f"{key}_range", about=f"{title} range", shared=no_relu)
            )
    if shape.bad_at:
        columns.append(
            Column(
                "bad at",
                kind="text",
                justify="right",
                key="bad_at",
                shared=(("—", "no NaN/Inf in any module"),),
            )
        )
    origin = report.first_bad
    rows: list[list[Cell]] = []
    for m, name in zip(report.modules, names, strict=True):
        mark = " ◀" if origin is not None and origin.module == m.name else ""
        label = replace(
            name,
            mark=mark,
            style="mi.bad" if m.first_bad_step is not None else "",
            mark_style="mi.bad",
        )
        cells: list[Cell] = [label, Text(m.type)] if shape.type else [label]
        for spark, last_value, scale in _metrics(m, spark_w, shape.first):
            cells.append(spark)
            if shape.last:
                cells.append(last_value)
            if shape.range:
                cells.append(scale)
        if shape.bad_at:
            cells.append(
                Text(
                    "—" if m.first_bad_step is None else str(m.first_bad_step),
                    style="mi.bad" if m.first_bad_step is not None else "mi.muted",
                )
            )
        rows.append(cells)
    return columns, rows


def _metrics(m: ModuleSeries, spark_w: int, first: bool) -> list[tuple[Cell, Cell, Cell]]:
    """(sparkline, last value, range) of the std, ‖∇out‖ and dead fraction of one module.

    '×' marks a NaN step and '↑' an overflow: a std logged as null over a finite output (its sum of squares
    overflowed), a gradient with Inf but no NaN or a gradient norm that overflowed. Without the per-step NaN
    flags (a report built by hand) a non-finite gradient is marked '×'. `spark_w` 0: the sparklines left
    empty (the other columns being measured).
    """
    grad_nan = m.grad_nan or m.grad_nonfinite
    grad_inf = _either(m.grad_nonfinite, m.grad_nan, keep_only_first=True) if m.grad_nan else ()
    grad_inf = _either(grad_inf, m.grad_overflow) if grad_inf else grad_inf
    std_log = m.std_scale is not None and m.std_scale.log
    grad_log = m.grad_norm_scale is not None and m.grad_norm_scale.log
    sparks: list[Cell] = ["", "", ""]
    if spark_w:
        dead = series_sparkline(m.dead_fraction, (), spark_w, lo=0.0, hi=1.0)
        sparks = [
            series_sparkline(m.std, m.nonfinite, spark_w, log=std_log, over=m.std_overflow),
            Text(
                series_sparkline(m.grad_norm, grad_nan, spark_w, log=grad_log, over=grad_inf),
                style=flag_style(m.flags),
            ),
            dead if dead.strip() else "",  # all blank: no value
        ]
    lasts = [
        _last(m.std, num, m.nonfinite, m.std_overflow, first),
        _last(m.grad_norm, num, m.grad_nan, grad_inf or m.grad_nonfinite, first),
        _last(m.dead_fraction, percent, scale=first),
    ]
    ranges = [
        _range(m.std_scale),
        _range(m.grad_norm_scale),
        _range(m.dead_fraction_scale, percent),
    ]
    return list(zip(sparks, lasts, ranges, strict=True))


def _range(scale: SeriesScale | None, fmt: Callable[[float | None], str] | None = None) -> Cell:
    """'1.00e-04 – 1000 log': a series' min and max over the run (fewer digits where narrow), '—' with none.

    One value where min and max are the same ('0.001'): the series was flat.
    """
    if scale is None:
        return "—"
    return Forms(range_forms(scale, fmt))


def _either(
    a: tuple[bool, ...], b: tuple[bool, ...], keep_only_first: bool = False
) -> tuple[bool, ...]:
    """Step by step `a or b`; with `keep_only_first`, `a and not b` (Inf: non-finite but no NaN)."""
    if not b:
        return a
    if keep_only_first:
        return tuple(x and not y for x, y in zip(a, b, strict=False))
    return tuple(x or y for x, y in zip(a, b, strict=False))


def _run_header(report: RunReport, spark_w: int, width: int = 200, first_bad: bool = False) -> Text:
    h = report.header
    text = Text()
    text.append(report.path, style="mi.source")
    ranks = f", {h.world_size} ranks" if h.world_size > 1 else ""
    text.append(
        f"  ({h.schema}: {h.model} on {h.device}{ranks}, every {h.every} steps)", style="mi.muted"
    )
    try:
        started = datetime.datetime.fromtimestamp(h.started, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
    except (OverflowError, OSError, ValueError):  # a header's clock can be anything
        started = f"at unix time {h.started}"
    steps = report.steps
    span = f"steps {steps[0]} … {steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    text.append(f"\n{len(steps)} logged step(s), {span}, started {started}", style="mi.muted")
    text.append(_curve("loss", report.loss, spark_w, width))
    text.append(_curve("lr", report.lr, spark_w, width))
    if first_bad and report.first_bad is not None:
        # Once for the run (the table's ◀ marks where it came from); the explanation follows the table.
        text.append(f"\nfirst bad step {report.first_bad.step}", style="mi.bad")
    return text


def _curve(label: str, values: tuple[float | None, ...], spark_w: int, width: int) -> Text:
    """'\nloss  █▇▆▅▃▂▁××  first 2 · last 1.13 · min 1.13 · max 2': nothing when no step logged a value.

    A null in a series the run logs was not finite (the schema writes NaN/Inf as null): '×' in the
    sparkline, and `nan/inf` as the last value when the last step's was.
    """
    finite = [v for v in values if v is not None]
    if not finite:
        return Text()
    text = Text(f"\n{label:<4}  ")
    text.append(
        series_sparkline(values, tuple(v is None for v in values), spark_w), style="mi.spark"
    )
    last = num(values[-1]) if values[-1] is not None else "nan/inf"
    numbers = (
        f"first {num(finite[0])} · last {last} · min {num(min(finite))} · max {num(max(finite))}"
    )
    # Where the line would wrap, the numbers go on their own line under the sparkline.
    gap = "  " if cell_len(text.plain) - 1 + 2 + len(numbers) <= width else "\n      "
    text.append(gap + numbers, style="mi.muted")
    return text


def _run_verdict(report: RunReport) -> Text:
    bad = report.first_bad
    if bad is None:
        text = Text(f"\nNo NaN/Inf in {len(report.steps)} logged step(s).", style="mi.good")
    else:
        text = Text("\n" + bad_step_text(bad), style="mi.bad")
        if bad.explanation:
            text.append(f"\nBefore it: {bad.explanation}.", style="mi.warn")
    text.append(update_verdict(report))
    for flag, words in (("exploding-grad", "exploding"), ("vanishing-grad", "vanishing")):
        flagged = [module_name(m.name) for m in report.modules if flag in m.flags]
        if flagged:
            text.append(
                f"\nGradient flow: {words} mean ‖∇out‖ at {', '.join(flagged[:5])}"
                + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "")
                + ".",
                style="mi.warn",
            )
    return text
