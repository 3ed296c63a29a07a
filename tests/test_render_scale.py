"""The human views of diff and load cost time linear in the number of keys, as --json does; FastTable.

Measured as this process's CPU time (not wall clock) rendering synthetic reports of n and 4n keys: a
linear renderer costs about 4 times as much for 4n, a quadratic one 16 times. `diff`/`load` of a 200k-tensor
file took over 400 s (a list membership test per name in collapse_indices; each cast group's error
matched against every key) while --json took 2.7 s.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from rich.console import Console
from rich.text import Text

from modinspect.render.console import (
    FastColumn,
    FastTable,
    diff_renderable,
    load_renderable,
    make_console,
)
from modinspect.reports import Alias, DiffReport, LoadPlan, LoadReport, Mismatch, PairMismatch

SMALL, LARGE = 3_000, 12_000
LINEAR_BOUND = 8.0  # 4× the keys: linear is about 4×, quadratic 16×
R = TypeVar("R")


def diff_report(n: int) -> DiffReport:
    """n keys only in A (flat names), n only in B (two indices each: nothing collapses), n tied pairs."""
    return DiffReport(
        a="a.safetensors",
        b="b.safetensors",
        format_a="safetensors",
        format_b="safetensors",
        only_in_a=tuple(f"tensor_{i:06d}" for i in range(n)),
        only_in_b=tuple(f"model.layers.{i // 256}.experts.{i % 256}.w" for i in range(n)),
        shape_mismatch=tuple(PairMismatch(f"s_{i}", "[2]", "[3]") for i in range(n)),
        dtype_mismatch=(),
        changed=(),
        close=(),
        equal=0,
        identical=0,
        compared=n,
        aliased=tuple((f"alias_{i}", f"tensor_{i:06d}") for i in range(n)),
        rollup=(),
        hints=(),
        tolerance="per dtype",
        nan_equal=True,
    )


def load_report(n: int) -> LoadReport:
    """n keys cast with their copy errors, n missing, n unexpected, n tied: flat names, no group collapses."""
    cast = tuple(Mismatch(f"cast_{i}", "float16", "float32") for i in range(n))
    plan = LoadPlan(
        loaded=tuple(m.name for m in cast),
        cast=cast,
        mismatched=(),
        missing=tuple(f"missing_{i}" for i in range(n)),
        unexpected=tuple(f"unexpected_{i}" for i in range(n)),
        tied=tuple(Alias(f"tied_{i}", f"cast_{i}") for i in range(n)),
    )
    return LoadReport(
        model="m.py:build",
        checkpoint="c.safetensors",
        plan=plan,
        strict=False,
        skip_mismatched=False,
        performed=True,
        dry_run=False,
        written=None,
        cast_errors=tuple((m.name, 1e-3 * (i % 7)) for i, m in enumerate(cast)),
    )


def cpu_seconds(render: Callable[[R, int], object], report: R) -> float:
    """The least of three renderings' CPU time: this process's, not the wall clock's."""
    costs = []
    for _ in range(3):
        out = make_console(file=io.StringIO(), width=120)
        start = time.process_time()
        out.print(render(report, 120))
        costs.append(time.process_time() - start)
    return min(costs)


def test_diff_rendering_is_linear_in_the_keys() -> None:
    small = cpu_seconds(diff_renderable, diff_report(SMALL))
    large = cpu_seconds(diff_renderable, diff_report(LARGE))
    assert large < LINEAR_BOUND * small, (
        f"{SMALL:,} keys: {small:.3f} s, {LARGE:,} keys: {large:.3f} s"
    )


def test_load_rendering_is_linear_in_the_keys() -> None:
    small = cpu_seconds(load_renderable, load_report(SMALL))
    large = cpu_seconds(load_renderable, load_report(LARGE))
    assert large < LINEAR_BOUND * small, (
        f"{SMALL:,} keys: {small:.3f} s, {LARGE:,} keys: {large:.3f} s"
    )


def test_the_lists_are_cut_with_a_count_of_the_rest() -> None:
    buf = io.StringIO()
    out = make_console(file=buf, width=120)
    out.print(diff_renderable(diff_report(100), 120))
    text = buf.getvalue()
    assert (
        "Tied names matched through their partner (100)" in text
        and "  … 50 more (see --json)" in text
    )
    assert "Only in A (100)" in text and "  … 60 more (see --json)" in text
    buf = io.StringIO()
    out = make_console(file=buf, width=120)
    out.print(load_renderable(load_report(100), 120))
    text = buf.getvalue()
    assert "cast_0 (float32 → float16, max |Δ| 0: copy_ converts silently)" in text
    assert "cast_6 (float32 → float16, max |Δ| 0.006: copy_ converts silently)" in text
    assert (
        text.count("… 70 more (see --json)") == 4
    )  # cast, tied, missing, unexpected: 30 shown each


# --- FastTable: rich's Table layout, written directly on a console without colour -------------------------


def _plain(renderable: object, width: int, color: bool = False) -> str:
    buf = io.StringIO()
    out = Console(
        file=buf,
        width=width,
        color_system="truecolor" if color else None,
        force_terminal=color,
        markup=False,
        highlight=False,
        soft_wrap=False,
    )
    out.print(renderable)
    return buf.getvalue()


def test_fast_table_writes_what_rich_table_writes() -> None:
    """Random one-line tables (wide characters, trailing spaces, cut cells, min/max widths) at random widths."""
    rng = random.Random(7)
    alphabet = "abcXYZ ▁█×—…名前é0123456789.-\u00a0"
    fast = 0
    for _ in range(600):
        columns = [
            FastColumn(
                rng.choice(["module", "std", "‖∇out‖ (log)", "last", "x"]),
                justify=rng.choice(["left", "right"]),
                style=rng.choice(["", "cyan"]),
                min_width=rng.choice([None, 3, 8]),
                max_width=rng.choice([None, 5, 12]),
                overflow=rng.choice(["ellipsis", "crop"]),
            )
            for _ in range(rng.randint(1, 6))
        ]
        table = FastTable(columns)
        for _ in range(rng.randint(0, 6)):
            table.add_row(
                *(
                    Text(
                        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 15))),
                        style=rng.choice(["", "bold red"]),
                    )
                    for _ in columns
                )
            )
        width = rng.randint(20, 120)
        assert _plain(table, width) == _plain(table.rich_table(), width)
        widths = table._widths()
        fast += widths is not None and sum(widths) + 3 * (len(widths) - 1) <= width
    assert fast > 300  # most of them took the direct path


def test_fast_table_never_builds_a_rich_table_where_it_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: FastTable) -> object:
        raise AssertionError("rich's Table was built")

    monkeypatch.setattr(FastTable, "rich_table", refuse)
    table = FastTable([FastColumn("module", max_width=48), FastColumn("last", justify="right")])
    for i in range(20_000):
        table.add_row(Text(f"  layer{i}"), Text(f"{i * 0.5:g}"))
    text = _plain(table, 120)
    assert text.count("\n") == 20_002 and "  layer19999   9999.5\n" in text
    with pytest.raises(AssertionError, match="rich's Table was built"):
        _plain(table, 120, color=True)  # styles are rich's to write
