"""`modinspect report` as a library call: read a watch log into the RunReport the command shows.

    run = run_report(ReportRequest("runs/stats.jsonl"))
    run.first_bad, [m.name for m in run.modules]

Two logs (`modinspect report A.jsonl B.jsonl`) are `run_comparison(request, other)`: a RunComparison.

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
from modinspect.reports.compare import RunComparison

__all__ = ["HtmlPage", "ReportRequest", "run_comparison", "run_report"]

HtmlPage = Callable[[RunReport, tuple[int, ...]], str]
"""Renders a run and the steps to show histograms at as one HTML page (render.html.run_html); an empty
tuple lets the page spread its histograms over the run."""
ComparisonPage = Callable[[RunComparison, tuple[int, ...]], str]
"""Renders two runs on one HTML page (render.html.comparison_html)."""


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
    from modinspect.watching.runlog import histogram_steps

    html = _check_html(request, [Path(request.log)], html_page is not None)
    run = _read(request, request.log, announce)
    if html is not None:
        assert html_page is not None
        # No --steps: the page spreads its histograms over the run itself (an empty tuple).
        chosen = histogram_steps(run, request.steps) if request.steps is not None else ()
        _write(html, html_page(run, chosen), request, [Path(request.log)])
    return run


def run_comparison(
    request: ReportRequest,
    other: str | Path,
    announce: Announce | None = None,
    html_page: ComparisonPage | None = None,
) -> RunComparison:
    """Read two watch logs, `request.log` (run A) and `other` (run B), and pair them: `report A B`.

    Everything else is as `run_report`: the HTML page (both runs on the same axes) is refused before either
    log is read when it exists without `force` or is one of them; `--steps` must be logged in both runs.

    Args:
        request: run A's log and the options, as for `run_report`.
        other: run B's log.
        announce: hears both logs' notes, each naming its file.
        html_page: renders the page when `request.html` is set (the CLI passes the registry's `html` form).

    Returns:
        A RunComparison: both RunReports and their modules paired by name, with their last values.

    Raises:
        ModinspectError: a user error in either log, or an HTML file that exists.

    Example:
        >>> import pathlib, tempfile
        >>> logs = []
        >>> for lr in (0.01, 0.1):
        ...     model = torch.nn.Linear(4, 1)
        ...     optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        ...     logs.append(pathlib.Path(tempfile.mkdtemp()) / "stats.jsonl")
        ...     with modinspect.watch(model, every=2, log=logs[-1], optimizer=optimizer) as w:
        ...         for _ in range(4):
        ...             loss = model(torch.randn(8, 4)).pow(2).mean()
        ...             w.log_loss(loss)
        ...             loss.backward()
        ...             optimizer.step()
        ...             optimizer.zero_grad()
        >>> pair = modinspect.run_comparison(modinspect.ReportRequest(logs[0]), logs[1])
        >>> pair.a.steps == pair.b.steps, pair.b.lr
        (True, (0.1, 0.1))
    """
    from modinspect.watching.compare import compare_runs
    from modinspect.watching.runlog import histogram_steps

    logs = [Path(request.log), Path(other)]
    html = _check_html(request, logs, html_page is not None)
    pair = compare_runs(_read(request, logs[0], announce), _read(request, logs[1], announce))
    if html is not None:
        assert html_page is not None
        chosen: tuple[int, ...] = ()
        if request.steps is not None:
            chosen = histogram_steps(pair.a, request.steps)
            histogram_steps(pair.b, request.steps)  # each step must be in both runs
        _write(html, html_page(pair, chosen), request, logs)
    return pair


def _check_html(request: ReportRequest, logs: list[Path], can_render: bool) -> Path | None:
    """The HTML file to write, refused before any log is read when it exists (without force) or is a log."""
    from modinspect.files import check_writable

    if request.steps is not None and request.html is None:
        raise UsageError("--steps chooses the HTML's histograms: pass --html OUT.html too")
    if request.html is None:
        return None
    if not can_render:
        raise TypeError("writing html needs html_page (the registry's `html` form)")
    html = Path(request.html)
    check_writable(html, request.force, logs)
    return html


def _read(request: ReportRequest, log: str | Path, announce: Announce | None) -> RunReport:
    from modinspect.watching.runlog import MAX_LOG_BYTES, read_run_log

    size = MAX_LOG_BYTES if request.max_log_size is None else request.max_log_size
    run = read_run_log(Path(log), size)
    if announce is not None:
        for note in run.notes:
            announce(note)
    return run


def _write(html: Path, page: str, request: ReportRequest, logs: list[Path]) -> None:
    from modinspect.files import atomic_write

    atomic_write(html, lambda tmp: _write_text(tmp, page), force=request.force, inputs=logs)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
