"""Tables that fit any width: fit_table, the one layout engine every table goes through.

Width goes to what differs: a column whose value is the same on every row moves into one line above the
table ("zeros 0% · nan/inf 0"). Numbers are never cut and names keep their last components whole. To fit,
a table first shows its numbers with fewer significant digits (each number cell carries its forms, longest
first), then shortens its names (a tree's indentation narrows; a dotted name loses components from the
left: '…output.LayerNorm'), then hides columns, lowest priority first, and says so; with every hideable
column hidden, names keep only their last component; and where even that is too wide, each row becomes a
block of lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import RenderableType
from rich.text import Text

from modinspect.render.console.common import Trimmed, as_text
from modinspect.render.console.fasttable import FastColumn, FastTable
from modinspect.render.console.theme import Themed
from modinspect.render.text import (
    TableLayout,
    elide_inside,
    elide_left,
    last_component_width,
    wrap_words,
)


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
            style="mi.muted",
        )

    def parts(self, width: int) -> list[RenderableType]:
        """The shared line, the table, the note on hidden columns: what a renderer prints of it, in order."""
        parts: list[RenderableType] = []
        if self.shared:
            parts.append(
                Text("\n".join(wrap_words(" · ".join(self.shared), width, 2)), style="mi.muted")
            )
        parts.append(self.table)
        note = self.note(width)
        if note is not None:
            parts.append(note)
        return parts


def _cell_forms(cell: Cell) -> tuple[str, ...]:
    if isinstance(cell, Forms):
        return cell.forms
    if isinstance(cell, Name):
        return (cell.full(),)
    return (cell.plain if isinstance(cell, Text) else cell,)


def cell_at(cell: Cell, level: int) -> str:
    """The form of `cell` shown at precision `level` (0: the longest), its last form where it has fewer."""
    forms = _cell_forms(cell)
    return forms[min(level, len(forms) - 1)]


def _column_width(col: Column, cells: list[Cell], level: int) -> int:
    lines = [line for c in cells for line in cell_at(c, level).split("\n")]
    return max([cell_len(col.title), *(cell_len(line) for line in lines)])


def _names(cells: Sequence[Cell]) -> list[Name]:
    return [
        c if isinstance(c, Name) else Name(c.plain if isinstance(c, Text) else cell_at(c, 0))
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


def spark_room(
    columns: list[Column],
    rows: list[list[Cell]],
    width: int,
    layout: TableLayout | None,
    sparks: tuple[str, ...],
    most: int,
    dropped: tuple[str, ...] = (),
) -> int:
    """What a table's other columns leave to each sparkline column (the keys `sparks`), between 4 and `most`.

    The columns counted are those fit_table keeps: --columns' choice, less the ones it moves above the
    table (the same on every row). Sparkline cells are not measured (the rows may hold them empty: they are
    costly to draw); the caller names in `dropped` the sparkline columns that move above the table. A name
    column counts at its full width, up to 48.
    """
    if layout is not None and layout.columns is not None:
        shown = choose_columns(columns, layout.columns)
    else:
        shown = [
            i
            for i, c in enumerate(columns)
            if not (
                c.key in dropped
                or (
                    c.key not in sparks
                    and c.lift
                    and c.kind != "name"
                    and len(rows) > 1
                    and len({cell_at(r[i], 0) for r in rows}) == 1
                )
            )
        ]
    spark_columns = [i for i in shown if columns[i].key in sparks]
    if not spark_columns:
        return most
    fixed = 3 * (len(shown) - 1)
    for i in shown:
        if i in spark_columns:
            continue
        cells = [cell_len(line) for r in rows for line in cell_at(r[i], 0).split("\n")]
        w = max([cell_len(columns[i].title), *cells])
        fixed += min(w, 48) if columns[i].kind == "name" else w
    return max(4, min(most, (width - fixed) // len(spark_columns)))


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
            and len({cell_at(c, 0) for c in by_col[i]}) == 1
        ]
    candidates = [i for i in keep if i not in shared]
    shared_words = tuple(
        dict.fromkeys(_shared_words(columns[i], cell_at(by_col[i][0], 0)) for i in shared)
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
        ],
        header_style="mi.header",
    )
    cells = [
        _name_texts(by_col[i], w)  # type: ignore[arg-type]
        if columns[i].kind == "name"
        else [_fitted_cell(c, level) for c in by_col[i]]
        for i, w in zip(shown, ws, strict=True)
    ]
    for row in zip(*cells, strict=True):
        table.add_row(*row)
    return FittedTable(Themed(Trimmed(table)), hidden, full, shared)  # on any console


def _fitted_cell(cell: Cell, level: int) -> Text:
    if isinstance(cell, Forms):
        return Text(cell_at(cell, level), style=cell.style)
    return as_text(cell)  # type: ignore[arg-type]


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
            text.append_text(n.text("\n".join(wrap_at_dots(n.name or "(model)", width))))
        values = [
            f"{columns[i].title} {cell_at(by_col[i][r], 0) or '—'}"
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


def wrap_at_dots(name: str, width: int) -> list[str]:
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
