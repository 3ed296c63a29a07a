"""`load`'s view: the plan grouped by status, layer indices collapsed, then what was done."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from modinspect.names import collapse_groups, collapse_indices
from modinspect.render.console.common import Trimmed, grouped_pairs
from modinspect.render.console.fit import Cell, Column, fit_table
from modinspect.render.console.theme import Themed
from modinspect.render.text import elide_left, num_forms, visible_report
from modinspect.reports import LoadReport

LOAD_COLUMNS = (
    Column("status", kind="text", lift=False),
    Column("count", lift=False),
    Column("keys", kind="text", lift=False),
)


def load_renderable(report: LoadReport, width: int = 200) -> RenderableType:
    """The plan grouped by status (layer indices collapsed), then what was done.

    Nothing copied (a dry run, --meta, a blocked or failed --strict load): the first status reads
    "would load". A key's detail goes to its own line rather than be cut when the terminal is narrow.
    """
    report = visible_report(report)
    plan = report.plan
    parts: list[RenderableType] = []
    head = Text()
    head.append("model       ", style="mi.label")
    head.append(f"{report.model}\n")
    head.append("checkpoint  ", style="mi.label")
    head.append(report.checkpoint)
    parts.append(head)
    cast = {m.name for m in plan.cast}
    loaded = "loaded" if report.performed else "would load"
    rows: list[tuple[str, str, int, list[tuple[str, str]]]] = [
        (
            loaded,
            "mi.loaded",
            len(plan.loaded) - len(cast),
            [(n, "") for n in collapse_indices([n for n in plan.loaded if n not in cast])],
        ),
        ("cast", "mi.cast", len(plan.cast), _cast_items(report)),
        ("tied", "mi.loaded", len(plan.tied), [(f"{a.name} = {a.target}", "") for a in plan.tied]),
        (
            "mismatched",
            "mi.bad",
            len(plan.mismatched),
            [
                (names, f"{model} in the model, {ckpt} in the checkpoint")
                for names, model, ckpt in grouped_pairs(
                    [(m.name, m.model, m.checkpoint) for m in plan.mismatched]
                )
            ],
        ),
        (
            "missing",
            "mi.bad",
            len(plan.missing),
            [(n, "") for n in collapse_indices(list(plan.missing))],
        ),
        (
            "unexpected",
            "mi.bad",
            len(plan.unexpected),
            [(n, "") for n in collapse_indices(list(plan.unexpected))],
        ),
    ]
    shown_rows = [r for r in rows if r[2]]
    status_w = max([6, *(len(r[0]) for r in shown_rows)])
    count_w = max([5, *(len(str(r[2])) for r in shown_rows)])
    keys_w = max(width - status_w - count_w - 6, 20)
    rows_out: list[list[Cell]] = []
    for status, style, count, items in shown_rows:
        lines = [line for name, detail in items[:30] for line in _key_lines(name, detail, keys_w)]
        if len(items) > 30:
            lines.append(f"… {len(items) - 30} more (see --json)")
        rows_out.append([Text(status, style=style), str(count), "\n".join(lines)])
    parts += fit_table(LOAD_COLUMNS, rows_out, width).parts(
        width
    )  # every key line is made to fit keys_w first
    for hint in plan.hints:
        parts.append(Text(f"hint: {hint}", style="mi.hint"))
    parts.append(
        Text(_load_outcome(report), style="mi.bad" if report.strict_failed else "mi.heading")
    )
    return Themed(Trimmed(Group(*parts)))


def _cast_items(report: LoadReport) -> list[tuple[str, str]]:
    """Cast keys grouped by (model, checkpoint) dtype and collapsed by layer index, each with its detail.

    Linear: a group's error is the largest over the names it stands for (no pattern matched against every
    error: 200k cast keys were 200k × 200k regex matches).
    """
    errors = dict(report.cast_errors)
    pairs: dict[tuple[str, str], list[str]] = {}
    for m in report.plan.cast:
        pairs.setdefault((m.model, m.checkpoint), []).append(m.name)
    items = []
    for (model, checkpoint), names in pairs.items():
        for label, members in collapse_groups(names):
            sizes = [errors[n] for n in members if n in errors]
            items.append((label, _cast_detail(model, checkpoint, sizes)))
    return items


def _cast_detail(model: str, checkpoint: str, sizes: list[float]) -> str:
    """'(float32 → float16, max |Δ| 4.9e-04: copy_ converts silently)': the error once the values were copied."""
    size = f", max |Δ| {num_forms(max(sizes))[0]}" if sizes else ""
    return f"({checkpoint} → {model}{size}: copy_ converts silently)"


def _key_lines(name: str, detail: str, width: int) -> list[str]:
    """One line 'name detail' when it fits; else the name (middle-elided) and the detail indented below it."""
    line = f"{name} {detail}".rstrip()
    if cell_len(line) <= width:
        return [line]
    lines = [elide_left(name, width)]
    if detail:
        words, current = detail.split(" "), "  "
        for word in words:  # wrap the detail at spaces: numbers stay whole
            if cell_len(current) + len(word) + 1 > width and current.strip():
                lines.append(current.rstrip())
                current = "  "
            current += word + " "
        lines.append(current.rstrip())
    return lines


def _load_outcome(report: LoadReport) -> str:
    plan = report.plan
    if report.strict_failed:
        return "--strict: the checkpoint does not match every key; nothing was loaded or written."
    if report.dry_run:
        return f"Dry run: {len(plan.loaded)} tensors would load; nothing was changed."
    if not report.performed:
        return "Nothing was loaded."
    skipped = (
        f", {len(plan.mismatched)} mismatched left at the model's values" if plan.mismatched else ""
    )
    wrote = (
        f"; wrote {report.written}"
        if report.written
        else "; nothing was kept: the model lives only in this process (pass --out FILE to write it)"
    )
    return f"Loaded {len(plan.loaded)} tensors into the model{skipped}{wrote}."
