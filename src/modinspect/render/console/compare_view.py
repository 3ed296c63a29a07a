"""`report A.jsonl B.jsonl`'s terminal view: each run's header, loss and lr lines, then per module last values.

The pictures of two runs on the same axes are the HTML page's (`--html`); the terminal says which run went
bad where, and per module puts its last std and ‖∇out‖ in A and in B side by side with the ratio B/A, so the
modules that differ stand out. The table goes through fit_table like every other table: a column the same on
every row moves above it, names lose components from the left (never their last), --wide shows everything.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from modinspect.render.console.common import Trimmed, module_name
from modinspect.render.console.fit import Cell, Column, Forms, Name, fit_table
from modinspect.render.console.report_view import _curve, _either, _last
from modinspect.render.console.theme import Themed
from modinspect.render.text import (
    TableLayout,
    bad_step_text,
    num,
    num_forms,
    visible_report,
    wrap_words,
)
from modinspect.reports import ModuleSeries, RunReport
from modinspect.reports.compare import RunComparison

RUNS = ("A", "B")
DIFFERS = 2.0  # a ratio B/A beyond 2× either way is styled as a difference


def comparison_renderable(
    pair: RunComparison, width: int = 200, layout: TableLayout | None = None
) -> RenderableType:
    """Both runs' headers, loss and lr lines (first/last/min/max), the modules' last values in A, B and B/A.

    `layout`: --wide (every column, whole) and --columns (std_a, std_b, std_ratio, grad_norm_a, ...).
    After the table: each run's first bad step, explained as `report LOG` explains it.
    """
    pair = visible_report(pair)
    runs = (pair.a, pair.b)
    wide = layout is not None and layout.wide
    steps = max(len(pair.a.steps), len(pair.b.steps))
    # Beside its numbers where they fit on the line (80 columns and up), else on its own line above them.
    spark_w = steps if wide else min(steps, width - 62 if width >= 70 else width - 10)
    parts: list[RenderableType] = [
        _header(label, run, width) for label, run in zip(RUNS, runs, strict=True)
    ]
    for what in ("loss", "lr"):
        lines = [
            _curve_line(what, label, run, spark_w, width)
            for label, run in zip(RUNS, runs, strict=True)
        ]
        if any(line.plain for line in lines):  # two runs without an optimizer: no lr lines
            parts.append(Text("\n").join([Text(""), *(line for line in lines if line.plain)]))
    columns, rows = _table(pair)
    fitted = fit_table(columns, rows, width, layout)
    parts += [Text(""), *fitted.parts(width)]
    verdicts = [_verdict(label, run, width) for label, run in zip(RUNS, runs, strict=True)]
    parts += [v for v in verdicts if v is not None]
    return Themed(Trimmed(Group(*parts)))  # no trailing space where rich wraps a line


def _header(label: str, run: RunReport, width: int) -> Text:
    """'A  path' and, indented, what the run was: wrapped between its parts, never inside one."""
    h = run.header
    text = Text(f"{label}  ", style="mi.label")
    text.append(run.path, style="mi.source")
    steps = f"{run.steps[0]} … {run.steps[-1]}" if len(run.steps) > 1 else f"step {run.steps[0]}"
    facts = [
        (f"{h.model} on {h.device}, every {h.every} steps", "mi.muted"),
        (f"{len(run.steps)} logged step(s), {steps}", "mi.muted"),
        ("no NaN/Inf", "mi.good")
        if run.first_bad is None
        else (f"first bad step {run.first_bad.step}", "mi.bad"),
    ]
    line = 3
    text.append("\n   ")
    for k, (fact, style) in enumerate(facts):
        if k:
            if line + 3 + len(fact) > width:
                text.append("\n   ")
                line = 3
            else:
                text.append(" · ", style="mi.muted")
                line += 3
        text.append(fact, style=style)
        line += len(fact)
    return text


def _curve_line(what: str, label: str, run: RunReport, spark_w: int, width: int) -> Text:
    """'loss A  ▁▁▇××  first 1.2 · last nan/inf · min 1.1 · max 2e+25', as `report LOG` draws it."""
    values = run.loss if what == "loss" else run.lr
    line = _curve(f"{what:<4} {label}", values, spark_w, width)
    if line.plain or not values or what == "lr":
        return line[1:]  # without the line break the single-run header puts before it
    # logged, never finite (the writer logs NaN/Inf as null)
    return Text(f"{what:<4} {label}  ").append("no finite value logged", style="mi.muted")


def _table(pair: RunComparison) -> tuple[list[Column], list[list[Cell]]]:
    """Per module: type, then std and ‖∇out‖ each as A, B and B/A; the type goes first where narrow."""
    columns = [Column("module", kind="name"), Column("type", kind="text", hide=3, style="mi.type")]
    for title, key, hide in (("std", "std", 1), ("‖∇out‖", "grad_norm", 2)):
        for run in RUNS:
            columns.append(Column(f"{title} {run}", key=f"{key}_{run.lower()}", hide=hide))
        columns.append(
            Column(
                f"{title} B/A",
                key=f"{key}_ratio",
            )
        )
    series = ({m.name: m for m in pair.a.modules}, {m.name: m for m in pair.b.modules})
    rows: list[list[Cell]] = []
    for m in pair.modules:
        a, b = series[0].get(m.name), series[1].get(m.name)
        bad = m.bad_a or m.bad_b
        row: list[Cell] = [Name(module_name(m.name), style="mi.bad" if bad else ""), Text(m.type)]
        std = _std(m.std_a, a), _std(m.std_b, b)
        grad = _grad(m.grad_norm_a, a), _grad(m.grad_norm_b, b)
        row += [*std, _ratio(std, m.std_a, m.std_b), *grad]
        row.append(_ratio(grad, m.grad_norm_a, m.grad_norm_b))
        rows.append(row)
    return columns, rows


def _std(value: float | None, m: ModuleSeries | None) -> Cell:
    if m is None:
        return Text("absent", style="mi.muted")
    return _marked(value, _last(m.std, num, m.nonfinite, m.std_overflow))


def _grad(value: float | None, m: ModuleSeries | None) -> Cell:
    if m is None:
        return Text("absent", style="mi.muted")
    inf = _either(m.grad_nonfinite, m.grad_nan, keep_only_first=True)
    inf = _either(inf, m.grad_overflow) if inf else m.grad_overflow  # a norm that overflowed: inf
    return _marked(value, _last(m.grad_norm, num, m.grad_nan, inf))


def _marked(value: float | None, last: Text) -> Cell:
    """`nan` / `inf` as `report LOG` marks them; otherwise the value, at fewer digits where narrow."""
    return last if last.plain in ("nan", "inf") else Forms(num_forms(value))


def _ratio(shown: tuple[Cell, Cell], a: float | None, b: float | None) -> Cell:
    """B/A where both are finite numbers and A is not 0 ('—' otherwise), styled where they differ beyond 2×.

    A value marked `nan` is not finite whatever the log's number (a gradient norm over NaN is logged as 0).
    """
    if a is None or b is None or a == 0 or not all(isinstance(c, Forms) for c in shown):
        return "—"
    ratio = b / a
    differs = not 1 / DIFFERS <= abs(ratio) <= DIFFERS
    return Forms(num_forms(ratio), style="mi.warn" if differs else "")


def _verdict(label: str, run: RunReport, width: int) -> Text | None:
    """'A  First bad step 34: …' and watch's explanation of what happened before it; None for a clean run."""
    bad = run.first_bad
    if bad is None:
        return None
    said = [(f"{label}  {bad_step_text(bad)}", "mi.bad")]
    if bad.explanation:
        said.append((f"   Before it: {bad.explanation}.", "mi.warn"))
    text = Text()
    for words, style in said:  # lines after the first under the words, not under the run's letter
        lines = wrap_words(words.lstrip(), width - 3, 0)
        text.append("\n" + words[: len(words) - len(words.lstrip())] + lines[0], style=style)
        text.append("".join(f"\n   {line}" for line in lines[1:]), style=style)
    return text
