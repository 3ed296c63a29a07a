"""`diff`'s view: the summary, changed tensors by severity, the per-module roll-up, structural differences."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from modinspect.names import collapse_indices
from modinspect.render.console.common import Trimmed, grouped_pairs
from modinspect.render.console.fit import Cell, Column, Forms, Name, fit_table, wrap_at_dots
from modinspect.render.console.theme import Themed
from modinspect.render.text import (
    TableLayout,
    elide_left,
    last_component_width,
    num_forms,
    ratio_forms,
    shape_text,
    visible_report,
    wrap_words,
)
from modinspect.reports import DiffReport, QuantError, QuantModuleError


def _name_line(name: str, rest: str, width: int) -> str:
    """'  name: rest', the name shortened from the left when the line would be too wide (never the numbers in
    `rest`, never the name's last component): where even that is too wide, `rest` goes on a line of its own."""
    room = width - 4 - cell_len(rest)
    if room >= last_component_width(name):
        return f"  {elide_left(name, room)}: {rest}"
    lines = wrap_at_dots(name, width - 2)
    return "\n".join(f"  {line}" for line in lines) + f":\n    {rest}"


def _names_block(title: str, names: list[str], width: int = 200) -> Text:
    text = Text()
    text.append(f"{title} ({len(names)})\n", style="mi.bad")
    shown = collapse_indices(names)
    for name in shown[:40]:
        text.append(f"  {elide_left(name, width - 2)}\n")
    if len(shown) > 40:
        text.append(f"  … {len(shown) - 40} more (see --json)\n", style="mi.muted")
    text.rstrip()
    return text


DIFF_COLUMNS = (
    Column("tensor", kind="name"),
    Column("shape", kind="text", hide=1, justify="right"),
    Column("differing"),
    Column("max |Δ|", key="max_abs_diff"),
    Column("mean |Δ|", hide=2, key="mean_abs_diff"),
    Column("rel L2", key="rel_l2"),
    Column("cosine", hide=3),
    Column("NaN A/B", kind="text", key="nan", shared=(("", "no NaN on either side"),)),
)


def diff_renderable(
    report: DiffReport, width: int = 200, limit: int = 50, layout: TableLayout | None = None
) -> RenderableType:
    """Summary first, then changed tensors by severity, the per-module roll-up, then structural differences.

    The changed-tensor table fits `width` (see fit_table); names in the lists are middle-elided to fit.
    """
    report = visible_report(report)
    parts: list[RenderableType] = []
    head = Text()
    head.append("A ", style="mi.label")
    head.append(f"{report.a}  ({report.format_a})\n")
    head.append("B ", style="mi.label")
    head.append(f"{report.b}  ({report.format_b})\n")
    nan = "NaN equals NaN" if report.nan_equal else "NaN differs from everything"
    head.append(f"tolerance: {report.tolerance}; {nan}", style="mi.muted")
    if report.bytewise:
        head.append(
            f"\n{report.bytewise} quantized tensor pairs compared byte for byte, not by value: "
            "'differing' counts the elements of the rows whose bytes differ",
            style="mi.muted",
        )
    if report.dequantized:
        side = report.dequantized.upper()
        head.append(
            f"\n{side}'s {len(report.quantization)} quantized tensors dequantised and compared with "
            f"{'B' if side == 'A' else 'A'}'s floats",
            style="mi.muted",
        )
    parts.append(head)
    summary = Text()
    summary.append(f"\n{report.compared} compared: {report.equal} equal", style="mi.heading")
    if report.close:
        summary.append(f" ({len(report.close)} within tolerance, not identical)")
    summary.append(
        f", {len(report.changed)} changed", style="mi.changed" if report.changed else "mi.heading"
    )
    structural = [
        (len(report.only_in_a), "only in A"),
        (len(report.only_in_b), "only in B"),
        (len(report.shape_mismatch), "shape mismatches"),
        (len(report.dtype_mismatch), "dtype mismatches"),
    ]
    summary.append(
        "; " + ", ".join(f"{n} {label}" for n, label in structural),
        style="mi.bad" if any(n for n, _ in structural) else "",
    )
    parts.append(summary)
    for hint in report.hints:
        parts.append(Text(f"hint: {hint}", style="mi.hint"))
    if report.quantization:
        parts += _quant_tables(report, width, limit, layout)
    if report.changed:
        parts.append(Text("\nChanged, most severe first", style="mi.heading"))
        rows: list[list[Cell]] = [
            [
                Name(d.name),
                shape_text(d.shape),
                Forms(ratio_forms(d.differing, d.numel)),
                Forms(num_forms(d.max_abs_diff)),
                Forms(num_forms(d.mean_abs_diff)),
                Forms(num_forms(d.rel_l2)),
                Forms(num_forms(d.cosine)),
                f"{d.nan_a}/{d.nan_b}" if d.nan_a or d.nan_b else "",
            ]
            for d in report.changed[:limit]
        ]
        parts += fit_table(DIFF_COLUMNS, rows, width, layout).parts(width)
        if len(report.changed) > limit:
            parts.append(
                Text(
                    f"… {len(report.changed) - limit} more changed tensors (see --json)",
                    style="mi.muted",
                )
            )
    if report.rollup or report.module_status:
        parts.append(_by_module(report, width, limit))
    if report.only_in_a:
        parts.append(_names_block("\nOnly in A", list(report.only_in_a), width))
    if report.only_in_b:
        parts.append(_names_block("\nOnly in B", list(report.only_in_b), width))
    for title, items in (
        ("Shape mismatches", report.shape_mismatch),
        ("Dtype mismatches", report.dtype_mismatch),
    ):
        if items:
            text = Text(f"\n{title} ({len(items)})\n", style="mi.bad")
            lines = [
                _name_line(names, f"{a} in A, {b} in B", width)
                for names, a, b in grouped_pairs([(m.name, m.a, m.b) for m in items])
            ]
            for line in lines[:limit]:
                text.append(f"{line}\n")
            if len(lines) > limit:
                text.append(f"  … {len(lines) - limit} more (see --json)\n", style="mi.muted")
            text.rstrip()
            parts.append(text)
    if report.aliased:
        text = Text(
            f"\nTied names matched through their partner ({len(report.aliased)})\n",
            style="mi.heading",
        )
        for name, via in report.aliased[:limit]:
            text.append(f"  {name} = {via}\n", style="mi.muted")
        if len(report.aliased) > limit:
            text.append(f"  … {len(report.aliased) - limit} more (see --json)\n", style="mi.muted")
        text.rstrip()
        parts.append(text)
    verdict_line = Text(
        "\nThe checkpoints differ." if report.differs else "\nNo differences within tolerance.",
        style="mi.bad" if report.differs else "mi.good",
    )
    parts.append(verdict_line)
    return Themed(Trimmed(Group(*parts)))


def _by_module(report: DiffReport, width: int, limit: int) -> Text:
    """'By module: 2 changed, 8 unchanged': each changed module with its counts, then the others' names collapsed.

    'unchanged: features.{0-7}, classifier' answers "did my freeze work?" at a glance.
    """
    status: dict[str, list[str]] = {}
    for m in report.module_status:
        status.setdefault(m.status, []).append(m.module or "(top level)")
    counts = ", ".join(f"{len(status.get(key, []))} {words}" for key, words in _MODULE_STATUS)
    text = Text(f"\nBy module{': ' + counts if report.module_status else ''}\n", style="mi.heading")
    rolled = {r.module for r in report.rollup}
    for r in report.rollup[:limit]:
        rest = f"{r.changed} of {r.tensors} tensors changed, " + (
            "compared byte for byte" if r.max_abs_diff is None else f"max |Δ| {r.max_abs_diff:.1e}"
        )
        text.append(_name_line(r.module or "(top level)", rest, width) + "\n")
    if len(report.rollup) > limit:
        text.append(
            f"  … {len(report.rollup) - limit} more changed modules (see --json)\n",
            style="mi.muted",
        )
    other = [m for m in report.module_status if m.status == "changed" and m.module not in rolled]
    for m in other[:limit]:
        text.append(
            _name_line(
                m.module or "(top level)", "tensors differ in shape or are on one side only", width
            )
            + "\n"
        )
    for key, words in _MODULE_STATUS[1:]:
        names = collapse_indices(status.get(key, []))
        if names:
            shown = ", ".join(names[:limit]) + (
                f" and {len(names) - limit} more" if len(names) > limit else ""
            )
            line = "\n".join(wrap_words(f"{words}: {shown}", width - 2, 2))
            text.append(f"  {line}\n", style=_STATUS_STYLE[key])
    text.rstrip()
    return text


_MODULE_STATUS = (
    ("changed", "changed"),
    ("unchanged", "unchanged"),
    ("only_in_a", "only in A"),
    ("only_in_b", "only in B"),
)
_STATUS_STYLE = {"unchanged": "mi.unchanged", "only_in_a": "mi.removed", "only_in_b": "mi.added"}


QUANT_COLUMNS = (
    Column("tensor", kind="name"),
    Column("scheme", kind="text"),
    Column("bits/w", key="bits_per_weight"),
    Column("rel. error", key="rel_error"),
    Column("cosine"),
    Column("SNR dB", key="snr_db", lift=False),
)
QUANT_MODULE_COLUMNS = (Column("module", kind="name"), *QUANT_COLUMNS[1:])


def _quant_row(q: QuantError | QuantModuleError, name: str, scheme: str) -> list[Cell]:
    return [
        Name(name),
        scheme,
        f"{q.bits_per_weight:.2f}",
        Forms(num_forms(q.rel_error)),
        Forms(num_forms(q.cosine)),
        "∞"
        if q.snr_db is None and q.rel_error == 0
        else f"{q.snr_db:.1f}"
        if q.snr_db is not None
        else "—",
    ]


def _quant_tables(
    report: DiffReport, width: int, limit: int, layout: TableLayout | None
) -> list[RenderableType]:
    """'Quantization error, worst first': each dequantised tensor, then each module, against the floats."""
    parts: list[RenderableType] = [Text("\nQuantization error, worst first", style="mi.heading")]
    rows = [_quant_row(q, q.name, q.scheme) for q in report.quantization[:limit]]
    parts += fit_table(QUANT_COLUMNS, rows, width, layout).parts(width)
    if len(report.quantization) > limit:
        parts.append(
            Text(f"… {len(report.quantization) - limit} more (see --json)", style="mi.muted")
        )
    if len(report.quant_modules) > 1:
        parts.append(Text("\nBy module, worst first", style="mi.heading"))
        rows = [_quant_row(m, m.module, ", ".join(m.schemes)) for m in report.quant_modules[:limit]]
        parts += fit_table(QUANT_MODULE_COLUMNS, rows, width, layout).parts(width)
        if len(report.quant_modules) > limit:
            parts.append(
                Text(f"… {len(report.quant_modules) - limit} more (see --json)", style="mi.muted")
            )
    return parts
