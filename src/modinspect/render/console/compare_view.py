"""`report A.jsonl B.jsonl`'s terminal view: each run's header, loss and lr lines, then per module last values.

Deliberately simple: the pictures of two runs on the same axes are the HTML page's (`--html`); the terminal
says which run went bad where, and puts each module's last std and ‖∇out‖ in A and in B side by side.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from modinspect.render.console.common import module_name
from modinspect.render.console.theme import Themed
from modinspect.render.text import elide_left, num, series_sparkline, visible_report
from modinspect.reports import RunReport
from modinspect.reports.compare import ModulePair, RunComparison


def comparison_renderable(pair: RunComparison, width: int = 200) -> RenderableType:
    """Both runs' headers, loss and lr sparklines (one line per run), and the modules' last values in A and B."""
    pair = visible_report(pair)
    runs = (("A", pair.a), ("B", pair.b))
    spark_w = max(4, min(max(len(pair.a.steps), len(pair.b.steps)), width - 62))
    parts: list[RenderableType] = [_header(label, run) for label, run in runs]
    for what in ("loss", "lr"):
        lines = [_curve(what, label, run, spark_w) for label, run in runs]
        if any(line.plain for line in lines):  # two runs without an optimizer: no lr lines
            parts.append(Text("\n").join([Text(""), *(line for line in lines if line.plain)]))
    parts.append(_table(pair.modules, width))
    return Themed(Group(*parts))


def _header(label: str, run: RunReport) -> Text:
    h = run.header
    text = Text(f"{label}  ", style="mi.label")
    text.append(run.path, style="mi.source")
    text.append(
        f"\n   {h.model} on {h.device}, every {h.every} steps · {len(run.steps)} logged step(s), "
        f"{run.steps[0]} … {run.steps[-1]} · ",
        style="mi.muted",
    )
    if run.first_bad is None:
        text.append("no NaN/Inf", style="mi.good")
    else:
        text.append(f"first bad step {run.first_bad.step}", style="mi.bad")
    return text


def _curve(what: str, label: str, run: RunReport, spark_w: int) -> Text:
    values = run.loss if what == "loss" else run.lr
    finite = [v for v in values if v is not None]
    if not values or (what == "lr" and not finite):
        return Text()
    text = Text(f"{what:<4} {label}  ")
    if (
        not finite
    ):  # logged, never finite (the writer logs NaN/Inf as null), or never given to watch
        return text.append("no finite value logged", style="mi.muted")
    text.append(
        series_sparkline(values, tuple(v is None for v in values), spark_w), style="mi.spark"
    )
    last = num(values[-1]) if values[-1] is not None else "nan/inf"
    text.append(
        f"  first {num(finite[0])} · last {last} · min {num(min(finite))} · max {num(max(finite))}",
        style="mi.muted",
    )
    return text


def _value(value: float | None, present: bool, bad: bool) -> str:
    if not present:
        return "absent"
    if value is None:
        return "nan/inf" if bad else "—"
    return num(value)


def _table(modules: tuple[ModulePair, ...], width: int) -> Text:
    heads = ("std A", "std B", "‖∇out‖ A", "‖∇out‖ B")
    value_w = 10
    type_w = min(max((len(m.type) for m in modules), default=4), 20)
    name_w = max(8, min(max((cell_len(module_name(m.name)) for m in modules), default=8), 48))
    room = width - 4 * (value_w + 2) - (type_w + 2)
    if room < name_w:  # narrow: the type goes first, then the names are elided from the left
        type_w, room = 0, room + type_w + 2
        name_w = max(8, min(name_w, room))
    text = Text("\n")
    head = f"{'module':<{name_w}}  " + (f"{'type':<{type_w}}  " if type_w else "")
    text.append(
        head + "".join(f"{h:>{value_w}}  " for h in heads).rstrip() + "\n", style="mi.header"
    )
    for m in modules:
        name = elide_left(module_name(m.name), name_w)
        row = f"{name:<{name_w}}  " + (f"{m.type[:type_w]:<{type_w}}  " if type_w else "")
        cells = (
            _value(m.std_a, m.in_a, m.bad_a),
            _value(m.std_b, m.in_b, m.bad_b),
            _value(m.grad_norm_a, m.in_a, m.bad_a),
            _value(m.grad_norm_b, m.in_b, m.bad_b),
        )
        text.append(row)
        for cell in cells:
            text.append(f"{cell:>{value_w}}  ", style="mi.bad" if cell == "nan/inf" else None)
        text.rstrip()
        text.append("\n")
    text.rstrip()
    return text
