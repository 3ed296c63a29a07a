"""Number and size formatting shared by renderers (pure, no rich)."""

from __future__ import annotations


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
