"""Number and size formatting shared by renderers (pure, no rich)."""

from __future__ import annotations

import math

from modinspect.report import BadStep


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


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(counts: tuple[int, ...], width: int = 8) -> str:
    """Histogram counts -> '▁▃█▅▂▁▁▁', merged down to `width` cells."""
    if not counts or not any(counts):
        return ""
    step = max(1, len(counts) // width)
    merged = [sum(counts[i:i + step]) for i in range(0, len(counts), step)]
    top = max(merged)
    return "".join(SPARKS[0] if c == 0 else SPARKS[max(1, round(c / top * (len(SPARKS) - 1)))] for c in merged)


def num(value: float | None) -> str:
    """Compact, sign-aligned: 0.123, -4.56e-05, 1.2e+04; '—' when absent."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


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


def series_sparkline(values: tuple[float | None, ...], bad: tuple[bool, ...] = (), width: int = 24,
                     log: bool = False, lo: float | None = None, hi: float | None = None) -> str:
    """A series over steps -> one cell per step (or per run of steps when longer than `width`).

    A cell is the mean of its finite values on a scale from `lo` to `hi` (default: the series' own range,
    log10 when `log`; a flat series sits mid-height), '×' where a NaN/Inf was counted, ' ' with no value.
    """
    cells: list[float | str] = []
    for run in buckets(len(values), width):
        if any(i < len(bad) and bad[i] for i in run):
            cells.append("×")
            continue
        finite = [v for v in (values[i] for i in run) if v is not None and math.isfinite(v)]
        if log:
            finite = [math.log10(v) for v in finite if v > 0] or ([-math.inf] if finite else [])
        cells.append(sum(finite) / len(finite) if finite else " ")
    numbers = [c for c in cells if isinstance(c, float) and math.isfinite(c)]
    if log:
        lo = math.log10(lo) if lo is not None and lo > 0 else None
        hi = math.log10(hi) if hi is not None and hi > 0 else None
    low = min(numbers, default=0.0) if lo is None else lo
    high = max(numbers, default=0.0) if hi is None else hi
    span = high - low
    out = []
    for c in cells:
        if isinstance(c, str):
            out.append(c)
        elif not math.isfinite(c):
            out.append(SPARKS[0])
        elif span <= 1e-12 * max(1.0, abs(high)):
            out.append(SPARKS[3])
        else:
            out.append(SPARKS[min(7, max(0, round((c - low) / span * 7)))])
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
    if not bad.recorded:
        what += " (inferred from the counts: the log names no origin)"
    others = [n or "(model)" for n in bad.affected if n != bad.module]
    if others:
        more = f" and {len(others) - 8} more" if len(others) > 8 else ""
        what += f"; also non-finite there: {', '.join(others[:8])}{more}"
    return f"First bad step {bad.step}: {what}."
