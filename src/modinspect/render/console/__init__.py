"""Reports -> rich renderables, one module per view: the only package that imports rich (ruff's TID251).

    theme        THEME: the style names every view uses ("mi.bad"), and Themed, which makes them resolve
    common       make_console, Trimmed, progress on stderr, the helpers the views share
    fit          fit_table: the one layout engine every table goes through; fasttable: its fast writer
    tree_view    tree_renderable, print_tree        stats_view   stats_renderable, verdict_text
    diff_view    diff_renderable                    load_view    load_renderable
    report_view  run_renderable (`report`)          doctor_view  doctor_renderable
    compare_view comparison_renderable (`report A B`)

Every name below stays importable from here, as it was when this package was one module.
"""

from __future__ import annotations

from modinspect.render.console.common import (
    Trimmed,
    batch_progress,
    grouped_pairs,
    make_console,
    progress,
    progress_bar,
)
from modinspect.render.console.compare_view import comparison_renderable
from modinspect.render.console.diff_view import DIFF_COLUMNS, diff_renderable
from modinspect.render.console.doctor_view import doctor_renderable
from modinspect.render.console.fasttable import FastColumn, FastTable
from modinspect.render.console.fit import (
    Cell,
    Column,
    FittedTable,
    Forms,
    Name,
    choose_columns,
    fit_table,
)
from modinspect.render.console.load_view import LOAD_COLUMNS, load_renderable
from modinspect.render.console.report_view import run_renderable
from modinspect.render.console.stats_view import (
    STATS_COLUMNS,
    frozen_text,
    loss_words,
    origin_lines,
    origin_text,
    stats_renderable,
    verdict,
    verdict_text,
)
from modinspect.render.console.theme import STYLES, THEME, Themed
from modinspect.render.console.tree_view import (
    GUIDES,
    plain_tree_lines,
    print_tree,
    totals_table,
    tree_renderable,
)

__all__ = [
    "DIFF_COLUMNS",
    "GUIDES",
    "LOAD_COLUMNS",
    "STATS_COLUMNS",
    "STYLES",
    "THEME",
    "Cell",
    "Column",
    "FastColumn",
    "FastTable",
    "FittedTable",
    "Forms",
    "Name",
    "Themed",
    "Trimmed",
    "batch_progress",
    "choose_columns",
    "comparison_renderable",
    "diff_renderable",
    "doctor_renderable",
    "fit_table",
    "frozen_text",
    "grouped_pairs",
    "load_renderable",
    "loss_words",
    "make_console",
    "origin_lines",
    "origin_text",
    "plain_tree_lines",
    "print_tree",
    "progress",
    "progress_bar",
    "run_renderable",
    "stats_renderable",
    "totals_table",
    "tree_renderable",
    "verdict",
    "verdict_text",
]
