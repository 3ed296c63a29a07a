"""`report`'s parameter section: per parameter tensor its last ‖w‖ and its update ratio ‖Δw‖/‖w‖ over the run.

A tensor whose update ratio left UPDATE_RATIO_BAND at a logged step is flagged (too slow below it, too fast
above it, with the first such step). With more than MAX_PARAM_ROWS tensors only the flagged ones are
listed, and a count of the rest (--wide lists every one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import RenderableType
from rich.text import Text

from modinspect.render.console.fit import Cell, Column, Forms, Name, fit_table, spark_room
from modinspect.render.text import (
    TableLayout,
    buckets,
    num,
    num_forms,
    series_sparkline,
    wrap_words,
)
from modinspect.reports import (
    UPDATE_RATIO_BAND,
    ModuleSeries,
    ParamSeries,
    RunReport,
    SeriesScale,
)

MAX_PARAM_ROWS = 12  # more tensors than this: the flagged ones and a count of the rest
MIN_SPARK = 16  # cells the sparkline keeps before the range column goes


def band_text() -> str:
    """'[1e-4, 0.1]': the update-ratio band as the report says it."""
    low, high = UPDATE_RATIO_BAND
    return f"[{_short(low)}, {_short(high)}]"


def _short(value: float) -> str:
    text = num(value, 2)
    return text.replace(".0e", "e")  # 1.0e-4 -> 1e-4


def param_order(
    modules: Sequence[ModuleSeries], params: Sequence[ParamSeries]
) -> tuple[ParamSeries, ...]:
    """The parameter tensors in the tree's order: under their module (in `modules`' order), each module's own first.

    Modules the log has no series of take their place after their parent's known children, in the
    parameters' own order.
    """
    first: dict[str, int] = {}
    for name in [m.name for m in modules] + [p.name.rpartition(".")[0] for p in params]:
        parts = name.split(".") if name else []
        for k in range(1, len(parts) + 1):
            first.setdefault(".".join(parts[:k]), len(first))
    order = {p.name: i for i, p in enumerate(params)}

    def key(p: ParamSeries) -> tuple[int, ...]:
        module = p.name.rpartition(".")[0]
        parts = module.split(".") if module else []
        path = tuple(1 + first[".".join(parts[:k])] for k in range(1, len(parts) + 1))
        return (*path, 0, order[p.name])

    return tuple(sorted(params, key=key))


@dataclass(frozen=True)
class _Shape:
    last: bool
    range: bool


def param_parts(
    report: RunReport, width: int, layout: TableLayout | None = None
) -> list[RenderableType]:
    """The section's heading, its table (fitted to `width`) and what it left out; nothing without parameters."""
    if not report.params:
        return []
    wide = layout is not None and layout.wide
    params = param_order(report.modules, report.params)
    flagged = [p for p in params if _flagged(p)]
    collapsed = not wide and len(params) > MAX_PARAM_ROWS
    shown = flagged[:MAX_PARAM_ROWS] if collapsed else list(params)
    heading = Text(
        f"\nparameters: update ratio ‖Δw‖/‖w‖ per logged step, flagged outside {band_text()} "
        f"({len(flagged)} of {len(params)} flagged)",
        style="mi.heading",
    )
    parts: list[RenderableType] = [heading]
    steps = len(report.steps)
    # The module table's --columns name its columns, not these.
    plain = TableLayout(wide=wide)
    if shown:
        if wide:
            shape, spark_w = _Shape(True, True), steps
        else:
            for shape, need in ((_Shape(True, True), MIN_SPARK), (_Shape(width >= 90, False), 0)):
                columns, rows = _param_table(shown, 0, shape)  # 0: sparklines left empty
                spark_w = spark_room(columns, rows, width, plain, ("update_ratio",), steps)
                if len(buckets(steps, spark_w)) >= min(steps, need):
                    break
        columns, rows = _param_table(shown, spark_w, shape)
        if not shape.range:
            logs = [
                f"{p.name} ‖Δw‖/‖w‖"
                for p in shown
                if p.update_ratio_scale is not None and p.update_ratio_scale.log
            ]
            parts += log_scale_line(logs, width)
        parts += fit_table(columns, rows, width, plain).parts(width)
    listed = {p.name for p in shown}
    rest = [p for p in params if p.name not in listed]
    if rest:
        more_flagged = sum(_flagged(p) for p in rest)
        words = []
        if len(rest) > more_flagged:
            n = len(rest) - more_flagged
            count = f"{n} more" if flagged else f"all {n}"
            words.append(f"{count} within {band_text()} at every logged step")
        if more_flagged:
            words.append(f"{more_flagged} more flagged")
        parts.append(Text(f"{' · '.join(words)} (--wide lists them)", style="mi.muted"))
    return parts


def log_scale_line(rows: Sequence[str], width: int) -> list[Text]:
    """'log scale (values spanning 100× or more): head std · fc1 ‖∇out‖': the log-scaled rows, where no
    range column tags them; nothing where there is none."""
    if not rows:
        return []
    more = f" and {len(rows) - 4} more" if len(rows) > 4 else ""
    line = f"log scale (values spanning 100× or more): {' · '.join(rows[:4])}{more}"
    return [Text("\n".join(wrap_words(line, width, 2)), style="mi.muted")]


def update_verdict(report: RunReport) -> Text:
    """'\nUpdate ratio too fast (above 0.1) from step 10: ln.bias; from step 290: fc2.weight.': one line per way
    out of the band, the tensors grouped by the step each first left it (five names at most)."""
    low, high = UPDATE_RATIO_BAND
    text = Text()
    params = param_order(report.modules, report.params)
    for words, attr in (
        (f"too fast (above {_short(high)})", "too_fast_at"),
        (f"too slow (below {_short(low)})", "too_slow_at"),
    ):
        hits = [(getattr(p, attr), p.name) for p in params if getattr(p, attr) is not None]
        if not hits:
            continue
        ordered = sorted(hits, key=lambda hit: hit[0])
        groups: list[tuple[int, list[str]]] = []
        for step, name in ordered[:5]:
            if groups and groups[-1][0] == step:
                groups[-1][1].append(name)
            else:
                groups.append((step, [name]))
        more = f" and {len(ordered) - 5} more" if len(ordered) > 5 else ""
        said = "; ".join(f"from step {step}: {', '.join(names)}" for step, names in groups)
        text.append(f"\nUpdate ratio {words} {said}{more}.", style="mi.warn")
    return text


def _flagged(p: ParamSeries) -> bool:
    return p.too_slow_at is not None or p.too_fast_at is not None


def flag_text(p: ParamSeries) -> str:
    """'too fast at 32', 'too slow at 2, too fast at 32', '' where the update ratio kept within the band."""
    words = []
    for step, what in sorted(
        (s, w)
        for s, w in ((p.too_slow_at, "too slow"), (p.too_fast_at, "too fast"))
        if s is not None
    ):
        words.append(f"{what} at {step}")
    return ", ".join(words)


def _param_table(
    params: Sequence[ParamSeries], spark_w: int, shape: _Shape
) -> tuple[list[Column], list[list[Cell]]]:
    columns = [
        Column("parameter", kind="name"),
        Column("‖w‖", key="norm", about="last ‖w‖"),
        Column("‖Δw‖/‖w‖", kind="text", style="mi.spark", key="update_ratio", lift=False),
    ]
    if shape.last:
        columns.append(Column("last", key="update_ratio_last", about="last ‖Δw‖/‖w‖"))
    if shape.range:
        columns.append(Column("range", key="update_ratio_range", about="‖Δw‖/‖w‖ range"))
    flags = any(_flagged(p) for p in params)  # none flagged: the heading says so, no empty column
    if flags:
        columns.append(
            Column("flag", kind="text", style="mi.warn", key="flag", about="update ratio")
        )
    rows: list[list[Cell]] = []
    for p in params:
        flag = flag_text(p)
        scale = p.update_ratio_scale
        cells: list[Cell] = [
            Name(p.name, style="mi.warn" if flag else ""),
            _last(p.norm, p.update_nonfinite),
            series_sparkline(
                p.update_ratio,
                p.update_nonfinite,
                spark_w,
                log=scale is not None and scale.log,
            )
            if spark_w
            else "",
        ]
        if shape.last:
            cells.append(_last(p.update_ratio, p.update_nonfinite))
        if shape.range:
            cells.append("—" if scale is None else Forms(range_forms(scale)))
        rows.append([*cells, flag] if flags else cells)
    return columns, rows


def range_forms(
    scale: SeriesScale, fmt: Callable[[float | None], str] | None = None
) -> tuple[str, ...]:
    """'1.00e-04 – 1000 log' at 4, 3 and 2 significant digits (`fmt`: one form), the `log` tag where log-scaled."""
    tag = " log" if scale.log else ""
    formats = [fmt] if fmt is not None else [lambda v, d=d: num(v, d) for d in (4, 3, 2)]
    forms = (
        f(scale.min) if scale.min == scale.max else f"{f(scale.min)} – {f(scale.max)}"
        for f in formats
    )
    return tuple(dict.fromkeys(form + tag for form in forms))


def _last(values: tuple[float | None, ...], nonfinite: tuple[bool, ...]) -> Cell:
    """The last value (fewer digits where narrow), 'nan/inf' where it was not finite, '—' with none."""
    if nonfinite and nonfinite[-1]:
        return Text("nan/inf", style="mi.bad")
    if not values or values[-1] is None:
        return "—"
    return Forms(num_forms(values[-1]))
