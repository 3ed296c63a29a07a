"""`modinspect report` as a library call: read a watch log into the RunReport the command shows.

    run = run_report(ReportRequest("runs/stats.jsonl"))
    run.first_bad, [m.name for m in run.modules]

With `html` set the command also writes one page, atomically: commands never import render/, so the
caller passes the function that renders it (the CLI passes render.html.run_html).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modinspect.commands.feedback import Announce
from modinspect.errors import UsageError
from modinspect.reports import RunReport

__all__ = ["HtmlPage", "ReportRequest", "run_report"]

HtmlPage = Callable[[RunReport, tuple[int, ...]], str]
"""Renders a run and the steps to show histograms at as one HTML page (render.html.run_html)."""


@dataclass(frozen=True)
class ReportRequest:
    """What `modinspect report LOG` is asked to do; every field has the CLI's default."""

    log: str | Path  # a watch log (JSONL), as modinspect.watch writes it
    html: str | Path | None = None  # also write one self-contained HTML page here
    steps: tuple[int, ...] | None = None  # the HTML's histogram steps; None: first, middle, last
    force: bool = False  # overwrite `html` if it exists
    max_log_size: int | None = None  # bytes; None: watching.runlog.MAX_LOG_BYTES (128 MiB)


def run_report(
    request: ReportRequest,
    announce: Announce | None = None,
    html_page: HtmlPage | None = None,
) -> RunReport:
    """Read and validate the log; write the HTML page when asked. Raises ModinspectError on a user error.

    `announce` hears the log's notes (a partial last line skipped, unknown record kinds). `html_page`
    renders the page when `request.html` is set; the file is refused before the log is read when it
    exists without `force` or is the log itself.
    """
    from modinspect.files import atomic_write, check_writable
    from modinspect.watching.runlog import MAX_LOG_BYTES, histogram_steps, read_run_log

    if request.steps is not None and request.html is None:
        raise UsageError("--steps chooses the HTML's histograms: pass --html OUT.html too")
    html = Path(request.html) if request.html is not None else None
    log = Path(request.log)
    if html is not None:
        if html_page is None:
            raise TypeError("run_report: writing html needs html_page (render.html.run_html)")
        check_writable(html, request.force, [log])
    size = MAX_LOG_BYTES if request.max_log_size is None else request.max_log_size
    run = read_run_log(log, size)
    if announce is not None:
        for note in run.notes:
            announce(note)
    if html is not None:
        assert html_page is not None
        page = html_page(run, histogram_steps(run, request.steps))
        atomic_write(html, lambda tmp: _write_text(tmp, page), force=request.force, inputs=[log])
    return run


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
