"""What every view shares: the console, text cells, trimmed lines, progress on stderr, name lists."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO

from rich.console import Console, ConsoleOptions, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.segment import Segment
from rich.text import Text

from modinspect.names import collapse_indices, collapse_names
from modinspect.render.console.theme import THEME


def make_console(file: IO[str] | None = None, width: int | None = None) -> Console:
    """A console that colours only terminals, honours NO_COLOR, and does not wrap piped output at 80.

    Every string it prints is text, never markup or emoji codes: names come from files ('[/]' is a tensor
    name, not a closing tag). The renderers build rich Text objects anyway (see `as_text`); this is the net.
    """
    stream = file or sys.stdout
    if width is None and not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200
    console = Console(
        file=stream,
        width=width,
        highlight=False,
        soft_wrap=False,
        markup=False,
        emoji=False,
        force_jupyter=False
        if file is not None
        else None,  # a given file gets the text, in a notebook too
    )
    console.push_theme(THEME)  # the views' style names ("mi.bad"), on top of rich's own
    return console


def as_text(value: str | Text, style: str = "") -> Text:
    """A str as rich Text, so no console parses it as markup: every table cell passes through here.

    Control characters are escaped before: every renderer starts with `visible_report(report)`.
    """
    return value if isinstance(value, Text) else Text(value, style=style)


class Trimmed:
    """A renderable's lines without the trailing padding a rich Table adds (so piped output and goldens are clean)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        lines = console.render_lines(self.renderable, options, pad=False)
        for line in lines:
            segments = list(line)
            while segments and not segments[-1].text.rstrip():
                segments.pop()
            if segments:
                last = segments[-1]
                segments[-1] = Segment(last.text.rstrip(), last.style, last.control)
            yield from segments
            yield Segment.line()


def progress(message: str) -> contextlib.AbstractContextManager[object]:
    """A spinner on stderr while slow work runs (building a model, loading weights, running batches).

    Only on a terminal: pipes and CI logs stay clean.
    """
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    return Console(file=sys.stderr, markup=False, emoji=False).status(message, spinner="dots")


def progress_bar(
    total: int, description: str
) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """A byte-counting progress bar on stderr, on a terminal only; yields an advance(nbytes) callable."""
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    return _TerminalProgress(total, description, columns)


def batch_progress(
    total: int, device: str
) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """`stats --batches N`: a batch counter with an ETA on stderr, on a terminal only; yields advance(batches)."""
    columns = (
        TextColumn(f"running batches on {device}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return _TerminalProgress(total, "batches", columns, force_terminal=True)


class _TerminalProgress:
    """One task's transient progress display on stderr, shown only when stderr is a terminal."""

    def __init__(
        self,
        total: int,
        description: str,
        columns: tuple[ProgressColumn, ...],
        force_terminal: bool | None = None,
    ) -> None:
        self.total, self.description = total, description
        self.columns, self.force_terminal = columns, force_terminal
        self.progress: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda _n: None
        self.progress = Progress(
            *self.columns,
            console=Console(
                file=sys.stderr, force_terminal=self.force_terminal, markup=False, emoji=False
            ),
            transient=True,
        )
        self.progress.start()
        task = self.progress.add_task(self.description, total=self.total)
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def module_name(name: str) -> str:
    """A module's name as shown: '(model)' for the root."""
    return name or "(model)"


def shown_names(names: Sequence[str], limit: int = 8) -> str:
    """Names collapsed by layer index, the first `limit` of them: 'h.{0-11}.mlp, lm_head and 3 more'."""
    collapsed = collapse_names(names)
    more = f" and {len(collapsed) - limit} more" if len(collapsed) > limit else ""
    return ", ".join(collapsed[:limit]) + more


def grouped_pairs(items: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(name, a, b) triples with the same (a, b), their names collapsed by layer index, in first-seen order.

    [('h.0.w', 'float32', 'float16'), ('h.1.w', 'float32', 'float16')] -> [('h.{0-1}.w', 'float32', 'float16')]
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for name, a, b in items:
        groups.setdefault((a, b), []).append(name)
    return [
        (names, a, b) for (a, b), members in groups.items() for names in collapse_indices(members)
    ]
