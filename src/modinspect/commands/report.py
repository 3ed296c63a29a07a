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
    """What `modinspect report LOG` is asked to do; every field but `log` has the CLI's default.

    Attributes:
        log: a watch log (JSON lines), as modinspect.watch writes it.
        html: also write one self-contained HTML page here.
        steps: the HTML's histogram steps; None: the first, the middle and the last.
        force: overwrite `html` if it exists.
        max_log_size: the largest log read, in bytes; None: 128 MiB.
    """

    log: str | Path
    html: str | Path | None = None
    steps: tuple[int, ...] | None = None
    force: bool = False
    max_log_size: int | None = None


def run_report(
    request: ReportRequest,
    announce: Announce | None = None,
    html_page: HtmlPage | None = None,
) -> RunReport:
    """Read and validate a watch log, and write the HTML page when asked: what `modinspect report LOG` runs.

    The HTML file is refused before the log is read when it exists without `force` or is the log itself.

    Args:
        request: a ReportRequest (every field but `log` has the CLI's default).
        announce: hears the log's notes (a partial last line skipped, unknown record kinds).
        html_page: renders the page when `request.html` is set (the CLI passes render.html.run_html).

    Returns:
        The RunReport of `read_run_log`.

    Raises:
        ModinspectError: a user error (a log that is not a watch log, an HTML file that exists).

    Example:
        >>> import pathlib, tempfile
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "stats.jsonl"
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> with modinspect.watch(model, every=2, log=log) as w:
        ...     for _ in range(4):
        ...         loss = model(torch.randn(8, 4)).pow(2).mean()
        ...         loss.backward()
        ...         optimizer.step()
        ...         optimizer.zero_grad()
        ...         w.step(loss)
        >>> run = modinspect.run_report(modinspect.ReportRequest(log))
        >>> run.steps, run.first_bad
        ((2, 4), None)
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
        # No --steps: the page spreads its histograms over the run itself (an empty tuple).
        chosen = histogram_steps(run, request.steps) if request.steps is not None else ()
        page = html_page(run, chosen)
        atomic_write(html, lambda tmp: _write_text(tmp, page), force=request.force, inputs=[log])
    return run


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
