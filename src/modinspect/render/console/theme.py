"""The console's styles, named by what they mean: a view asks for "mi.bad", never for "bold red".

`THEME` is a rich Theme, so a user's console can restyle any of them
(`console.push_theme(Theme({"mi.bad": "magenta"}))`). This is the one module in modinspect that spells a
colour; a test fails on a colour or style word anywhere else in render/ (tests/test_render_theme.py).
Every view returns its renderable wrapped in `Themed`, so the names resolve on any console, one made by
`make_console` or a notebook's own.
"""

from __future__ import annotations

from collections.abc import Iterator

from rich.console import Console, ConsoleOptions, RenderableType
from rich.errors import MissingStyle
from rich.measure import Measurement
from rich.theme import Theme

STYLES: dict[str, str] = {
    # Words around the values
    "mi.source": "bold",  # the file or model a report is about, first on its first line
    "mi.heading": "bold",  # a section's title, a summary line
    "mi.header": "bold",  # a table's column titles
    "mi.label": "bold",  # a row's label: 'Parameters', 'A ', 'model'
    "mi.name": "bold",  # a module or tensor name in the tree
    "mi.muted": "dim",  # details: sizes, notes, '… 12 more', what a table moved above it or hid
    "mi.guide": "dim",  # the tree's guide lines
    # Verdicts
    "mi.good": "bold green",  # nothing wrong: 'No differences within tolerance.'
    "mi.bad": "bold red",  # NaN/Inf, a failed check, a structural difference, 'The checkpoints differ.'
    "mi.warn": "yellow",  # worth a look: a vanishing gradient, dead units, frozen parameters
    "mi.hint": "yellow",  # 'hint: …' lines
    "mi.info": "cyan",  # doctor's informational findings
    # Values
    "mi.root": "bold green",  # the model's class, the tree's root
    "mi.type": "green",  # a module's class and its hyperparameters
    "mi.count": "cyan",  # parameter counts
    "mi.shape": "cyan",  # tensor and output shapes
    "mi.dtype": "magenta",  # dtypes, quantization schemes, bits per weight
    "mi.compute": "magenta",  # MACs
    "mi.spark": "cyan",  # sparklines and histograms
    "mi.repeat": "bold yellow",  # '×12': a run of identical modules shown once
    "mi.calls": "yellow",  # a module called more than once in one forward
    "mi.mode": "yellow",  # a module in another train/eval mode than its parent
    "mi.filter": "yellow",  # the --filter a tree was cut to
    "mi.tied": "yellow",  # '= other.weight': a tensor that shares another's storage
    "mi.buffer": "blue",  # buffers and quantization's auxiliary tensors
    "mi.frozen": "red",  # parameters that do not require grad
    # diff and load
    "mi.changed": "bold red",  # the count of changed tensors
    "mi.removed": "red",  # only in A
    "mi.added": "red",  # only in B (a key on one side only is a difference either way)
    "mi.unchanged": "green",  # modules whose tensors are all equal
    "mi.loaded": "bold green",  # keys that load (or are tied to one that does)
    "mi.cast": "bold yellow",  # keys that load with a dtype conversion
}

# inherit=False: pushed on a console, these add to its own styles rather than reset rich's defaults.
THEME = Theme(STYLES, inherit=False)

SEVERITY_STYLE = {"error": "mi.bad", "warning": "mi.warn", "info": "mi.info"}


def flag_style(flags: tuple[str, ...]) -> str:
    """The style of a gradient norm its flags mark: exploding is bad, vanishing worth a look."""
    if "exploding-grad" in flags:
        return "mi.bad"
    if "vanishing-grad" in flags:
        return "mi.warn"
    return ""


class Themed:
    """`renderable`, with the theme's names that the console lacks pushed while it renders.

    Names the console already has are left alone: a user's `push_theme(Theme({"mi.bad": "magenta"}))`
    restyles every view, on make_console's console too.
    """

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        # The console renders what is yielded before this generator resumes: the theme covers all of it.
        console.push_theme(_missing(console))
        try:
            yield self.renderable
        finally:
            console.pop_theme()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        console.push_theme(_missing(console))
        try:
            return Measurement.get(console, options, self.renderable)
        finally:
            console.pop_theme()


def _missing(console: Console) -> Theme:
    """The part of THEME `console` does not define."""
    missing = {}
    for name, style in THEME.styles.items():
        try:
            console.get_style(name)
        except MissingStyle:
            missing[name] = style
    return Theme(missing, inherit=False)
