"""Reports -> rich renderables. The only module in modinspect that imports rich."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from modinspect.names import collapse_groups, collapse_indices, collapse_names
from modinspect.render.text import (
    TableLayout,
    bad_step_text,
    bpw_text,
    elide_inside,
    elide_left,
    human_bytes,
    human_count,
    last_component_width,
    num,
    num_forms,
    percent,
    ratio_forms,
    series_sparkline,
    shape_text,
    sparkline,
    visible_report,
    wrap_words,
)
from modinspect.reports import (
    DiffReport,
    FrozenParams,
    LoadReport,
    ModuleNode,
    ModuleShapes,
    NonfiniteOrigin,
    RunReport,
    StatsReport,
    TensorRow,
    TreeReport,
)
from modinspect.reports.doctor import DoctorReport


def make_console(file: IO[str] | None = None, width: int | None = None) -> Console:
    """A console that colours only terminals, honours NO_COLOR, and does not wrap piped output at 80.

    Every string it prints is text, never markup or emoji codes: names come from files ('[/]' is a tensor
    name, not a closing tag). The renderers build rich Text objects anyway (see `_text`); this is the net.
    """
    stream = file or sys.stdout
    if width is None and not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(
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


def _text(value: str | Text, style: str = "") -> Text:
    """A str as rich Text, so no console parses it as markup: every table cell passes through here.

    Control characters are escaped before: every renderer starts with `visible_report(report)`.
    """
    return value if isinstance(value, Text) else Text(value, style=style)


# --- Tables that fit any width -------------------------------------------------------------------
# Every table goes through fit_table, the one layout engine. Width goes to what differs: a column whose
# value is the same on every row moves into one line above the table ("zeros 0% · nan/inf 0"). Numbers
# are never cut and names keep their last components whole. To fit, a table first shows its numbers with
# fewer significant digits (each number cell carries its forms, longest first), then shortens its names
# (a tree's indentation narrows; a dotted name loses components from the left: '…output.LayerNorm'),
# then hides columns, lowest priority first, and says so; with every hideable column hidden, names keep
# only their last component; and where even that is too wide, each row becomes a block of lines.


@dataclass(frozen=True)
class Column:
    """One column of a fitted table. `kind`: 'name' (shortened to fit, see Name), 'number' or 'text' (never cut).

    `key`: what --columns calls it (the title when empty). `shared`: the words for a value every row has,
    in the line above the table (('—', 'no ReLU-family modules')); otherwise it reads 'title value'.
    """

    title: str
    kind: str = "number"
    hide: int = 0  # 0: always shown; otherwise hidden when too wide, the highest first
    style: str = ""
    justify: str = ""  # default: numbers right, names and text left
    key: str = ""
    shared: tuple[tuple[str, str], ...] = ()
    lift: bool = True  # False: stays in the table even where every row has the same value
    about: str = (
        ""  # what the shared line calls it, where the title alone is ambiguous ('last std')
    )

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.title.lower(), self.key.lower()) if self.key else (self.title.lower(),)


@dataclass(frozen=True)
class Forms:
    """A cell's renderings, longest first: '0.08308', '0.0831', '0.083'."""

    forms: tuple[str, ...]
    style: str = ""


@dataclass(frozen=True)
class Name:
    """A name cell: the full dotted `name`, with a `mark` after it (' ◀').

    `tree`: shown as its last component indented two spaces a level, so the column reads as the module
    tree ('(model)' for the root); narrowed by indenting one space a level, then by capping the depth.
    Otherwise the dotted name, shortened from the left ('…attention.output.LayerNorm').
    """

    name: str
    tree: bool = False
    mark: str = ""
    style: str = ""
    mark_style: str = ""

    @property
    def leaf(self) -> str:
        return self.name.rpartition(".")[2] if self.name else "(model)"

    @property
    def depth(self) -> int:
        return self.name.count(".") + 1 if self.name else 0

    def full(self) -> str:
        return ("  " * self.depth + self.leaf if self.tree else self.name) + self.mark

    def floor(self, hard: bool) -> int:
        """The narrowest this name goes before columns are hidden (`hard`: after): its last component whole."""
        if self.tree:
            return (0 if hard else self.depth) + cell_len(self.leaf) + cell_len(self.mark)
        if hard:
            return last_component_width(self.name) + cell_len(self.mark)
        last_two = ".".join(self.name.split(".")[-2:])
        return min(cell_len(self.name), cell_len(last_two) + (last_two != self.name)) + cell_len(
            self.mark
        )

    def text(self, shown: str) -> Text:
        text = Text(shown, style=self.style)
        if self.mark:
            text.append(self.mark, style=self.mark_style or self.style)
        return text


Cell = str | Text | Forms | Name


@dataclass(frozen=True)
class FittedTable:
    table: RenderableType
    hidden: tuple[str, ...]  # titles of the columns left out
    full_width: int  # the width that shows every column at full precision
    shared: tuple[str, ...] = ()  # 'zeros 0%': the columns every row has the same value in

    def note(self, width: int) -> Text | None:
        """'columns hidden at 80 columns: type, hist (--wide or COLUMNS=131 shows them; --json has every value)'."""
        if not self.hidden:
            return None
        them = "them" if len(self.hidden) > 1 else "it"
        return Text(
            f"columns hidden at {width} columns: {', '.join(self.hidden)} (--wide or COLUMNS="
            f"{self.full_width} shows {them}; --json has every value)",
            style="dim",
        )

    def parts(self, width: int) -> list[RenderableType]:
        """The shared line, the table, the note on hidden columns: what a renderer prints of it, in order."""
        parts: list[RenderableType] = []
        if self.shared:
            parts.append(
                Text("\n".join(wrap_words(" · ".join(self.shared), width, 2)), style="dim")
            )
        parts.append(self.table)
        note = self.note(width)
        if note is not None:
            parts.append(note)
        return parts


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


def _cell_forms(cell: Cell) -> tuple[str, ...]:
    if isinstance(cell, Forms):
        return cell.forms
    if isinstance(cell, Name):
        return (cell.full(),)
    return (cell.plain if isinstance(cell, Text) else cell,)


def _at(cell: Cell, level: int) -> str:
    forms = _cell_forms(cell)
    return forms[min(level, len(forms) - 1)]


def _column_width(col: Column, cells: list[Cell], level: int) -> int:
    lines = [line for c in cells for line in _at(c, level).split("\n")]
    return max([cell_len(col.title), *(cell_len(line) for line in lines)])


def _names(cells: Sequence[Cell]) -> list[Name]:
    return [
        c if isinstance(c, Name) else Name(c.plain if isinstance(c, Text) else _at(c, 0))
        for c in cells
    ]


def _name_texts(names: list[Name], width: int) -> list[Text]:
    """Each name as shown in a column `width` wide: a tree's indentation narrowed evenly, dotted names from the left."""
    trees = [n for n in names if n.tree]
    step, cap = 2, max((n.depth for n in trees), default=0)
    if trees:

        def fits(step: int, cap: int) -> bool:
            return all(
                step * min(n.depth, cap) + cell_len(n.leaf) + cell_len(n.mark) <= width
                for n in trees
            )

        choices = [(2, cap), *((1, c) for c in range(cap, -1, -1))]
        step, cap = next((choice for choice in choices if fits(*choice)), (1, 0))
    shown = [
        " " * (step * min(n.depth, cap)) + elide_left(n.leaf, width - cell_len(n.mark))
        if n.tree
        else elide_left(n.name, width - cell_len(n.mark))
        for n in names
    ]
    # Names shortened alike ('…c_attn.weight' for h.0, h.1 and h.2) keep their start instead: their difference.
    seen: dict[str, set[str]] = {}
    for n, s in zip(names, shown, strict=True):
        if not n.tree and "…" in s:
            seen.setdefault(s, set()).add(n.name)
    alike = {s for s, full in seen.items() if len(full) > 1}
    if alike:
        shown = [
            elide_inside(n.name, width - cell_len(n.mark)) if s in alike else s
            for n, s in zip(names, shown, strict=True)
        ]
    return [n.text(s) for n, s in zip(names, shown, strict=True)]


def choose_columns(columns: list[Column], wanted: tuple[str, ...]) -> list[int]:
    """The indices --columns names (the name column always), in the table's order; an unknown name is a usage error."""
    from modinspect.errors import UsageError

    by_key = {k: i for i, c in enumerate(columns) for k in c.keys}
    unknown = [w for w in wanted if w.strip().lower() not in by_key]
    if unknown:
        names = ", ".join(c.key or c.title for c in columns if c.kind != "name")
        raise UsageError(f"--columns: no column '{unknown[0]}' in this table; choose from {names}")
    picked = {by_key[w.strip().lower()] for w in wanted}
    return [i for i, c in enumerate(columns) if c.kind == "name" or i in picked]


def _shared_words(col: Column, value: str) -> str:
    return dict(col.shared).get(value) or f"{col.about or col.title} {value or '—'}"


def fit_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    width: int,
    layout: TableLayout | None = None,
) -> FittedTable:
    """A table of `rows` no wider than `width`, whatever it takes short of cutting a number or a name's last part.

    `layout`: --wide (every column, whole, at any width) and --columns (those columns only, none moved
    above the table).
    """
    layout = layout or TableLayout()
    columns = list(columns)
    by_col = [[row[i] for row in rows] for i in range(len(columns))]
    for i, c in enumerate(columns):
        if c.kind == "name":
            by_col[i] = list(_names(by_col[i]))
    keep = (
        choose_columns(columns, layout.columns)
        if layout.columns is not None
        else list(range(len(columns)))
    )
    shared: list[int] = []
    if layout.columns is None and not layout.wide and len(rows) > 1:
        shared = [
            i
            for i in keep
            if columns[i].kind != "name"
            and columns[i].lift
            and len({_at(c, 0) for c in by_col[i]}) == 1
        ]
    candidates = [i for i in keep if i not in shared]
    shared_words = tuple(
        dict.fromkeys(_shared_words(columns[i], _at(by_col[i][0], 0)) for i in shared)
    )  # once each
    levels = max((len(_cell_forms(c)) for cells in by_col for c in cells), default=1)
    is_name = [c.kind == "name" for c in columns]

    def widths(shown: list[int], level: int, floor: str) -> list[int]:
        ws = []
        for i in shown:
            if is_name[i] and floor != "full":
                hard = floor == "hard"
                ws.append(max([cell_len(columns[i].title), *(n.floor(hard) for n in by_col[i])]))  # type: ignore[union-attr]
            else:
                ws.append(_column_width(columns[i], by_col[i], level))
        return ws

    def total(
        ws: list[int],
    ) -> int:  # SIMPLE_HEAD: a padding, a blank separator and a padding between columns
        return sum(ws) + 3 * (len(ws) - 1)

    full = total(widths(candidates, 0, "full"))
    if layout.wide:
        return _build(
            columns, by_col, candidates, 0, widths(candidates, 0, "full"), (), full, shared_words
        )
    order = sorted((i for i in candidates if columns[i].hide), key=lambda i: -columns[i].hide)
    for dropped in range(len(order) + 1):
        shown = [i for i in candidates if i not in order[:dropped]]
        floors = ("soft", "hard") if dropped == len(order) else ("soft",)
        tries = [(level, floor) for floor in ("full", *floors) for level in range(levels)]
        for level, floor in tries:
            ws = widths(shown, level, floor)
            if total(ws) <= width:
                if floor != "full":  # the names get what the other columns leave
                    for k, i in enumerate(shown):
                        if is_name[i]:
                            ws[k] = min(
                                width - total(ws) + ws[k], _column_width(columns[i], by_col[i], 0)
                            )
                hidden = tuple(columns[i].title for i in order[:dropped])
                return _build(columns, by_col, shown, level, ws, hidden, full, shared_words)
    return FittedTable(_vertical(columns, by_col, candidates, width), (), full, shared_words)


def _build(
    columns: list[Column],
    by_col: list[list[Cell]],
    shown: list[int],
    level: int,
    ws: list[int],
    hidden: tuple[str, ...],
    full: int,
    shared: tuple[str, ...],
) -> FittedTable:
    table = FastTable(
        [
            FastColumn(
                columns[i].title,
                justify=columns[i].justify or ("right" if columns[i].kind == "number" else "left"),
                style=columns[i].style,
                max_width=w,
                overflow="crop",
            )
            for i, w in zip(shown, ws, strict=True)
        ]
    )
    cells = [
        _name_texts(by_col[i], w)  # type: ignore[arg-type]
        if columns[i].kind == "name"
        else [_fitted_cell(c, level) for c in by_col[i]]
        for i, w in zip(shown, ws, strict=True)
    ]
    for row in zip(*cells, strict=True):
        table.add_row(*row)
    return FittedTable(Trimmed(table), hidden, full, shared)


def _fitted_cell(cell: Cell, level: int) -> Text:
    if isinstance(cell, Forms):
        return Text(_at(cell, level), style=cell.style)
    return _text(cell)  # type: ignore[arg-type]


def _vertical(
    columns: list[Column], by_col: list[list[Cell]], shown: list[int], width: int
) -> Text:
    """Each row as a block: its full name (wrapped at dots, indented), then 'title value · title value' wrapped."""
    text = Text()
    rows = len(by_col[0]) if by_col else 0
    for r in range(rows):
        if r:
            text.append("\n")
        name_cols = [i for i in shown if columns[i].kind == "name"]
        for i in name_cols:
            n = by_col[i][r]
            assert isinstance(n, Name)
            text.append_text(n.text("\n".join(_wrap_at_dots(n.name or "(model)", width))))
        values = [
            f"{columns[i].title} {_at(by_col[i][r], 0) or '—'}"
            for i in shown
            if columns[i].kind != "name"
        ]
        lines: list[str] = []
        for pair in values:  # wrapped between pairs: a title stays with its value
            if lines and cell_len(lines[-1]) + 3 + cell_len(pair) <= width - 2:
                lines[-1] += " · " + pair
            else:
                lines.append(pair)
        text.append("".join(f"\n  {line}" for line in lines))
    return text


def _wrap_at_dots(name: str, width: int) -> list[str]:
    """A long name on several lines, each cut after a dot, the lines after the first indented two spaces."""
    lines: list[str] = []
    current = ""
    for part in name.split("."):
        piece = part if not current else "." + part
        room = width - (2 if lines else 0)
        if current and cell_len(current) + cell_len(piece) > room:
            lines.append(current)
            current = piece
        else:
            current += piece
        while (
            cell_len(current) > room > 0
        ):  # a component longer than a line: cut it, nothing is lost
            lines.append(current[:room])
            current = current[room:]
    lines.append(current)
    return [lines[0], *("  " + line for line in lines[1:])]


@dataclass(frozen=True)
class FastColumn:
    """A column of FastTable: what rich's Table.add_column takes, for one-line cells."""

    title: str
    justify: str = "left"
    style: str = ""
    min_width: int | None = None
    max_width: int | None = None
    overflow: str = "ellipsis"


class FastTable:
    """A SIMPLE_HEAD table of one-line Text cells, laid out as rich's Table lays it out when it fits.

    Rich's Table measures and renders every cell through its whole layout machinery: about 0.6 ms a row,
    22 s for the 35,000 modules one 10 MB watch-log line can hold. Where every cell is one line and the
    table fits at its natural widths, the layout is simple (each column as wide as its widest cell,
    clamped to its min/max width, three cells between columns) and written here directly on a console
    without colour (pipes, CI logs, NO_COLOR); otherwise it is handed to rich's Table, unchanged. A test
    compares the two on thousands of random tables.
    """

    def __init__(self, columns: Sequence[FastColumn], header_style: str = "bold") -> None:
        self.columns = list(columns)
        self.header_style = header_style
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: Text | str) -> None:
        self.rows.append([_text(c) for c in cells])

    def rich_table(self) -> Table:
        table = Table(
            box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style=self.header_style
        )
        for c in self.columns:
            table.add_column(
                c.title,
                justify=c.justify,  # type: ignore[arg-type]
                style=c.style or None,
                no_wrap=True,
                min_width=c.min_width,
                max_width=c.max_width,
                overflow=c.overflow,  # type: ignore[arg-type]
            )
        for row in self.rows:
            table.add_row(*row)
        return table

    def _widths(self) -> list[int] | None:
        widths = []
        for i, c in enumerate(self.columns):
            cells = [row[i].plain for row in self.rows]
            if any("\n" in p for p in cells) or "\n" in c.title:
                return None
            width = max([cell_len(c.title), *map(cell_len, cells)])
            if c.min_width is not None:
                width = max(width, c.min_width)
            if c.max_width is not None:
                width = min(width, c.max_width)
            widths.append(max(width, 1))
        return widths

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[Segment | Table]:
        widths = None if console.color_system is not None or options.ascii_only else self._widths()
        total = sum(widths) + 3 * (len(widths) - 1) if widths else 0
        if (
            widths is None or total > options.max_width
        ):  # styles, ASCII-only box, wrapping: rich does it
            yield self.rich_table()
            return
        # No colour: only the text matters, so each line is one plain string.
        yield Segment(self._line([c.title for c in self.columns], widths) + "\n")
        yield Segment("─" * total + "\n")
        for row in self.rows:
            yield Segment(self._line([cell.plain for cell in row], widths) + "\n")

    def _line(self, cells: list[str], widths: list[int]) -> str:
        parts = []
        for cell, width, column in zip(cells, widths, self.columns, strict=True):
            if (
                column.justify == "right"
            ):  # as rich's Text.wrap justifies right: trailing spaces go first
                cell = cell.rstrip()
            size = len(cell) if cell.isascii() else cell_len(cell)
            if size > width:
                cut = Text(cell)
                cut.truncate(width, overflow=column.overflow)  # type: ignore[arg-type]
                cell, size = cut.plain, cell_len(cut.plain)
            room = " " * (width - size)
            parts.append(room + cell if column.justify == "right" else cell + room)
        return "   ".join(parts)


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
    return _ProgressBar(total, description)


class _ProgressBar:
    def __init__(self, total: int, description: str) -> None:
        self.total, self.description = total, description
        self.progress: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda _n: None
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr, markup=False, emoji=False),
            transient=True,
        )
        self.progress.start()
        task = self.progress.add_task(self.description, total=self.total)
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def batch_progress(
    total: int, device: str
) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """`stats --batches N`: a batch counter with an ETA on stderr, on a terminal only; yields advance(batches)."""
    return _BatchProgress(total, device)


class _BatchProgress:
    def __init__(self, total: int, device: str) -> None:
        self.total, self.device = total, device
        self.progress: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda _n: None
        self.progress = Progress(
            TextColumn(f"running batches on {self.device}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr, force_terminal=True, markup=False, emoji=False),
            transient=True,
        )
        self.progress.start()
        task = self.progress.add_task("batches", total=self.total)
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _tensor_pieces(t: TensorRow) -> list[tuple[str, str]]:
    """A tensor's line as (text, style) pieces: rich's label and the plain writer's line are the same text."""
    pieces = [(t.short, "bold"), (f"  {shape_text(t.shape)}", "cyan"), (f"  {t.dtype}", "magenta")]
    if (
        t.logical_shape is not None
    ):  # a packed quantized weight: the float shape it stands for, and its scheme
        if t.logical_shape != t.shape:
            pieces.append((f"  = {shape_text(t.logical_shape)}", "cyan"))
        if t.scheme != t.dtype:  # torch.ao's qint8 says it once
            pieces.append((f"  {t.scheme}", "magenta"))
    bpw = bpw_text(t.bits_per_weight)
    if bpw is not None:
        pieces.append((f"  {bpw}", "magenta"))
    if t.alias_of is not None:
        pieces += [(f"  = {t.alias_of}", "yellow"), ("  (tied, counted once)", "dim")]
        return pieces
    pieces.append((f"  {human_bytes(t.nbytes)}", "dim"))
    if t.kind == "buffer":
        pieces.append(
            ("  buffer" if t.persistent is not False else "  buffer, non-persistent", "blue")
        )
    elif t.kind == "quant-aux":
        pieces.append((f"  quant-aux ({t.scheme})" if t.scheme else "  quant-aux", "blue"))
    elif t.requires_grad is False:
        pieces.append(("  frozen", "red"))
    return pieces


def _tensor_label(t: TensorRow) -> Text:
    return Text.assemble(*_tensor_pieces(t))


def _module_label(node: ModuleNode, report: TreeReport, is_root: bool, room: int = 10**6) -> Text:
    """A module's line; where it would be wider than `room`, its hyperparameters move to a line of their own."""
    row = node.row
    label = Text()
    if is_root:
        label.append(row.type or "(state dict)", style="bold green")
        if not report.module_known:
            label.append("  module classes unknown: built from key names", style="dim")
    else:
        name = node.short
        if node.repeat > 1:
            # "h.0 … h.11": the run's own names, relative to the parent shown above it.
            parent = node.row.name.rpartition(".")[0].rpartition(".")[2]
            last = (node.last_name or "").rpartition(".")[2]
            name = (
                f"{parent}.{node.short} … {parent}.{last}" if parent else f"{node.short} … {last}"
            )
        label.append(name, style="bold")
        if node.repeat > 1:
            label.append(f"  ×{node.repeat}", style="bold yellow")
        if row.type:
            label.append(f"  {row.type}", style="green")
    hyper = dict(report.extra_reprs).get(row.name) if report.extra_reprs else None
    hyper_at = len(label)
    if node.repeat > 1:
        label.append(
            f"  {human_count(row.params)} params each, {human_count(node.run_params)} in all",
            style="cyan",
        )
        label.append(f"  {human_bytes(node.run_bytes)}", style="dim")
    elif row.params or row.bytes:
        label.append(f"  {human_count(row.params)} params", style="cyan")
        label.append(f"  {human_bytes(row.bytes)}", style="dim")
    _place_hyper(label, hyper, hyper_at, room)
    if row.scheme is not None:
        bpw = f" · {row.bits_per_weight:.3g} bpw" if row.bits_per_weight is not None else ""
        label.append(f"  {row.scheme}{bpw}", style="magenta")
    if row.trainable is not None and row.params and row.trainable == 0:
        label.append("  frozen", style="red")
    elif row.trainable is not None and 0 < row.trainable < row.params:
        label.append(f"  {human_count(row.params - row.trainable)} frozen", style="red")
    if (
        row.training is not None
        and row.parent_training is not None
        and row.training != row.parent_training
    ):
        label.append("  train" if row.training else "  eval", style="yellow")
    if report.shapes is not None:
        _shapes_cells(label, _shapes_of(report).get(row.name), node.repeat > 1)
    if node.hidden:
        label.append(f"  (+{node.hidden} below --depth)", style="dim")
    return label


def _place_hyper(label: Text, hyper: str | None, at: int, room: int) -> None:
    """'Conv2d(3, 8, …)' in the line when it fits `room`; else '(3, 8, …)' on the next line, the counts kept whole."""
    if hyper is None:
        return
    inline = Text(f"({hyper})", style="green")
    if cell_len(label.plain) + cell_len(inline.plain) <= room:
        head, tail = label[:at], label[at:]
        label.truncate(0)
        label.append_text(head)
        label.append_text(inline)
        label.append_text(tail)
        return
    label.append_text(Text(f"\n({hyper})", style="green"))


def _shapes_of(report: TreeReport) -> dict[str, ModuleShapes]:
    assert report.shapes is not None
    return {m.name: m for m in report.shapes.modules}


def _shapes_cells(label: Text, m: ModuleShapes | None, each: bool) -> None:
    """A second line, '→ [1, 8, 16, 16]  111K MACs  out 8.0 KiB  saved 1.5 KiB', for a module the forward ran."""
    if m is not None and not m.calls and m.type in ("ModuleList", "ModuleDict"):
        return  # containers are never called: their members are
    if m is None or not m.calls:
        label.append("\nnot called", style="dim")
        return
    shapes = [shape_text(s) for s in m.output_shapes[:3]]
    if len(m.output_shapes) > 3:
        shapes.append(f"+{len(m.output_shapes) - 3} more")
    label.append(f"\n→ {', '.join(shapes) or 'no tensors'}", style="cyan")
    suffix = " each" if each else ""
    if m.calls > 1:
        label.append(f"  {m.calls} calls", style="yellow")
    if m.flops:
        label.append(f"  {human_count(m.macs)} MACs{suffix}", style="magenta")
    label.append(f"  out {human_bytes(m.output_bytes)}", style="dim")
    if m.saved_bytes:
        label.append(f"  saved {human_bytes(m.saved_bytes)}", style="dim")


def _add(tree: Tree, node: ModuleNode, report: TreeReport, room: int) -> None:
    # An explicit stack, not recursion: a name of 1,000 dotted parts is a tree 1,000 deep.
    stack = [(tree, node, room)]
    while stack:
        branch, at, space = stack.pop()
        for t in at.tensors:
            branch.add(_tensor_label(t))
        added = [
            (branch.add(_module_label(child, report, False, space - 4)), child, space - 4)
            for child in at.children
        ]
        stack.extend(reversed(added))


def tree_renderable(report: TreeReport, width: int = 200) -> RenderableType:
    """The module tree followed by the totals table.

    A label wider than `width` puts its hyperparameters on a line of their own; what is still too wide
    wraps at spaces (rich), never inside a number.
    """
    report = visible_report(report)
    root = Tree(_module_label(report.root, report, True, width), guide_style="dim")
    _add(root, report.root, report, width)
    return Trimmed(Group(_header(report), root, Text(""), totals_table(report, width)))


GUIDES = ("    ", "│   ", "├── ", "└── ")  # rich's Tree guides: space, continue, fork, end


def plain_tree_lines(report: TreeReport, width: int) -> list[str] | None:
    """The tree's lines exactly as rich renders them without colour, or None where only rich can.

    Rich lays out every label (about 0.15 ms a row): 100k tensors take 15 s. Without styles a tree is
    its guides and its labels' text, which this writes directly. It gives up (None) where rich would
    change the text: a line too wide for its column (rich wraps it) or a character that is not printable
    (rich strips control codes, expands tabs).
    """
    space, cont, fork, end = GUIDES
    lines: list[str] = []

    def emit(prefix: str, more: str, text: str, room: int) -> bool:
        first = True
        for line in text.split("\n"):
            if not line.isprintable() or (
                len(line) > room if line.isascii() else cell_len(line) > room
            ):
                return False
            lines.append((prefix if first else more) + line.rstrip())
            first = False
        return True

    if not emit("", "", _module_label(report.root, report, True, width).plain, width):
        return None
    # Depth first with an explicit stack, as _add: per open branch its numbered items, how many, its guides
    # and the room its labels have.
    stack: list[tuple[Iterator[tuple[int, TensorRow | ModuleNode]], int, str, int]] = []

    def push(node: ModuleNode, guides: str, room: int) -> None:
        items: list[TensorRow | ModuleNode] = [*node.tensors, *node.children]
        stack.append((enumerate(items, 1), len(items), guides, room - 4))

    push(report.root, "", width)
    while stack:
        items, count, guides, room = stack[-1]
        numbered = next(items, None)
        if numbered is None:
            stack.pop()
            continue
        i, item = numbered
        last = i == count
        if isinstance(item, ModuleNode):
            text = _module_label(item, report, False, room).plain
        else:
            text = "".join(piece for piece, _ in _tensor_pieces(item))
        if not emit(
            guides + (end if last else fork), guides + (space if last else cont), text, room
        ):
            return None
        if isinstance(item, ModuleNode) and (item.tensors or item.children):
            push(item, guides + (space if last else cont), room)
    return lines


def print_tree(out: Console, report: TreeReport) -> None:
    """`tree`'s view on `out`: rich's Tree on a styled console, the same text written directly on a plain one."""
    report = visible_report(report)
    width = out.width
    lines = None
    if out.color_system is None and not out.record and not out.options.ascii_only:
        lines = plain_tree_lines(report, width)
    if lines is None:
        out.print(tree_renderable(report, width))
        return
    out.print(Trimmed(_header(report)))
    out.file.write("\n".join(lines) + "\n")
    out.print(Trimmed(Group(Text(""), totals_table(report, width))))


def _header(report: TreeReport) -> Text:
    text = Text()
    text.append(report.source, style="bold")
    text.append(f"  ({report.format}", style="dim")
    if report.state_dict_key:
        text.append(f", state dict under '{report.state_dict_key}'", style="dim")
    if report.training is not None:
        text.append(f", {'training' if report.training else 'eval'} mode", style="dim")
    text.append(")", style="dim")
    if report.filter:
        text.append(f"  filter: {report.filter}", style="yellow")
    return text


def totals_table(report: TreeReport, width: int = 200) -> Text:
    """Aligned label / value / detail lines, without the trailing padding a rich Table adds in a pipe."""
    t = report.totals
    rows: list[tuple[str, str, str]] = []
    kind = "Parameters" if report.module_known else "Tensor elements"
    detail = ""
    if t.trainable is not None and t.frozen is not None:
        detail = f"trainable {t.trainable:,} · frozen {t.frozen:,}"
    elif not report.module_known:
        detail = "kinds unknown: parameters and buffers counted together"
        if t.buffers:
            detail = "kinds unknown, but for the standard buffers below"
    rows.append((kind, f"{t.params:,}", detail))
    if t.buffers is not None:
        rows.append(
            (
                "Buffers",
                f"{t.buffers:,}",
                f"persistent {t.persistent_buffers:,} · non-persistent {t.non_persistent_buffers:,}",
            )
        )
    rows.append(("Size", human_bytes(t.bytes), f"{t.bytes:,} bytes in {t.tensors:,} tensors"))
    rows += [
        (
            "By dtype" if i == 0 else "",
            f"{d.elements:,}",
            f"{d.dtype} · {human_bytes(d.bytes)}"
            + (f" · {bpw}" if (bpw := bpw_text(d.bits_per_weight)) else ""),
        )
        for i, d in enumerate(report.by_dtype)
    ]
    rows += [
        (
            "Quantized" if i == 0 else "",
            f"{d.elements:,}",
            f"{d.dtype} · {human_bytes(d.bytes)}"
            + (f" · {d.bits_per_weight:.3g} bpw" if d.bits_per_weight else "")
            + (" (auxiliary tensors included)" if i == len(report.by_scheme) - 1 else ""),
        )
        for i, d in enumerate(report.by_scheme)
    ]
    rows += [
        ("Tied" if i == 0 else "", "", " = ".join(reversed(g))) for i, g in enumerate(report.tied)
    ]
    rows += _shapes_rows(report)
    rows += [
        ("Other entries" if i == 0 else "", name, summary)
        for i, (name, summary) in enumerate(report.other_entries)
    ]
    aliases = _alias_names(report)
    metadata = [(k, v) for k, v in report.metadata if k not in aliases]
    rows += [("Metadata" if i == 0 else "", k, v[:80]) for i, (k, v) in enumerate(metadata)]
    rows += [("Notes" if i == 0 else "", "", note) for i, note in enumerate(report.notes)]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    text = Text()
    for i, (label, value, detail) in enumerate(rows):
        if i:
            text.append("\n")
        text.append(label.ljust(w0), style="bold")
        text.append("  " + value.rjust(w1))
        if detail:  # a long detail wraps under itself, a number never parted from its unit
            lines = wrap_words(detail, max(width - w0 - w1 - 4, 20))
            text.append("  " + ("\n" + " " * (w0 + w1 + 4)).join(lines), style="dim")
        elif not value:
            text.rstrip()
    text.rstrip()
    return text


def _shapes_rows(report: TreeReport) -> list[tuple[str, str, str]]:
    if report.shapes is None:
        return []
    t = report.shapes.totals
    mode = "training" if report.shapes.training else "eval"
    return [
        ("Input", human_bytes(t.input_bytes), report.shapes.inputs),
        (
            "MACs",
            human_count(t.macs),
            f"{t.macs:,} multiply-adds = {t.flops:,} FLOPs / 2, one forward ({mode} mode)",
        ),
        (
            "Forward",
            human_bytes(t.forward_bytes),
            f"{t.forward_bytes:,} bytes of leaf-module outputs",
        ),
        (
            "Backward",
            human_bytes(t.backward_bytes),
            f"{t.backward_bytes:,} bytes saved for backward, each storage once",
        ),
        (
            "Param bytes",
            human_bytes(t.param_bytes),
            f"{t.param_bytes:,} bytes in the stored dtypes, tied once; buffers {human_bytes(t.buffer_bytes)}",
        ),
    ]


def _alias_names(report: TreeReport) -> set[str]:
    return {name for group in report.tied for name in group}


def _module_name(name: str) -> str:
    return name or "(model)"


def _grad_cell(norm: float | None, nan: int, inf: int, flags: tuple[str, ...]) -> Cell:
    if nan or inf:
        return Text(f"nan {nan}" if nan else f"inf {inf}", style="bold red")
    return Forms(num_forms(norm), style=_grad_style(flags))


# Stats columns, and the order they give way in a narrow terminal (highest `hide` first).
STATS_COLUMNS = (
    Column("module", kind="name"),
    Column("type", kind="text", hide=8, style="green"),
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
    Column("hist", kind="text", hide=9, style="cyan"),
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
        dead_style = "yellow" if {"dead", "mostly-dead"} & set(m.flags) else ""
        mark = " ◀" if origin is not None and origin.module == m.name else ""
        name = Name(
            m.name, tree=True, mark=mark, style="bold red" if bad else "", mark_style="bold red"
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
                Text(f"{m.nan}/{m.inf}" if bad else "0", style="bold red" if bad else "dim"),
                Text(percent(m.dead_fraction), style=dead_style),
                _grad_cell(m.grad_norm, m.grad_nan, m.grad_inf, m.flags),
                _grad_cell(m.param_grad_norm, m.param_grad_nan, m.param_grad_inf, ()),
                sparkline(m.histogram),
            ]
        )
    fitted = fit_table(STATS_COLUMNS, rows, width, layout)
    idle = [_module_name(m.name) for m in report.modules if not m.calls]
    parts: list[RenderableType] = [_stats_header(report), *fitted.parts(width)]
    if idle:
        shown = ", ".join(idle[:6]) + (f" and {len(idle) - 6} more" if len(idle) > 6 else "")
        parts.append(Text(f"not called: {shown}", style="dim"))
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    parts.append(verdict(report))
    return Trimmed(Group(*parts))


def _grad_style(flags: tuple[str, ...]) -> str:
    if "exploding-grad" in flags:
        return "bold red"
    if "vanishing-grad" in flags:
        return "yellow"
    return ""


def _stats_header(report: StatsReport) -> Text:
    text = Text()
    text.append(report.source, style="bold")
    dtype = f", autocast {report.dtype}" if report.dtype else ""
    grads = f", backward on {loss_words(report.loss)}" if report.backward else ", forward only"
    text.append(
        f"  ({report.mode} mode, {report.device}{dtype}, {report.batches} batch(es){grads})",
        style="dim",
    )
    text.append(f"\ninputs: {report.inputs}", style="dim")
    if report.frozen is not None:
        text.append(
            "\n" + frozen_text(report.frozen), style="yellow" if report.frozen.params else "dim"
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
    return f"{_module_name(module or '')} ({typ})" if typ else _module_name(module or "")


def _shown(names: Sequence[str], limit: int = 8) -> str:
    collapsed = collapse_names(names)
    more = f" and {len(collapsed) - limit} more" if len(collapsed) > limit else ""
    return ", ".join(collapsed[:limit]) + more


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
        text += f"; passed on by {_shown(origin.passed_on)}"
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
        parts.append(f"{_shown(names)} ({typ}): {share} of {units} units dead")
    for flag, words in (
        ("exploding-grad", "exploding gradient norm"),
        ("vanishing-grad", "vanishing gradient norm"),
    ):
        by_type: dict[str, list[str]] = {}
        for m in report.modules:
            if flag in m.flags:
                by_type.setdefault(m.type, []).append(m.name)
        for typ, names in by_type.items():
            parts.append(f"{words} at {_shown(names, 5)} ({typ})")
    text = "; ".join(parts)
    if text.startswith(
        ("first ", "the ", "every ", "non-finite ")
    ):  # a sentence, not a module name
        text = text[0].upper() + text[1:]
    out = [text + ".", *lines]
    out += [f"Diagnosis: {d}." for d in report.diagnoses]
    return "\n".join(out)


def verdict(report: StatsReport) -> Text:
    style = "bold red" if report.nonfinite_found else "bold green"
    return Text("\n" + verdict_text(report), style=style)


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


def _name_line(name: str, rest: str, width: int) -> str:
    """'  name: rest', the name shortened from the left when the line would be too wide (never the numbers in
    `rest`, never the name's last component): where even that is too wide, `rest` goes on a line of its own."""
    room = width - 4 - cell_len(rest)
    if room >= last_component_width(name):
        return f"  {elide_left(name, room)}: {rest}"
    lines = _wrap_at_dots(name, width - 2)
    return "\n".join(f"  {line}" for line in lines) + f":\n    {rest}"


def _names_block(title: str, names: list[str], style: str, width: int = 200) -> Text:
    text = Text()
    text.append(f"{title} ({len(names)})\n", style=f"bold {style}")
    shown = collapse_indices(names)
    for name in shown[:40]:
        text.append(f"  {elide_left(name, width - 2)}\n")
    if len(shown) > 40:
        text.append(f"  … {len(shown) - 40} more (see --json)\n", style="dim")
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
    head.append("A ", style="bold")
    head.append(f"{report.a}  ({report.format_a})\n")
    head.append("B ", style="bold")
    head.append(f"{report.b}  ({report.format_b})\n")
    nan = "NaN equals NaN" if report.nan_equal else "NaN differs from everything"
    head.append(f"tolerance: {report.tolerance}; {nan}", style="dim")
    if report.bytewise:
        head.append(
            f"\n{report.bytewise} quantized tensor pairs compared byte for byte, not by value: "
            "'differing' counts the elements of the rows whose bytes differ",
            style="dim",
        )
    parts.append(head)
    summary = Text()
    summary.append(f"\n{report.compared} compared: {report.equal} equal", style="bold")
    if report.close:
        summary.append(f" ({len(report.close)} within tolerance, not identical)")
    summary.append(
        f", {len(report.changed)} changed", style="bold red" if report.changed else "bold"
    )
    structural = [
        (len(report.only_in_a), "only in A"),
        (len(report.only_in_b), "only in B"),
        (len(report.shape_mismatch), "shape mismatches"),
        (len(report.dtype_mismatch), "dtype mismatches"),
    ]
    summary.append(
        "; " + ", ".join(f"{n} {label}" for n, label in structural),
        style="bold red" if any(n for n, _ in structural) else "",
    )
    parts.append(summary)
    for hint in report.hints:
        parts.append(Text(f"hint: {hint}", style="yellow"))
    if report.changed:
        parts.append(Text("\nChanged, most severe first", style="bold"))
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
                    style="dim",
                )
            )
    if report.rollup or report.module_status:
        parts.append(_by_module(report, width, limit))
    if report.only_in_a:
        parts.append(_names_block("\nOnly in A", list(report.only_in_a), "red", width))
    if report.only_in_b:
        parts.append(_names_block("\nOnly in B", list(report.only_in_b), "red", width))
    for title, items in (
        ("Shape mismatches", report.shape_mismatch),
        ("Dtype mismatches", report.dtype_mismatch),
    ):
        if items:
            text = Text(f"\n{title} ({len(items)})\n", style="bold red")
            lines = [
                _name_line(names, f"{a} in A, {b} in B", width)
                for names, a, b in grouped_pairs([(m.name, m.a, m.b) for m in items])
            ]
            for line in lines[:limit]:
                text.append(f"{line}\n")
            if len(lines) > limit:
                text.append(f"  … {len(lines) - limit} more (see --json)\n", style="dim")
            text.rstrip()
            parts.append(text)
    if report.aliased:
        text = Text(
            f"\nTied names matched through their partner ({len(report.aliased)})\n", style="bold"
        )
        for name, via in report.aliased[:limit]:
            text.append(f"  {name} = {via}\n", style="dim")
        if len(report.aliased) > limit:
            text.append(f"  … {len(report.aliased) - limit} more (see --json)\n", style="dim")
        text.rstrip()
        parts.append(text)
    verdict_line = Text(
        "\nThe checkpoints differ." if report.differs else "\nNo differences within tolerance.",
        style="bold red" if report.differs else "bold green",
    )
    parts.append(verdict_line)
    return Trimmed(Group(*parts))


def _by_module(report: DiffReport, width: int, limit: int) -> Text:
    """'By module: 2 changed, 8 unchanged': each changed module with its counts, then the others' names collapsed.

    'unchanged: features.{0-7}, classifier' answers "did my freeze work?" at a glance.
    """
    status: dict[str, list[str]] = {}
    for m in report.module_status:
        status.setdefault(m.status, []).append(m.module or "(top level)")
    counts = ", ".join(f"{len(status.get(key, []))} {words}" for key, words in _MODULE_STATUS)
    text = Text(f"\nBy module{': ' + counts if report.module_status else ''}\n", style="bold")
    rolled = {r.module for r in report.rollup}
    for r in report.rollup[:limit]:
        rest = f"{r.changed} of {r.tensors} tensors changed, " + (
            "compared byte for byte" if r.max_abs_diff is None else f"max |Δ| {r.max_abs_diff:.1e}"
        )
        text.append(_name_line(r.module or "(top level)", rest, width) + "\n")
    if len(report.rollup) > limit:
        text.append(
            f"  … {len(report.rollup) - limit} more changed modules (see --json)\n", style="dim"
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
            text.append(f"  {line}\n", style="green" if key == "unchanged" else "red")
    text.rstrip()
    return text


_MODULE_STATUS = (
    ("changed", "changed"),
    ("unchanged", "unchanged"),
    ("only_in_a", "only in A"),
    ("only_in_b", "only in B"),
)


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
    head.append("model       ", style="bold")
    head.append(f"{report.model}\n")
    head.append("checkpoint  ", style="bold")
    head.append(report.checkpoint)
    parts.append(head)
    cast = {m.name for m in plan.cast}
    loaded = "loaded" if report.performed else "would load"
    rows: list[tuple[str, str, int, list[tuple[str, str]]]] = [
        (
            loaded,
            "green",
            len(plan.loaded) - len(cast),
            [(n, "") for n in collapse_indices([n for n in plan.loaded if n not in cast])],
        ),
        ("cast", "yellow", len(plan.cast), _cast_items(report)),
        ("tied", "green", len(plan.tied), [(f"{a.name} = {a.target}", "") for a in plan.tied]),
        (
            "mismatched",
            "red",
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
            "red",
            len(plan.missing),
            [(n, "") for n in collapse_indices(list(plan.missing))],
        ),
        (
            "unexpected",
            "red",
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
        rows_out.append([Text(status, style=f"bold {style}"), str(count), "\n".join(lines)])
    parts += fit_table(LOAD_COLUMNS, rows_out, width).parts(
        width
    )  # every key line is made to fit keys_w first
    for hint in plan.hints:
        parts.append(Text(f"hint: {hint}", style="yellow"))
    parts.append(Text(_load_outcome(report), style="bold red" if report.strict_failed else "bold"))
    return Trimmed(Group(*parts))


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


def _last(
    values: tuple[float | None, ...], bad: tuple[bool, ...], fmt: Callable[[float | None], str]
) -> Text:
    if bad and bad[-1]:
        return Text("nan/inf", style="bold red")
    return Text(fmt(values[-1]) if values else "—")


def run_renderable(
    report: RunReport, width: int = 200, layout: TableLayout | None = None
) -> RenderableType:
    """Per module, sparklines over the logged steps of std, ‖∇out‖ and dead fraction; then the first bad step.

    The three sparklines share what the other columns leave of `width` (one cell per step, or per run of
    steps); below 100 columns the type goes, below 90 the last values. The table is laid out by fit_table:
    a column the same on every row ('bad at', an empty 'dead') moves above it.
    """
    report = visible_report(report)
    wide = layout is not None and layout.wide
    show_type, show_last = width >= 100 or wide, width >= 90 or wide
    names = [Name(m.name, tree=True) for m in report.modules]
    name_w = min(max((cell_len(n.full()) for n in names), default=8) + 2, 48)  # + " ◀"
    type_w = min(max((len(m.type) for m in report.modules), default=4), 24)
    # Each column is followed by 3 cells (padding, SIMPLE_HEAD's blank divider, padding); a last value takes ≤ 9.
    fixed = (
        name_w
        + 3
        + (type_w + 3 if show_type else 0)
        + (3 * (9 + 3) if show_last else 0)
        + 3 * 3
        + 6
    )
    spark_w = len(report.steps) if wide else max(4, min(len(report.steps), (width - fixed) // 3))
    columns, rows = _run_table(report, names, spark_w, show_type, show_last)
    if not wide and (layout is None or layout.columns is None) and len(rows) > 1:
        # What moves above the table ('bad at 300', the last values every row shares, an empty dead column)
        # leaves its width to the sparklines.
        same = [
            i for i, c in enumerate(columns) if c.lift and len({_at(r[i], 0) for r in rows}) == 1
        ]
        freed = sum(
            12 if columns[i].title == "last" else 9 if columns[i].key == "bad_at" else 3
            for i in same
        )
        sparks = 3 - sum(columns[i].key == "dead" for i in same)
        wider = max(4, min(len(report.steps), (width - fixed + freed) // sparks))
        if wider != spark_w:
            spark_w = wider
            columns, rows = _run_table(report, names, spark_w, show_type, show_last)
    # 35,000 modules: FastTable writes them in about a second, where rich's Table took 22 s
    fitted = fit_table(columns, rows, width, layout)
    return Group(_run_header(report, spark_w), *fitted.parts(width), _run_verdict(report))


def _run_table(
    report: RunReport, names: list[Name], spark_w: int, show_type: bool, show_last: bool
) -> tuple[list[Column], list[list[Cell]]]:
    """The run table's columns and rows, each sparkline `spark_w` cells wide."""
    columns = [Column("module", kind="name")]
    if show_type:
        columns.append(Column("type", kind="text", style="green"))
    grad_title = "‖∇out‖ (log)" if spark_w >= 12 else "‖∇out‖"
    for title, key in (("std", "std"), (grad_title, "grad_norm"), ("dead", "dead")):
        # Sparklines are scaled per row: the same shape on every row is no shared value, but no dead fraction is.
        shared = (("", "no ReLU-family modules"),) if key == "dead" else ()
        columns.append(
            Column(title, kind="text", style="cyan", key=key, shared=shared, lift=key == "dead")
        )
        if show_last:
            about = f"last {title.removesuffix(' (log)')}"
            columns.append(
                Column(
                    "last",
                    key=f"{key}_last",
                    about=about,
                    shared=(("—", "no ReLU-family modules"),) if key == "dead" else (),
                )
            )
    columns.append(
        Column(
            "bad at",
            kind="text",
            justify="right",
            key="bad_at",
            shared=(("—", "no NaN/Inf in any module"),),
        )
    )
    origin = report.first_bad
    rows: list[list[Cell]] = []
    for m, name in zip(report.modules, names, strict=True):
        mark = " ◀" if origin is not None and origin.module == m.name else ""
        label = replace(
            name,
            mark=mark,
            style="bold red" if m.first_bad_step is not None else "",
            mark_style="bold red",
        )
        cells: list[Cell] = [label, Text(m.type)] if show_type else [label]
        for spark, last in (
            (series_sparkline(m.std, m.nonfinite, spark_w), _last(m.std, m.nonfinite, num)),
            (
                Text(
                    series_sparkline(m.grad_norm, m.grad_nonfinite, spark_w, log=True),
                    style=_grad_style(m.flags),
                ),
                _last(m.grad_norm, m.grad_nonfinite, num),
            ),
            (
                series_sparkline(
                    m.dead_fraction, (), spark_w, lo=0.0, hi=1.0
                ).strip()  # all blank: no value
                and series_sparkline(m.dead_fraction, (), spark_w, lo=0.0, hi=1.0),
                _last(m.dead_fraction, (), percent),
            ),
        ):
            cells += [spark, last] if show_last else [spark]
        cells.append(
            Text(
                "—" if m.first_bad_step is None else str(m.first_bad_step),
                style="bold red" if m.first_bad_step is not None else "dim",
            )
        )
        rows.append(cells)
    return columns, rows


def _run_header(report: RunReport, spark_w: int) -> Text:
    import datetime

    h = report.header
    text = Text()
    text.append(report.path, style="bold")
    ranks = f", {h.world_size} ranks" if h.world_size > 1 else ""
    text.append(
        f"  ({h.schema}: {h.model} on {h.device}{ranks}, every {h.every} steps)", style="dim"
    )
    try:
        started = datetime.datetime.fromtimestamp(h.started, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
    except (OverflowError, OSError, ValueError):  # a header's clock can be anything
        started = f"at unix time {h.started}"
    steps = report.steps
    span = f"steps {steps[0]} … {steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    text.append(f"\n{len(steps)} logged step(s), {span}, started {started}", style="dim")
    losses = [v for v in report.loss if v is not None]
    if losses:
        text.append(f"\nloss {num(losses[0])} → {num(losses[-1])}  ")
        # A null loss in a run that logs one was not finite (the schema writes NaN/Inf as null): mark it.
        text.append(
            series_sparkline(report.loss, tuple(v is None for v in report.loss), spark_w),
            style="cyan",
        )
    return text


def _run_verdict(report: RunReport) -> Text:
    bad = report.first_bad
    if bad is None:
        text = Text(f"\nNo NaN/Inf in {len(report.steps)} logged step(s).", style="bold green")
    else:
        text = Text("\n" + bad_step_text(bad), style="bold red")
    for flag, words in (("exploding-grad", "exploding"), ("vanishing-grad", "vanishing")):
        flagged = [_module_name(m.name) for m in report.modules if flag in m.flags]
        if flagged:
            text.append(
                f"\nGradient flow: {words} mean ‖∇out‖ at {', '.join(flagged[:5])}"
                + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "")
                + ".",
                style="yellow",
            )
    return text


# --- doctor ----------------------------------------------------------------------------------------

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _plain(text: str) -> str:
    """Names from a model or a file, with control characters shown as escapes (Text never reads markup)."""
    from modinspect.render.text import visible

    return visible(text)


def doctor_renderable(report: DoctorReport, width: int = 200) -> RenderableType:
    """Findings grouped by severity, most severe first: identifier and place, the message, the fix.

    Findings of one check on one module with the same message (a module's unused weight and bias) share a
    block that lists their attributes.
    """
    from rich.padding import Padding

    from modinspect.render.text import doctor_blocks, doctor_header, doctor_summary

    parts: list[RenderableType] = [Text(_plain(doctor_header(report)), style="bold")]
    for severity, blocks in doctor_blocks(report):
        style = _SEVERITY_STYLE[severity]
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
                Trimmed(Padding(Text(_plain(f"fix: {first.fix}"), style="dim"), (0, 0, 0, 6)))
            )
    if report.notes:
        parts.append(Text(""))
    for note in report.notes:
        parts.append(Text(_plain(f"note: {note}"), style="dim"))
    parts.append(Text("\n" + doctor_summary(report)))
    return Group(*parts)
