"""`stats`'s view: per module in execution order, the activation and gradient table, then the verdict."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from modinspect.names import collapse_indices
from modinspect.render.console.common import Trimmed, module_name, shown_names
from modinspect.render.console.fit import Cell, Column, Forms, Name, fit_table
from modinspect.render.console.theme import Themed, flag_style
from modinspect.render.text import TableLayout, num_forms, percent, sparkline, visible_report
from modinspect.reports import FrozenParams, NonfiniteOrigin, StatsReport


def _grad_cell(norm: float | None, nan: int, inf: int, flags: tuple[str, ...]) -> Cell:
    if nan or inf:
        return Text(f"nan {nan}" if nan else f"inf {inf}", style="mi.bad")
    return Forms(num_forms(norm), style=flag_style(flags))


# Stats columns, and the order they give way in a narrow terminal (highest `hide` first).
STATS_COLUMNS = (
    Column("module", kind="name"),
    Column("type", kind="text", hide=8, style="mi.type"),
    Column("calls", hide=7),
    Column("mean"),
    Column("std", hide=5),
    Column("min", hide=2),
    Column("max", hide=1),
    Column("zeros", hide=6),
    Column("nan/inf", key="nan"),
    Column("dead", hide=3, shared=(("—", "no ReLU-family modules"),)),
    Column("‖∇out‖", key="grad_norm", shared=(("—", "no backward"),)),
    Column("‖∇param‖", hide=4, key="param_grad_norm"),
    Column("hist", kind="text", hide=9, style="mi.spark"),
)


def stats_renderable(
    report: StatsReport, width: int = 200, layout: TableLayout | None = None
) -> RenderableType:
    """The per-module table in execution order, then a one-paragraph verdict.

    The table fits `width` (see fit_table): values shared by every row above it, fewer digits, narrower
    names, then hidden columns (the histogram first, then the type), named in a note under the table.
    """
    report = visible_report(report)
    called = [m for m in report.modules if m.calls]
    origin = report.nonfinite_origin
    rows: list[list[Cell]] = []
    for m in called:
        bad = m.nan or m.inf
        dead_style = "mi.warn" if {"dead", "mostly-dead"} & set(m.flags) else ""
        mark = " ◀" if origin is not None and origin.module == m.name else ""
        name = Name(
            m.name, tree=True, mark=mark, style="mi.bad" if bad else "", mark_style="mi.bad"
        )
        rows.append(
            [
                name,
                m.type,
                str(m.calls),
                Forms(num_forms(m.mean)),
                Forms(num_forms(m.std)),
                Forms(num_forms(m.min)),
                Forms(num_forms(m.max)),
                percent(m.zero_fraction),
                Text(f"{m.nan}/{m.inf}" if bad else "0", style="mi.bad" if bad else "mi.muted"),
                Text(percent(m.dead_fraction), style=dead_style),
                _grad_cell(m.grad_norm, m.grad_nan, m.grad_inf, m.flags),
                _grad_cell(m.param_grad_norm, m.param_grad_nan, m.param_grad_inf, ()),
                sparkline(m.histogram),
            ]
        )
    fitted = fit_table(STATS_COLUMNS, rows, width, layout)
    idle = [module_name(m.name) for m in report.modules if not m.calls]
    parts: list[RenderableType] = [_stats_header(report), *fitted.parts(width)]
    if idle:
        shown = ", ".join(idle[:6]) + (f" and {len(idle) - 6} more" if len(idle) > 6 else "")
        parts.append(Text(f"not called: {shown}", style="mi.muted"))
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="mi.muted"))
    parts.append(verdict(report))
    return Themed(Trimmed(Group(*parts)))


def _stats_header(report: StatsReport) -> Text:
    text = Text()
    text.append(report.source, style="mi.source")
    dtype = f", autocast {report.dtype}" if report.dtype else ""
    grads = f", backward on {loss_words(report.loss)}" if report.backward else ", forward only"
    text.append(
        f"  ({report.mode} mode, {report.device}{dtype}, {report.batches} batch(es){grads})",
        style="mi.muted",
    )
    text.append(f"\ninputs: {report.inputs}", style="mi.muted")
    if report.frozen is not None:
        text.append(
            "\n" + frozen_text(report.frozen),
            style="mi.warn" if report.frozen.params else "mi.muted",
        )
    return text


def frozen_text(frozen: FrozenParams) -> str:
    """'parameters: 1,610, 1,440 frozen (89.4%) in 8 tensors; fully frozen: features' or '…, all trainable'."""
    if not frozen.params:
        return (
            f"parameters: {frozen.total:,}, all trainable" if frozen.total else "parameters: none"
        )
    share = f"{100 * frozen.params / frozen.total:.1f}%" if frozen.total else "—"
    modules = collapse_indices([m or "(model)" for m in frozen.modules])
    shown = ", ".join(modules[:8]) + (f" and {len(modules) - 8} more" if len(modules) > 8 else "")
    return (
        f"parameters: {frozen.total:,}, {frozen.params:,} frozen ({share}) in {frozen.tensors:,} tensor(s)"
        + (f"; fully frozen: {shown}" if shown else "")
    )


def loss_words(loss: str) -> str:
    """What backward ran on, in words: the model's own loss, the sum/mean of the outputs, or --loss FN."""
    if loss in ("sum", "mean"):
        return f"the {loss} of the outputs"
    if loss == "custom":
        return "the --loss function"
    return f"the model's own loss ({loss})"


def _where(module: str | None, typ: str | None) -> str:
    return f"{module_name(module or '')} ({typ})" if typ else module_name(module or "")


def origin_text(origin: NonfiniteOrigin, first: bool = True) -> str:
    """One origin in words: the op, the module (path and type), what it passed on to."""
    where = _where(origin.module, origin.type)
    if origin.cause == "input":
        text = f"the input already held NaN/Inf ({origin.phase})"
    elif origin.cause == "loss":
        text = "the loss was already NaN/Inf before backward"
    elif origin.cause == "weight":
        text = f"{origin.tensor} {origin.detail} before any forward: it is the cause, in {where}"
    elif origin.cause == "overflow":
        text = f"{origin.detail}" + (f" ({origin.op} in {where}, forward)" if origin.op else "")
    else:
        lead = "first NaN/Inf produced" if first else "in backward, another NaN/Inf is produced"
        phase = f" in {origin.phase}" if first else ""
        if origin.node is not None:
            text = f"{lead}{phase} by {origin.node} ({origin.op}) in {where}"
        elif origin.op is not None:
            text = f"{lead}{phase} by {origin.op} in {where}"
        else:
            text = f"{lead} by {where}{phase}"
    if origin.rank is not None:
        text += f" (on rank {origin.rank})"
    if origin.passed_on:
        text += f"; passed on by {shown_names(origin.passed_on)}"
    return text


def origin_lines(origin: NonfiniteOrigin) -> list[str]:
    """The source lines of an origin: where the op ran, and for a backward node the forward line that made it."""
    lines = []
    if origin.source is not None:
        lines.append(f"  at {origin.source}  {origin.code or ''}".rstrip())
    if origin.created_at is not None:
        lines.append(
            f"  {origin.node} was created in forward at {origin.created_at}  {origin.created_code or ''}".rstrip()
        )
    return lines


def verdict_text(report: StatsReport) -> str:
    """The verdict, as plain text (the renderer styles it): findings, then source lines, then diagnoses."""
    parts: list[str] = []
    lines: list[str] = []
    origin = report.nonfinite_origin
    if origin is not None:
        parts.append(origin_text(origin))
        lines += origin_lines(origin)
    elif report.nonfinite_found:
        parts.append("non-finite values were found (see the nan/inf column)")
    else:
        parts.append(
            "every activation" + (" and gradient" if report.backward else "") + " was finite"
        )
    if report.backward_origin is not None:
        parts.append(origin_text(report.backward_origin, first=False))
        lines += origin_lines(report.backward_origin)
    dead: dict[tuple[str, str, int | None], list[str]] = {}
    for m in report.modules:
        if m.dead_fraction:
            dead.setdefault((m.type, percent(m.dead_fraction), m.units), []).append(m.name)
    for (typ, share, units), names in dead.items():
        parts.append(f"{shown_names(names)} ({typ}): {share} of {units} units dead")
    for flag, words in (
        ("exploding-grad", "exploding gradient norm"),
        ("vanishing-grad", "vanishing gradient norm"),
    ):
        by_type: dict[str, list[str]] = {}
        for m in report.modules:
            if flag in m.flags:
                by_type.setdefault(m.type, []).append(m.name)
        for typ, names in by_type.items():
            parts.append(f"{words} at {shown_names(names, 5)} ({typ})")
    text = "; ".join(parts)
    if text.startswith(
        ("first ", "the ", "every ", "non-finite ")
    ):  # a sentence, not a module name
        text = text[0].upper() + text[1:]
    out = [text + ".", *lines]
    out += [f"Diagnosis: {d}." for d in report.diagnoses]
    return "\n".join(out)


def verdict(report: StatsReport) -> Text:
    style = "mi.bad" if report.nonfinite_found else "mi.good"
    return Text("\n" + verdict_text(report), style=style)
