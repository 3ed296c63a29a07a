"""`doctor`'s view: findings grouped by severity, most severe first, each with its fix."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.text import Text

from modinspect.render.console.common import Trimmed
from modinspect.render.console.theme import SEVERITY_STYLE, Themed
from modinspect.render.text import doctor_blocks, doctor_header, doctor_summary, visible
from modinspect.reports.doctor import DoctorReport


def _plain(text: str) -> str:
    """Names from a model or a file, with control characters shown as escapes (Text never reads markup)."""
    return visible(text)


def doctor_renderable(report: DoctorReport, width: int = 200) -> RenderableType:
    """Findings grouped by severity, most severe first: identifier and place, the message, the fix.

    Findings of one check on one module with the same message (a module's unused weight and bias) share a
    block that lists their attributes.
    """
    parts: list[RenderableType] = [Trimmed(Text(_plain(doctor_header(report)), style="mi.heading"))]
    for severity, blocks in doctor_blocks(report):
        style = SEVERITY_STYLE[severity]
        count = sum(len(b) for b in blocks)
        parts.append(Text(f"\n{severity}{'' if count == 1 else 's'} ({count})", style=style))
        for block in blocks:
            first = block[0]
            line = Text("  ")
            line.append(first.id, style=style)
            line.append("  " + _plain(", ".join(f.where.describe() for f in block)))
            parts.append(line)
            parts.append(Trimmed(Padding(Text(_plain(first.message)), (0, 0, 0, 6))))
            parts.append(
                Trimmed(Padding(Text(_plain(f"fix: {first.fix}"), style="mi.muted"), (0, 0, 0, 6)))
            )
    if report.notes:
        parts.append(Text(""))
    for note in report.notes:
        parts.append(Text(_plain(f"note: {note}"), style="mi.muted"))
    parts.append(Text("\n" + doctor_summary(report)))
    return Themed(Group(*parts))
