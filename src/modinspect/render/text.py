"""Number and size formatting shared by renderers (pure, no rich)."""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from modinspect.reports import BadStep
from modinspect.reports.doctor import DoctorReport, Finding

T = TypeVar("T")

# What a terminal would act on rather than show: C0 and C1 controls, DEL, and the bidirectional overrides,
# embeddings and isolates that reorder what follows them (U+202E shows 'cod.exe' as 'exe.doc').
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str) -> str:
    """`text` with every control character shown as an escape: 'a\\x1b[2J', 'd\\u202e.w'; else unchanged.

    What a human view shows of any string from a file or the user (names, types, paths, metadata,
    notes, error lines), so that none can clear the screen, set the window title or reorder a line.
    JSON keeps the exact strings: its own escaping is already safe.
    """
    if text.isprintable():  # the common case, in C: no control or format character at all
        return text
    return CONTROL.sub(_escape, text)


def visible_report(report: T) -> T:
    """`report` (a frozen dataclass of str/int/float/tuple) with `visible` applied to every string in it.

    The one place data strings pass on their way to a human view: each renderer starts here, so a field
    added later is escaped too. Objects without a string to change are returned as they are (no copy),
    and the walk uses its own stack: a module tree can be as deep as a name has dots.
    """
    if isinstance(report, str):
        return visible(report)  # type: ignore[return-value]
    if not _may_hold_text(type(report)):
        return report
    done: list[Any] = []
    # Frames: [object, its children, index of the next child, the children as escaped so far].
    stack: list[list[Any]] = [[report, _children(report), 0, []]]
    while stack:
        frame = stack[-1]
        obj, children, i, out = frame
        if i < len(children):
            frame[2] = i + 1
            child = children[i]
            if isinstance(child, str):
                out.append(child if child.isprintable() else visible(child))
            elif type(child) is tuple and _printable_rows(child):
                out.append(child)  # 200k tensor rows, checked at C speed
            elif child is not None and _may_hold_text(type(child)):
                stack.append([child, _children(child), 0, []])
            else:
                out.append(child)
            continue
        stack.pop()
        built = (
            obj if all(a is b for a, b in zip(out, children, strict=True)) else _rebuild(obj, out)
        )
        (stack[-1][3] if stack else done).append(built)
    return done[0]  # type: ignore[no-any-return]


def _printable_rows(rows: tuple[Any, ...]) -> bool:
    """Whether `rows`, all strings or all one dataclass with only str/None text fields, hold no control character.

    False means "walk them one by one" (mixed or nested rows, or something to escape).
    """
    if not rows:
        return True
    kinds = set(map(type, rows))
    if len(kinds) != 1:
        return False
    (cls,) = kinds
    if cls is str:
        return "".join(rows).isprintable()
    fields = _flat_fields(cls)
    if fields is None:
        return False
    return all(
        "".join(filter(None, map(operator.attrgetter(name), rows))).isprintable() for name in fields
    )


_FLAT: dict[type, tuple[str, ...] | None] = {}


def _flat_fields(cls: type) -> tuple[str, ...] | None:
    """A dataclass's text fields when each is a str or None (TensorRow, TensorDiff); else None."""
    if cls not in _FLAT:
        flat = None
        if dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls)
            names = _text_fields(cls)
            if all(hints[n] is str or hints[n] == (str | None) for n in names):
                flat = names
        _FLAT[cls] = flat
    return _FLAT[cls]


_TEXT_FIELDS: dict[type, tuple[str, ...]] = {}


def _text_fields(cls: type) -> tuple[str, ...]:
    """The fields of dataclass `cls` whose declared type can hold a str, directly or nested."""
    names = _TEXT_FIELDS.get(cls)
    if names is None:
        _PENDING.add(cls)
        try:
            hints = typing.get_type_hints(cls)
            names = tuple(
                f.name for f in dataclasses.fields(cls) if _hint_holds_text(hints[f.name])
            )
        finally:
            _PENDING.discard(cls)
        _TEXT_FIELDS[cls] = names
    return names


_PENDING: set[type] = set()  # classes whose fields are being worked out: a tree's node holds nodes


def _hint_holds_text(hint: Any) -> bool:
    if hint is str:
        return True
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint in _PENDING or bool(_text_fields(hint))
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) in (tuple, list, typing.Union):
        return any(_hint_holds_text(arg) for arg in typing.get_args(hint) if arg is not Ellipsis)
    return False


def _may_hold_text(cls: type) -> bool:
    if cls is tuple:
        return True
    return dataclasses.is_dataclass(cls) and bool(_text_fields(cls))


def _children(obj: Any) -> tuple[Any, ...]:
    if isinstance(obj, tuple):
        return obj
    return tuple(getattr(obj, name) for name in _text_fields(type(obj)))


def _rebuild(obj: Any, values: list[Any]) -> Any:
    if isinstance(obj, tuple):
        return tuple(values)
    return dataclasses.replace(obj, **dict(zip(_text_fields(type(obj)), values, strict=True)))


def human_count(n: int) -> str:
    """1234567 -> '1.2M'; small numbers stay exact."""
    if n < 1000:
        return str(n)
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


WHOLE_BYTE_BITS = frozenset({8.0, 16.0, 32.0, 64.0, 128.0})


def bpw_text(bits: float | None) -> str | None:
    """'4.5 bpw' where the bits per weight are not a whole-byte dtype's (quantized: GGUF's Q4_K), else None."""
    if bits is None or bits in WHOLE_BYTE_BITS:
        return None
    return f"{bits:.3g} bpw"


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(counts: tuple[int, ...], width: int = 8) -> str:
    """Histogram counts -> '▁▃█▅▂▁▁▁', merged down to `width` cells."""
    if not counts or not any(counts):
        return ""
    step = max(1, len(counts) // width)
    merged = [sum(counts[i : i + step]) for i in range(0, len(counts), step)]
    top = max(merged)
    return "".join(
        SPARKS[0] if c == 0 else SPARKS[max(1, round(c / top * (len(SPARKS) - 1)))] for c in merged
    )


def num(value: float | None, digits: int = 4) -> str:
    """Compact, to `digits` significant digits: 0.08308, -4.56e-05, 1.2e+04; '—' when absent.

    A narrow table asks for fewer digits (`num(0.0830812, 3)` is '0.0831') rather than cutting the text.
    """
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if 1e-3 <= abs(value) < 1e4:
        text = f"{value:.{digits}g}"
        return (
            text if "e" not in text else f"{value:.0f}"
        )  # 1e4 > |value| >= 10**digits: keep it whole
    text = f"{value:.{2 if digits >= 4 else 1}e}"
    if digits >= 3:
        return text
    mantissa, exponent = text.split("e")  # 2 digits: the exponent loses its padding too, -4.6e-5
    return f"{mantissa}e{exponent[0].replace('+', '')}{exponent[1:].lstrip('0') or '0'}"


def num_forms(value: float | None) -> tuple[str, ...]:
    """`value` at 4, 3 and 2 significant digits, longest first (duplicates dropped): a cell that can shrink."""
    return _distinct(num(value, d) for d in (4, 3, 2))


def count_forms(n: int) -> tuple[str, ...]:
    """161234567 -> ('161,234,567', '161M'): exact with separators, then as human_count has it."""
    return _distinct((f"{n:,}", human_count(n)))


def ratio_forms(part: int, whole: int) -> tuple[str, ...]:
    """'1/160', or '161M/161M' where the column is narrow."""
    return _distinct((f"{part:,}/{whole:,}", f"{human_count(part)}/{human_count(whole)}"))


def _distinct(forms: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for form in forms:
        if form not in out:
            out.append(form)
    return tuple(out)


def elide_middle(name: str, width: int) -> str:
    """'transformer.h.0.attn.c_attn.weight' -> 'transformer.h.0…c_attn.weight': both ends kept, cut at dots.

    Leading indentation (the stats table's tree) is kept; the name never gets shorter than it must.
    """
    if len(name) <= width:
        return name
    indent = name[: len(name) - len(name.lstrip(" "))]
    body, room = name[len(indent) :], width - len(indent) - 1
    if room < 2:
        return (indent + body)[: max(width - 1, 0)] + "…"
    parts = body.split(".")
    tail = parts[-1] if len(parts[-1]) <= room - 1 else ""
    for i in range(len(parts) - 2, 0, -1):  # whole trailing components, up to about half the room
        longer = ".".join(parts[i:])
        if len(longer) > max(room // 2, len(tail)):
            break
        tail = longer
    if not tail:
        tail = body[-(room // 2) :]
    head_room = room - len(tail)
    head = ""
    for i in range(1, len(parts)):
        longer = ".".join(parts[:i])
        if len(longer) > head_room:
            break
        head = longer
    if len(head) < head_room // 2:  # no dot boundary near: cut inside the component
        head = body[:head_room]
    return f"{indent}{head}…{tail}"


def elide_left(name: str, width: int) -> str:
    """'bert.encoder.layer.0.attention.output.LayerNorm' -> '…attention.output.LayerNorm': the last components whole.

    Names differ at their ends ('…LayerNorm.bias', '…LayerNorm.weight'), so the end is what is kept: as many
    trailing dotted components as fit after the '…'. Only a last component wider than `width` is itself cut
    (keeping its end), the one case where no whole component fits.
    """
    if cell_width(name) <= width:
        return name
    if width < 2:
        return "…"[: max(width, 0)]
    parts = name.split(".")
    tail = ""
    for i in range(len(parts) - 1, -1, -1):
        longer = ".".join(parts[i:])
        if cell_width(longer) + 1 > width:
            break
        tail = longer
    if not tail:
        tail = name[-(width - 1) :]
        while cell_width(tail) > width - 1:
            tail = tail[1:]
    return "…" + tail


def elide_inside(name: str, width: int) -> str:
    """'transformer.h.0.attn.c_attn.weight' -> 'transformer.h.0…c_attn.weight': the last component whole, the start kept.

    For names that `elide_left` would show alike ('…c_attn.weight' for h.0, h.1, h.2): their difference is
    usually near the start. The room left after the last component goes to the start (cut at a dot where
    one is near), then to more whole components at the end.
    """
    if cell_width(name) <= width or "." not in name:
        return elide_left(name, width)
    parts = name.split(".")
    tail = parts[-1]
    if cell_width(tail) + 2 > width:
        return elide_left(name, width)
    for i in range(len(parts) - 2, 0, -1):  # whole components at the end, up to about half the room
        longer = ".".join(parts[i:])
        if cell_width(longer) > (width - 1) // 2:
            break
        tail = longer
    room = width - 1 - cell_width(tail)
    head = name[:room]
    while cell_width(head) > room:
        head = head[:-1]
    dot = head.rfind(".")
    if dot >= room // 2:
        head = head[:dot]
    return f"{head}…{tail}"


def last_component_width(name: str) -> int:
    """The narrowest `elide_left` keeps `name`'s last dotted component whole at: the whole name, or '…' + it."""
    last = name.rpartition(".")[2]
    return cell_width(name) if last == name else min(cell_width(name), 1 + cell_width(last))


def cell_width(text: str) -> int:
    """Terminal cells `text` takes (2 for a wide CJK character), as rich counts them, without importing rich."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(
        2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1
        for c in text
    )


@dataclasses.dataclass(frozen=True)
class TableLayout:
    """How the user asked for tables: `wide` shows every column, whole, whatever the terminal's width;
    `columns` names the columns to show (by title or key, `--columns mean,std,grad_norm`)."""

    wide: bool = False
    columns: tuple[str, ...] | None = None


def percent(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0%"
    if value < 0.001:
        return "<0.1%"
    return f"{value * 100:.1f}%"


def buckets(n: int, width: int) -> list[range]:
    """Indices 0..n-1 cut into at most `width` consecutive runs of equal length (the last may be shorter)."""
    size = max(1, -(-n // max(1, width)))
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


# A sparkline's marks: a step whose value was NaN (or not finite, where the log does not say which), and
# one whose value overflowed to Inf (a std's sum of squares, an Inf gradient).
NAN_MARK = "×"
OVERFLOW_MARK = "↑"


def series_sparkline(
    values: tuple[float | None, ...],
    bad: tuple[bool, ...] = (),
    width: int = 24,
    log: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    over: tuple[bool, ...] = (),
) -> str:
    """A series over steps -> one cell per step (or per run of steps when longer than `width`).

    A cell is the mean of its finite values on a scale from `lo` to `hi` (default: the series' own range,
    log10 when `log`; a flat series sits mid-height), '×' where a NaN/Inf was counted (`bad`), '↑' where
    the value overflowed to Inf (`over`, and no NaN in the cell), ' ' with no value.
    """
    cells: list[float | str] = []
    for run in buckets(len(values), width):
        if any(i < len(bad) and bad[i] for i in run):
            cells.append(NAN_MARK)
            continue
        if any(i < len(over) and over[i] for i in run):
            cells.append(OVERFLOW_MARK)
            continue
        finite = [v for v in (values[i] for i in run) if v is not None and math.isfinite(v)]
        if log:
            finite = [math.log10(v) for v in finite if v > 0] or ([-math.inf] if finite else [])
        cells.append(
            math.fsum(v / len(finite) for v in finite) if finite else " "
        )  # 2 × 1e308 overflows
    numbers = [c for c in cells if isinstance(c, float) and math.isfinite(c)]
    if log:
        lo = math.log10(lo) if lo is not None and lo > 0 else None
        hi = math.log10(hi) if hi is not None and hi > 0 else None
    low = min(numbers, default=0.0) if lo is None else lo
    high = max(numbers, default=0.0) if hi is None else hi
    span = high / 2 - low / 2  # halved: 1e308 - (-1e308) is inf
    out = []
    for c in cells:
        if isinstance(c, str):
            out.append(c)
        elif not math.isfinite(c):
            out.append(SPARKS[0])
        elif span <= 0.5e-12 * max(1.0, abs(high)):
            out.append(SPARKS[3])
        else:
            out.append(SPARKS[min(7, max(0, round((c / 2 - low / 2) / span * 7)))])
    return "".join(out)


def bad_step_text(bad: BadStep) -> str:
    """'First bad step 300: NaN/Inf produced by blocks.2.act (SqrtShift) in forward, op aten::sqrt at f.py:12: …'."""
    if bad.cause == "input":
        what = f"the input already held NaN/Inf ({bad.phase})"
    elif bad.cause == "loss":
        what = "the loss was already NaN/Inf before backward"
    else:
        what = f"NaN/Inf produced by {bad.module or '(model)'} ({bad.type}) in {bad.phase}"
    if bad.op:
        what += f", op {bad.op}"
    if bad.source:
        what += f" at {bad.source}"
    if bad.code:
        what += f": {bad.code.strip()}"
    if bad.rank is not None:
        what += f" (on rank {bad.rank})"
    if not bad.recorded:
        what += " (inferred from the counts: the log names no origin)"
    others = [n or "(model)" for n in bad.affected if n != bad.module]
    if others:
        more = f" and {len(others) - 8} more" if len(others) > 8 else ""
        what += f"; also non-finite there: {', '.join(others[:8])}{more}"
    return f"First bad step {bad.step}: {what}."


def wrap_words(text: str, width: int, indent: int = 0) -> list[str]:
    """Greedy word wrap that never parts a number from the word after it ('208 B', '16 tensors').

    Lines after the first are indented by `indent` spaces (a hanging indent under a table's detail column).
    """
    words: list[str] = []
    for word in text.split(" "):
        if words and words[-1][-1:].isdigit() and word:
            words[-1] += " " + word
        else:
            words.append(word)
    lines: list[str] = []
    current = ""
    for word in words:
        room = width - (indent if lines else 0)
        if current and len(current) + 1 + len(word) > room:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return [lines[0]] + [" " * indent + line for line in lines[1:]]


def doctor_header(report: DoctorReport) -> str:
    """'doctor: Net (module, training), input (6, 4) float32' / 'doctor: ckpt.pt (checkpoint without code)'."""
    if report.kind == "checkpoint":
        return f"doctor: {report.source} (checkpoint without code: stored values only)"
    inputs = f", input {report.inputs}" if report.inputs else ", no input: static checks only"
    return f"doctor: {report.source} ({report.context}){inputs}"


def doctor_blocks(report: DoctorReport) -> list[tuple[str, list[list[Finding]]]]:
    """(severity, blocks) most severe first; a block is findings of one check and module with one message."""
    out: list[tuple[str, list[list[Finding]]]] = []
    for severity in ("error", "warning", "info"):
        blocks: dict[tuple[str, str, str, str], list[Finding]] = {}
        for f in report.findings:
            if f.severity == severity:
                blocks.setdefault((f.id, f.where.module, f.message, f.fix), []).append(f)
        if blocks:
            out.append((severity, list(blocks.values())))
    return out


def doctor_summary(report: DoctorReport) -> str:
    """'2 errors, 1 warning, 0 infos from 24 checks' or 'no findings from 24 checks'."""
    checks = f"{len(report.checks)} check{'' if len(report.checks) == 1 else 's'}"
    if not report.findings:
        return f"no findings from {checks}"
    counts = [(report.count(s), s) for s in ("error", "warning", "info")]
    words = ", ".join(f"{n} {s}{'' if n == 1 else 's'}" for n, s in counts)
    return f"{words} from {checks}"


def explain_text(check_id: str) -> str:
    """`--explain ID`: the check's summary, story and fix; `--explain list`: every check, one a line."""
    from modinspect.errors import UsageError
    from modinspect.reports.doctor import CATALOG

    if check_id == "list":
        width = max(len(c) for c in CATALOG)
        return "\n".join(f"{c.id:<{width}}  {c.summary}" for c in CATALOG.values())
    check = CATALOG.get(check_id)
    if check is None:
        raise UsageError(f"--explain {check_id!r} is not a doctor check; --explain list lists them")
    story = "\n".join(wrap_words(check.story, 100))
    return f"{check.id}: {check.summary}\n\n{story}\n\nFix: {check.fix}"
