"""`report`'s terminal view: per module, sparklines over the logged steps, then the first bad step."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import replace

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from modinspect.render.console.common import module_name
from modinspect.render.console.fit import Cell, Column, Name, cell_at, fit_table
from modinspect.render.console.theme import Themed, flag_style
from modinspect.render.text import (
    TableLayout,
    bad_step_text,
    num,
    percent,
    series_sparkline,
    visible_report,
)
from modinspect.reports import ModuleSeries, RunReport


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


def run_renderable(
    report: RunReport, width: int = 200, layout: TableLayout | None = None
) -> RenderableType:
    """Loss and lr, the first bad step once; per module (tree order) sparklines of std, ‖∇out‖ and dead fraction.

    The three sparklines share what the other columns leave of `width` (one cell per step, or per run of
    steps); below 100 columns the type goes, below 90 the last values, from 150 each shows first → last.
    The table is laid out by fit_table: a column the same on every row (an empty 'dead') moves above it;
    'bad at' per row only with --wide or --columns. After the table: the first bad step, explained.
    """
    report = visible_report(report)
    report = replace(report, modules=tree_order(report.modules))
    wide = layout is not None and layout.wide
    show_type, show_last = width >= 100 or wide, width >= 90 or wide
    scale = width >= 150 or wide  # first → last beside each sparkline
    last_w = 21 if scale else 9
    names = [Name(m.name, tree=True) for m in report.modules]
    name_w = min(max((cell_len(n.full()) for n in names), default=8) + 2, 48)  # + " ◀"
    type_w = min(max((len(m.type) for m in report.modules), default=4), 24)
    # Each column is followed by 3 cells (padding, SIMPLE_HEAD's blank divider, padding); a last value takes ≤ 9.
    fixed = (
        name_w
        + 3
        + (type_w + 3 if show_type else 0)
        + (3 * (last_w + 3) if show_last else 0)
        + 3 * 3
        + 6
    )
    chosen = layout is not None and layout.columns is not None
    # The first bad step is said once, above the table; 'bad at' per row only when asked for (--wide, --columns).
    bad_at = wide or chosen
    fixed -= 0 if bad_at else 9  # 'bad at' and its padding
    spark_w = len(report.steps) if wide else max(4, min(len(report.steps), (width - fixed) // 3))
    columns, rows = _run_table(report, names, spark_w, show_type, show_last, bad_at, scale)
    if not wide and not chosen and len(rows) > 1:
        # What moves above the table ('bad at 300', the last values every row shares, an empty dead column)
        # leaves its width to the sparklines.
        same = [
            i
            for i, c in enumerate(columns)
            if c.lift and len({cell_at(r[i], 0) for r in rows}) == 1
        ]
        freed = sum(
            last_w + 3
            if columns[i].key.endswith("_last")
            else 9
            if columns[i].key == "bad_at"
            else 3
            for i in same
        )
        sparks = 3 - sum(columns[i].key == "dead" for i in same)
        wider = max(4, min(len(report.steps), (width - fixed + freed) // sparks))
        if wider != spark_w:
            spark_w = wider
            columns, rows = _run_table(report, names, spark_w, show_type, show_last, bad_at, scale)
    # 35,000 modules: FastTable writes them in about a second, where rich's Table took 22 s
    fitted = fit_table(columns, rows, width, layout)
    return Themed(
        Group(
            _run_header(report, spark_w, width, not bad_at),
            *fitted.parts(width),
            _run_verdict(report),
        )
    )


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
    report: RunReport,
    names: list[Name],
    spark_w: int,
    show_type: bool,
    show_last: bool,
    bad_at: bool = True,
    scale: bool = False,
) -> tuple[list[Column], list[list[Cell]]]:
    """The run table's columns and rows, each sparkline `spark_w` cells wide."""
    columns = [Column("module", kind="name")]
    if show_type:
        columns.append(Column("type", kind="text", style="mi.type"))
    grad_title = "‖∇out‖ (log)" if spark_w >= 12 else "‖∇out‖"
    for title, key in (("std", "std"), (grad_title, "grad_norm"), ("dead", "dead")):
        # Sparklines are scaled per row: the same shape on every row is no shared value, but no dead fraction is.
        shared = (("", "no ReLU-family modules"),) if key == "dead" else ()
        columns.append(
            Column(title, kind="text", style="mi.spark", key=key, shared=shared, lift=key == "dead")
        )
        if show_last:
            about = f"{'first → last' if scale else 'last'} {title.removesuffix(' (log)')}"
            columns.append(
                Column(
                    "first → last" if scale else "last",
                    key=f"{key}_last",
                    about=about,
                    shared=(("—", "no ReLU-family modules"),) if key == "dead" else (),
                )
            )
    if bad_at:
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
        cells: list[Cell] = [label, Text(m.type)] if show_type else [label]
        for spark, last in (
            (
                # A std over NaN/Inf is NaN; one logged as null over a finite output overflowed (inf).
                series_sparkline(m.std, _either(m.nonfinite, m.std_overflow), spark_w),
                _last(m.std, num, m.nonfinite, m.std_overflow, scale),
            ),
            (
                Text(
                    series_sparkline(m.grad_norm, m.grad_nonfinite, spark_w, log=True),
                    style=flag_style(m.flags),
                ),
                _last(
                    m.grad_norm,
                    num,
                    m.grad_nan,
                    _either(m.grad_nonfinite, m.grad_nan, keep_only_first=True),
                    scale,
                ),
            ),
            (
                series_sparkline(
                    m.dead_fraction, (), spark_w, lo=0.0, hi=1.0
                ).strip()  # all blank: no value
                and series_sparkline(m.dead_fraction, (), spark_w, lo=0.0, hi=1.0),
                _last(m.dead_fraction, percent, scale=scale),
            ),
        ):
            cells += [spark, last] if show_last else [spark]
        if bad_at:
            cells.append(
                Text(
                    "—" if m.first_bad_step is None else str(m.first_bad_step),
                    style="mi.bad" if m.first_bad_step is not None else "mi.muted",
                )
            )
        rows.append(cells)
    return columns, rows


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
