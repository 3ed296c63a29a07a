"""Every report type -> its JSON document and its console view, behind one `emit` every command ends in.

A command's report goes out through `emit(report, as_json)`: the CLI's commands, `modinspect.show` and
`modinspect.to_json`, and the IPython display hook all look the report's type up here, so a report cannot
print one way and serialise another. Other outputs a report has (doctor's SARIF, a watch log's HTML page)
are named forms of the same entry. rich, the JSON writers and the HTML writer are imported on first use,
so `--json` never imports rich. A report's JSON document is generated from its fields (render.jsonout).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar

from modinspect.render.text import TableLayout
from modinspect.reports import DiffReport, LoadReport, RunReport, StatsReport, TreeReport
from modinspect.reports.compare import RunComparison
from modinspect.reports.doctor import DoctorReport

if TYPE_CHECKING:
    from rich.console import Console  # noqa: TID251 (a type only: rich is imported by render.console)


R = TypeVar("R")

WIDE = 100_000  # --wide: no line is wrapped or fitted to the terminal


@dataclass(frozen=True)
class Entry(Generic[R]):
    """One report type's outputs: the command that returns it, its console view, and other outputs.

    Its JSON document is render.jsonout's table for the type, or without one its fields as they are.
    """

    command: str
    view: Callable[[R, Console, TableLayout | None], None]
    # A faster writer of the same JSON text (tree: its module and tensor lists record by record).
    json_text: Callable[[R, bool | None], str] | None = None
    # Other outputs, by name -> the text: doctor's "sarif", a watch log's "html" page.
    forms: Mapping[str, Callable[..., str]] = field(default_factory=dict)

    def document(self, report: R) -> dict[str, Any]:
        from modinspect.render.jsonout import schema_of

        return schema_of(type(report)).document(report)

    def text(self, report: R, pretty: bool | None) -> str:
        """The JSON document as text: one line, or (`pretty`; None asks stdout) one record a line."""
        if self.json_text is not None:
            return self.json_text(report, pretty)
        from modinspect.render.jsonout import dumps

        return dumps(self.document(report), pretty)


# ------------------------------------------------------------------ the views (rich, imported on use)


def _tree_view(report: TreeReport, out: Console, _layout: TableLayout | None) -> None:
    from modinspect.render import console

    console.print_tree(out, report)  # 100k-tensor trees: plain text where no styles are wanted


def _stats_view(report: StatsReport, out: Console, layout: TableLayout | None) -> None:
    from modinspect.render import console

    out.print(console.stats_renderable(report, out.width, layout=layout))


def _diff_view(report: DiffReport, out: Console, layout: TableLayout | None) -> None:
    from modinspect.render import console

    out.print(console.diff_renderable(report, out.width, layout=layout))


def _load_view(report: LoadReport, out: Console, _layout: TableLayout | None) -> None:
    from modinspect.render import console

    out.print(console.load_renderable(report, out.width))


def _run_view(report: RunReport, out: Console, layout: TableLayout | None) -> None:
    from modinspect.render import console

    out.print(console.run_renderable(report, out.width, layout))


def _comparison_view(report: RunComparison, out: Console, layout: TableLayout | None) -> None:
    from modinspect.render import console

    out.print(console.comparison_renderable(report, out.width, layout))


def _doctor_view(report: DoctorReport, out: Console, _layout: TableLayout | None) -> None:
    from modinspect.render import console

    out.print(console.doctor_renderable(report))


# ------------------------------------------------------------------ the JSON side


def _tree_json(report: TreeReport, pretty: bool | None) -> str:
    from modinspect.render.jsonout import tree_json

    return tree_json(report, pretty)  # module and tensor lists written record by record


def _sarif(report: DoctorReport) -> str:
    from modinspect.render.jsonout import dumps
    from modinspect.render.sarif import sarif_document

    return dumps(sarif_document(report)) + "\n"


def _html(report: RunReport, steps: tuple[int, ...] = ()) -> str:
    from modinspect.render.html import run_html

    return run_html(report, steps)


def _comparison_html(report: RunComparison, steps: tuple[int, ...] = ()) -> str:
    from modinspect.render.html import runs_html

    return runs_html((report.a, report.b), steps)


REGISTRY: dict[type, Entry[Any]] = {
    TreeReport: Entry("tree", _tree_view, json_text=_tree_json),
    StatsReport: Entry("stats", _stats_view),
    DiffReport: Entry("diff", _diff_view),
    LoadReport: Entry("load", _load_view),
    RunReport: Entry("report", _run_view, forms={"html": _html}),
    # `report A.jsonl B.jsonl`: two runs on the same axes
    RunComparison: Entry("report", _comparison_view, forms={"html": _comparison_html}),
    DoctorReport: Entry("doctor", _doctor_view, forms={"sarif": _sarif}),
}


def entry_for(report: object) -> Entry[Any]:
    """The registry's entry for the report's type; TypeError for anything else."""
    entry = REGISTRY.get(type(report))
    if entry is None:
        known = ", ".join(sorted(t.__name__ for t in REGISTRY))
        raise TypeError(f"{type(report).__name__} is not a report modinspect renders ({known})")
    return entry


def to_json(report: object) -> dict[str, Any]:
    """The report's JSON document: what the CLI's `--json` prints, as a dict.

    Args:
        report: what a command returns: a TreeReport, DiffReport, LoadReport, StatsReport, RunReport or
            DoctorReport.

    Returns:
        The document: `schema_version`, `modinspect_version`, then the report's fields.

    Raises:
        TypeError: `report` is not one of those.

    Example:
        >>> with modinspect.open_source("sample_models/tiny_lm.safetensors") as src:
        ...     document = modinspect.to_json(modinspect.build_tree(src))
        >>> document["schema_version"], document["totals"]["params"], document["tied"]
        (2, 16032, [['embed.weight', 'lm_head.weight']])
    """
    return entry_for(report).document(report)


def show(report: object, *, width: int | None = None, json: bool = False) -> None:
    """Print a report as the CLI does: its console view (rich, in a notebook too), or its JSON document.

    Args:
        report: what a command returns (see `to_json`).
        width: columns to fit; default the terminal's (200 off a terminal, as the CLI's).
        json: print the `--json` document instead.

    Raises:
        TypeError: `report` is not a report modinspect renders.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> modinspect.show(modinspect.build_tree(modinspect.open_source(model)), width=60)
        Sequential  (module, training mode)
        Sequential  40 params  160 B
        ├── 0  Linear  40 params  160 B
        │   ├── weight  [8, 4]  float32  128 B
        │   └── bias  [8]  float32  32 B
        └── 1  ReLU
        <BLANKLINE>
        Parameters     40  trainable 40 · frozen 0
        Buffers         0  persistent 0 · non-persistent 0
        Size        160 B  160 bytes in 2 tensors
        By dtype       40  float32 · 160 B
    """
    emit(report, json, width=width)


def form_text(report: object, form: str, **options: Any) -> str:
    """Another output of the report, as text: `sarif` (doctor), `html` (a watch log's page; `steps`)."""
    entry = entry_for(report)
    if form not in entry.forms:
        raise ValueError(f"a {type(report).__name__} has no {form!r} output")
    return entry.forms[form](report, **options)


def emit(
    report: object,
    as_json: bool = False,
    *,
    layout: TableLayout | None = None,
    form: str | None = None,
    file: IO[str] | None = None,
    width: int | None = None,
    **options: Any,
) -> None:
    """Print one report: its console view, its JSON document (`as_json`), or another `form` (sarif, html).

    `file` defaults to stdout; `width` to the terminal's (200 off a terminal); `layout` carries --wide
    (no line fitted to a width) and --columns. `options` go to the form (html: `steps`).
    """
    entry = entry_for(report)
    stream = file if file is not None else sys.stdout
    if form is not None:  # written as it is: the SARIF log ends in a newline, the page as it ends
        stream.write(form_text(report, form, **options))
    elif as_json:
        print(entry.text(report, stream.isatty()), file=stream)
    else:
        from modinspect.render.console import make_console

        out = make_console(file, WIDE if layout is not None and layout.wide else width)
        entry.view(report, out, layout)


def view_text(report: object, width: int | None = None) -> str:
    """The report's console view as plain text (no colour), `width` columns wide (default 200)."""
    import io

    buffer = io.StringIO()
    emit(report, file=buffer, width=width)
    return buffer.getvalue()


def register_ipython(shell: Any) -> None:
    """Show every registered report in IPython/Jupyter as its console view (text/plain), as `show` would.

    Registered on the shell's formatter by type, so reports/ stays free of any renderer.
    """
    import shutil

    def pretty(report: object, printer: Any, cycle: bool) -> None:
        width = shutil.get_terminal_size((115, 24)).columns  # 115: rich's width in a notebook
        printer.text(view_text(report, width).rstrip("\n"))

    plain = shell.display_formatter.formatters["text/plain"]
    for report_type in REGISTRY:
        plain.for_type(report_type, pretty)
