"""The console's styles are a rich Theme of names ("mi.bad"): no colour is spelled in render/ but in its theme,
every name a view uses is in the theme, and the views render alike on any console, restyled by a user's theme."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
from rich.color import ANSI_COLOR_NAMES
from rich.console import Console
from rich.errors import MissingStyle
from rich.style import Style
from rich.theme import Theme

from modinspect.render.console import (
    STYLES,
    THEME,
    Column,
    Name,
    diff_renderable,
    fit_table,
    make_console,
)
from modinspect.reports import DiffReport, PairMismatch

RENDER = Path(__file__).resolve().parent.parent / "src" / "modinspect" / "render"
THEME_MODULE = RENDER / "console" / "theme.py"
# Full attribute names only: rich's abbreviations ('s', 'i', 'b') are also plural endings and loop variables.
ATTRIBUTES = frozenset(name for name in Style.STYLE_ATTRIBUTES if len(name) > 2)
COLOUR_WORDS = ATTRIBUTES | frozenset(ANSI_COLOR_NAMES)
CODES = re.compile(r"#[0-9a-fA-F]{6}|rgb\(\d+,\d+,\d+\)|color\(\d+\)")


def is_style(text: str, css: bool = False) -> bool:
    """Whether `text` reads as a rich style ('bold red', 'dim', 'not italic', '#ff0000', 'white on blue').

    `css`: hex and rgb() codes are allowed (the HTML report's palette is CSS, not a console style).
    """
    words = text.split()
    if not words:
        return False

    def style_word(word: str) -> bool:
        return (
            word in COLOUR_WORDS
            or word in ("not", "on")
            or (not css and bool(CODES.fullmatch(word)))
        )

    return all(map(style_word, words)) and any(w not in ("not", "on") for w in words)


def literal_styles(source: str, css: bool = False) -> list[tuple[int, str]]:
    """(line, text) of every string literal in `source` that reads as a style, f-strings' parts included."""
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and is_style(node.value, css)
    )


def test_the_checker_finds_literal_styles() -> None:
    source = (
        'Text("x", style="bold red")\n'
        'label.append(name, style=f"bold {style}")\n'
        'Column("h", style="#1f77b4")\n'
        'Text("x", style="mi.bad")\n'
        "word = 'cell' + ('s' if n > 1 else '')\n"
        'note = "bold text is dim"\n'
    )
    assert literal_styles(source) == [(1, "bold red"), (2, "bold "), (3, "#1f77b4")]
    assert literal_styles(source, css=True) == [(1, "bold red"), (2, "bold ")]


def test_no_literal_style_in_render_but_the_theme() -> None:
    found = [
        f"{path.relative_to(RENDER)}:{line}: {text!r}"
        for path in sorted(RENDER.rglob("*.py"))
        if path != THEME_MODULE
        for line, text in literal_styles(
            path.read_text(encoding="utf-8"),
            css=path.parent.name == "html",  # render/html/: CSS
        )
    ]
    assert found == [], "name a style from render/console/theme.py instead:\n" + "\n".join(found)
    # The theme itself is where the colours are: the checker sees them there.
    assert len(literal_styles(THEME_MODULE.read_text(encoding="utf-8"))) == len(STYLES)


def _names_used() -> set[str]:
    used: set[str] = set()
    for path in RENDER.rglob("*.py"):
        if path == THEME_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                used |= set(re.findall(r"\bmi\.[a-z_.]*[a-z]", node.value))
    return used | {
        "mi.bad",
        "mi.warn",
        "mi.info",
    }  # doctor's severities and flag_style: in the theme module


def test_every_style_name_is_in_the_theme_and_used() -> None:
    assert all(name.startswith("mi.") for name in STYLES)
    assert _names_used() == set(STYLES)
    for style in STYLES.values():
        Style.parse(style)  # each one a valid rich style


def _report() -> DiffReport:
    return DiffReport(
        a="a.safetensors",
        b="b.safetensors",
        format_a="safetensors",
        format_b="safetensors",
        only_in_a=("encoder.extra",),
        only_in_b=(),
        shape_mismatch=(PairMismatch("decoder.weight", "[2]", "[3]"),),
        dtype_mismatch=(),
        changed=(),
        close=(),
        equal=3,
        identical=3,
        compared=4,
        aliased=(),
        rollup=(),
        hints=("pass --strip-prefix module.",),
        tolerance="per dtype",
        nan_equal=True,
    )


def _styled(console: Console) -> str:
    console.print(diff_renderable(_report(), 100))
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def _console(theme: Theme | None = None) -> Console:
    # no_color: the suite's conftest sets NO_COLOR, under which rich writes bold but no colour
    return Console(
        file=io.StringIO(),
        width=100,
        force_terminal=True,
        color_system="truecolor",
        no_color=False,
        theme=theme,
    )


BOLD_RED, MAGENTA = "\x1b[1;31m", "\x1b[35m"


def test_a_view_renders_alike_on_any_console() -> None:
    """A console without the theme (a notebook's, a test's) resolves the names as make_console's does."""
    assert make_console(io.StringIO()).get_style("mi.bad") == Style.parse("bold red")
    ours = _console()
    ours.push_theme(THEME)  # as make_console does
    plain = _console()
    text = _styled(plain)
    assert text == _styled(ours)
    assert f"{BOLD_RED}Only in A (1)" in text and f"{BOLD_RED}The checkpoints differ." in text
    assert "\x1b[33mhint: pass --strip-prefix module." in text  # mi.hint: yellow
    with pytest.raises(MissingStyle, match=r"mi\.bad"):
        plain.get_style("mi.bad")  # the theme was pushed for the render only, then popped


def test_a_users_theme_restyles_the_views() -> None:
    text = _styled(_console(Theme({"mi.bad": "magenta"})))
    assert f"{MAGENTA}Only in A (1)" in text and f"{MAGENTA}The checkpoints differ." in text
    assert BOLD_RED not in text
    assert "\x1b[33mhint:" in text  # the names the user's theme leaves out keep theirs


def test_a_fitted_table_renders_on_any_console() -> None:
    """fit_table's table (a library user's own table) resolves its header's style name on a plain console."""
    fitted = fit_table(
        [Column("module", kind="name"), Column("std")],
        [[Name("encoder.layer"), "0.5"], [Name("decoder"), "12"]],
        80,
    )
    console = _console()
    console.print(fitted.table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[1mmodule       \x1b[0m" in text and "encoder.layer" in text and "12" in text
