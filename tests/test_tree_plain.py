"""The plain tree writer (render.console.plain_tree_lines): the same text as rich's Tree without colour.

A rendered `tree` of 100k tensors spent 15 s in rich's layout; without styles the writer emits the same
lines directly. These tests render each report both ways and compare them byte for byte, at widths where
labels fit and where rich must wrap them (the writer then gives up and rich renders).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from conftest import SAMPLES
from models import PartlyFrozen, Tied, TwoLayer
from modinspect.analysis.tree import build_tree
from modinspect.render.console import plain_tree_lines, print_tree, tree_renderable
from modinspect.reports import TreeReport
from modinspect.run.inputs import InputSpec
from modinspect.run.shapes import add_layers
from modinspect.run.source import open_source
from modinspect.sources import Source
from modinspect.sources.module import ModuleSource


def _console(width: int, styled: bool = False) -> Console:
    return Console(
        file=io.StringIO(),
        width=width,
        highlight=False,
        soft_wrap=False,
        color_system="truecolor" if styled else None,
        force_terminal=styled,
    )


def _written(console: Console) -> str:
    """What a `_console` has printed."""
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def _both(report: TreeReport, width: int) -> tuple[str, str]:
    rich_out, plain_out = _console(width), _console(width)
    rich_out.print(tree_renderable(report, width))
    print_tree(plain_out, report)
    return _written(rich_out), _written(plain_out)


class Deep(nn.Module):
    """Long names, hyperparameters, a non-persistent buffer, nesting four deep."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_with_a_rather_long_name = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Sequential(nn.Conv2d(8, 8, 3), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))),
        )
        self.head = nn.Linear(8, 2)
        self.register_buffer("running_scale_that_is_not_saved", torch.ones(3), persistent=False)


def _reports() -> dict[str, TreeReport]:
    reports = {}
    for name in (
        "small_cnn.safetensors",
        "small_cnn.pth",
        "tiny_lm.safetensors",
        "tiny_lm.pth",
        "training_checkpoint.pt",
        "ddp.pt",
    ):
        with open_source(str(SAMPLES / name)) as src:
            reports[name] = build_tree(src)
    for model in (TwoLayer(), Tied(), PartlyFrozen(), Deep()):
        src = ModuleSource(model, type(model).__name__, "entrypoint")
        reports[type(model).__name__] = add_layers(build_tree(src), src, None)
    with open_source(f"{SAMPLES / 'models.py'}:small_cnn", meta=True) as src:
        reports["small_cnn shapes"] = add_layers(
            build_tree(src), src, InputSpec(shapes=((1, 3, 32, 32),))
        )
    with open_source(str(SAMPLES / "tiny_lm.safetensors")) as src:
        reports["tiny_lm depth 1"] = build_tree(src, depth=1)
        reports["tiny_lm expanded"] = build_tree(src, expand=True)
    return reports


REPORTS = _reports()


@pytest.mark.parametrize("width", [200, 120, 80, 60, 40])
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_plain_writer_writes_what_rich_renders(name: str, width: int) -> None:
    rich_text, plain_text = _both(REPORTS[name], width)
    assert plain_text == rich_text
    if width >= 120:
        assert (
            plain_tree_lines(REPORTS[name], width) is not None
        )  # every label fits: the plain path ran


def test_the_writer_is_used_where_labels_fit_and_gives_up_where_rich_wraps() -> None:
    report = REPORTS["Deep"]
    assert plain_tree_lines(report, 200) is not None
    assert plain_tree_lines(report, 30) is None  # 'encoder_with_a_rather_long_name  …' wraps at 30
    rich_text, plain_text = _both(report, 30)
    assert plain_text == rich_text and max(map(len, plain_text.splitlines())) <= 30


def test_names_rich_would_change_go_through_rich(tmp_path: Path) -> None:
    sd = {
        "a\tb.weight": torch.zeros(2),
        "ctrl\x1b[31m.weight": torch.zeros(2),
        "寬字.weight": torch.zeros(3, 2),
    }
    with _saved(sd, tmp_path / "odd.pt") as src:
        report = build_tree(src)
    assert plain_tree_lines(report, 200) is None  # the tab and the escape
    rich_text, plain_text = _both(report, 200)
    assert plain_text == rich_text
    wide = {"寬字.weight": torch.zeros(3, 2), "b.weight": torch.zeros(1)}
    with _saved(wide, tmp_path / "wide.pt") as src:
        report = build_tree(src)
    lines = plain_tree_lines(report, 200)
    assert lines is not None and any(
        "寬字" in line for line in lines
    )  # printable wide characters stay plain
    for width in (200, 24, 16):
        rich_text, plain_text = _both(report, width)
        assert plain_text == rich_text


def test_a_styled_console_gets_rich() -> None:
    out = _console(200, styled=True)
    print_tree(out, REPORTS["TwoLayer"])
    assert "\x1b[" in _written(out)


def test_thousands_of_flat_tensors_are_written_plain(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "flat.safetensors"
    save_file({f"t{i:05d}": torch.zeros(1) for i in range(3000)}, str(path))
    with open_source(str(path)) as src:
        report = build_tree(src)
    lines = plain_tree_lines(report, 200)
    assert lines is not None and len(lines) == 1 + 3000
    assert (
        lines[1] == "├── t00000  [1]  float32  4 B" and lines[-1] == "└── t02999  [1]  float32  4 B"
    )
    rich_text, plain_text = _both(report, 200)
    assert plain_text == rich_text


def _saved(sd: dict[str, torch.Tensor], path: Path) -> Source:
    torch.save(sd, path)
    return open_source(str(path))


class Blocks(nn.Module):
    """A mid-level parent with two children, to set their modes apart."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Linear(2, 2))
        self.head = nn.Linear(2, 1)


@pytest.mark.parametrize("root", [True, False])
def test_a_module_is_marked_where_its_mode_differs_from_its_parents(root: bool) -> None:
    """`train`/`eval` marks a module whose flag differs from its parent's, not the root's."""
    model = Blocks().train(root)
    model.block.train(not root)  # the parent in the other mode
    model.block[0].train(root)  # its child back in the root's mode: differs from its parent
    model.block[1].train(not root)  # as its parent: no mark, though it differs from the root
    report = build_tree(open_source(model))
    assert {m.name: (m.training, m.parent_training) for m in report.modules} == {
        "": (root, None),
        "block": (not root, root),
        "block.0": (root, not root),
        "block.1": (not root, not root),
        "block.2": (not root, not root),
        "head": (root, root),
    }
    rich_text, plain_text = _both(report, 120)
    assert rich_text == plain_text
    mode, other = ("train", "eval") if root else ("eval", "train")
    modules = [
        line
        for line in plain_text.splitlines()
        if "Sequential" in line or "Linear" in line or "Dropout" in line
    ]
    assert modules == [
        f"├── block  Sequential  12 params  48 B  {other}",
        f"│   ├── 0  Linear  6 params  24 B  {mode}",
        "│   ├── 1  Dropout",
        "│   └── 2  Linear  6 params  24 B",
        "└── head  Linear  3 params  12 B",
    ]
