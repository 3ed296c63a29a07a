"""Output at any width: goldens at 60, 80, 100, 120 and 200 columns for every renderer, no line wider than the
terminal, no number cut (each number in the text checked against the report's value), and the
significant-digit and name-eliding helpers the width rules are made of."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.markup import escape

from conftest import SAMPLES, Golden, invoke
from modinspect.render.text import (
    count_forms,
    elide_inside,
    elide_left,
    elide_middle,
    last_component_width,
    num,
    num_forms,
    ratio_forms,
)
from modinspect.reports import DiffReport, ModuleRollup, PairMismatch, TensorDiff

WIDTHS = (60, 80, 100, 120, 200)
COMMANDS = {
    "tree": [
        "tree",
        "models.py:small_cnn",
        "--weights",
        "small_cnn.safetensors",
        "--input-shape",
        "1,3,32,32",
    ],
    "stats": ["stats", "faulty.py:Net", "--input-shape", "8,16"],
    "diff": ["diff", "small_cnn.pth", "ddp.pt", "--strip-prefix", "module."],
    "load": ["load", "heads.py:five", "small_cnn.pth", "--skip-mismatched", "--dry-run"],
    # the quantized sample dequantised against its float model: the quantization error tables
    "dequant": ["diff", "small_cnn.pth", "small_cnn_int8.pth"],
    "doctor": ["doctor", "mistakes.py:Net", "--input-shape", "8,16"],
}


# ------------------------------------------------------------------ the helpers


def test_numbers_shorten_to_significant_digits() -> None:
    assert (
        num(0.0830812) == "0.08308"
        and num(0.0830812, 3) == "0.0831"
        and num(0.0830812, 2) == "0.083"
    )
    assert num_forms(0.0830812) == ("0.08308", "0.0831", "0.083")
    assert num_forms(-4.56789e-05) == ("-4.57e-05", "-4.6e-05", "-4.6e-5")
    assert num_forms(12345.6) == ("1.23e+04", "1.2e+04", "1.2e4")
    assert num_forms(0.5) == ("0.5",) and num_forms(None) == ("—",) and num_forms(0.0) == ("0",)
    assert (
        num(123.456, 2) == "123"
    )  # never fewer integer digits than the value has: 120 would be another number
    assert count_forms(161_234_567) == ("161,234,567", "161M")
    assert (
        ratio_forms(1, 160) == ("1/160",)
        and ratio_forms(161_234_567, 161_234_567)[-1] == "161M/161M"
    )


def test_names_are_shortened_from_the_left_keeping_whole_components() -> None:
    name = "bert.encoder.layer.0.attention.output.LayerNorm"
    assert elide_left(name, 60) == name
    assert elide_left(name, 27) == "…attention.output.LayerNorm"
    assert elide_left(name, 26) == elide_left(name, 17) == "…output.LayerNorm"
    assert elide_left(name, 10) == "…LayerNorm"
    assert elide_left(name, 6) == "…rNorm"  # only a last component wider than the room is cut
    assert all(cell_len(elide_left(name, w)) <= w for w in range(1, 60))
    assert last_component_width(name) == 10 and last_component_width("bias") == 4
    # Names alike at the end keep their start, where they differ.
    assert elide_inside("transformer.h.0.attn.c_attn.weight", 30) == "transformer.h.0…c_attn.weight"
    assert all(
        cell_len(elide_inside("transformer.h.0.attn.c_attn.weight", w)) <= w for w in range(1, 40)
    )


def test_names_are_elided_in_the_middle_at_dots() -> None:
    name = "transformer.h.0.attn.c_attn.weight"
    assert elide_middle(name, 40) == name
    assert elide_middle(name, 29) == "transformer.h.0…c_attn.weight"
    assert elide_middle(name, 20) == "transformer.h…weight"
    assert all(len(elide_middle(name, w)) <= w for w in range(3, 40))
    assert (
        elide_middle("      fc_very_long_module_name", 14) == "      fc_v…ame"
    )  # the stats tree's indent kept


# ------------------------------------------------------------------ goldens and invariants at every width


def _render(kind: str, width: int, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    result = invoke(*COMMANDS[kind], cwd=SAMPLES)
    assert result.exit_code == (1 if kind in ("stats", "diff", "dequant", "doctor") else 0), (
        result.stderr
    )
    return str(result.stdout)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", list(COMMANDS))
def test_golden_at_width(
    kind: str, width: int, golden: Golden, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _render(kind, width, monkeypatch)
    golden(f"{kind}_{width}.txt", text)
    too_wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert too_wide == []
    assert all(line == line.rstrip() for line in text.splitlines())  # no trailing padding


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _close(shown: str, value: float | None) -> bool:
    """Whether `shown` is `value` rounded to the digits it shows (never a cut: '0.08' for 0.0831 fails)."""
    if value is None:
        return shown == "—"
    if value == 0:
        return shown == "0"
    digits = len(re.sub(r"e.*|[-.]", "", shown).lstrip("0"))
    return abs(float(shown) - value) <= abs(value) * 0.51 * 10 ** (1 - max(digits, 1))


@pytest.mark.parametrize("width", WIDTHS)
def test_stats_numbers_are_never_cut(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _render("stats", width, monkeypatch)
    doc = json.loads(invoke(*COMMANDS["stats"], "--json", cwd=SAMPLES).stdout)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("module "))
    header = _cells(lines[at])
    called = [m for m in doc["modules"] if m["calls"]]
    rows = [_cells(line) for line in lines[at + 2 : at + 2 + len(called)]]
    fields = {
        "mean": "mean",
        "std": "std",
        "min": "min",
        "max": "max",
        "‖∇out‖": "grad_norm",
        "‖∇param‖": "param_grad_norm",
    }
    checked = 0
    for module, row in zip(called, rows, strict=True):
        assert len(row) == len(header) or (header[-1] == "hist" and len(row) == len(header) - 1), (
            row
        )
        for title, cell in zip(header, row, strict=False):
            if title in fields and not cell.startswith(("nan", "inf")):
                assert _close(cell, module[fields[title]]), (width, module["name"], title, cell)
                checked += 1
    assert (
        checked >= 3 * len(called) + 15
    )  # mean, min, max and the 15 finite ‖∇out‖ survive even at 60 columns
    # Every module was called once: the calls column is one line above the table, not 18 rows of '1'.
    assert lines[at - 1] == "calls 1" and "calls" not in header
    hidden = re.search(
        r"columns hidden at (\d+) columns: ([^(]+) \(--wide or COLUMNS=(\d+)", " ".join(lines)
    )
    shown = {
        "type",
        "mean",
        "std",
        "min",
        "max",
        "zeros",
        "nan/inf",
        "dead",
        "‖∇out‖",
        "‖∇param‖",
        "hist",
    }
    if hidden is None:
        assert set(header) == shown | {"module"}
    else:
        gone = set(hidden.group(2).split(", "))
        assert (
            int(hidden.group(1)) == width < int(hidden.group(3)) and gone and not gone & set(header)
        )
        assert set(header) | gone == shown | {"module"}


@pytest.mark.parametrize("width", WIDTHS)
def test_load_and_tree_keep_every_count_and_shape_whole(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = _render("load", width, monkeypatch)
    for shape in (
        "[5, 16] in the model",
        "[10, 16] in",
        "[5] in the model",
    ):  # at 60: '...in\n  the checkpoint'
        assert shape in load
    assert re.search(r"would load +14 ", load) and re.search(r"mismatched +2 ", load)
    tree = _render("tree", width, monkeypatch)
    doc = json.loads(invoke(*COMMANDS["tree"], "--json", cwd=SAMPLES).stdout)
    for t in doc["tensors"]:  # every tensor's shape, whole, on its own line of the tree
        assert f"  [{', '.join(map(str, t['shape']))}]  {t['dtype']}" in tree
    assert re.search(r"^Parameters +1,610  trainable 1,610 · frozen 0$", tree, re.MULTILINE)
    assert re.search(
        r"^MACs +1\.4M  1,400,992 multiply-adds =( |\n +)2,801,984 FLOPs / 2", tree, re.MULTILINE
    )
    assert re.search(r" 208 B$", tree, re.MULTILINE)  # a number and its unit stay on one line


def _long_diff() -> DiffReport:
    """A report with GPT-2-size tensors and long names, rendered directly: the cases the files cannot ship."""
    changed = tuple(
        TensorDiff(
            name=f"transformer.h.{i}.attn.c_attn.weight",
            a_name="",
            b_name="",
            shape=(768, 2304),
            dtype_a="float32",
            dtype_b="float32",
            numel=161_234_567,
            differing=161_234_567 - i,
            max_abs_diff=0.0830812 * (i + 1),
            mean_abs_diff=-4.56789e-05 * (i + 1),
            rel_l2=0.123456 / (i + 1),
            cosine=0.99912345,
            nan_a=0,
            nan_b=i,
            inf_a=0,
            inf_b=0,
            status="changed",
        )
        for i in range(3)
    )
    return DiffReport(
        a="a.safetensors",
        b="b.safetensors",
        format_a="safetensors",
        format_b="safetensors",
        only_in_a=(),
        only_in_b=(),
        shape_mismatch=(),
        dtype_mismatch=tuple(PairMismatch(f"h.{i}.w", "float32", "bfloat16") for i in range(12)),
        changed=changed,
        close=(),
        equal=0,
        identical=0,
        compared=3,
        aliased=(),
        rollup=(ModuleRollup("transformer.h.0", 1, 1, 0.08),),
        hints=(),
        tolerance="defaults",
        nan_equal=True,
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_diff_table_fits_long_names_and_big_counts(width: int) -> None:
    from modinspect.render.console import diff_renderable

    report = _long_diff()
    out = io.StringIO()
    Console(file=out, width=width, no_color=True, highlight=False, soft_wrap=False).print(
        diff_renderable(report, width)
    )
    text = out.getvalue()
    assert max(cell_len(line) for line in text.splitlines()) <= width
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tensor")) + 2
    header = _cells(lines[start - 2])
    fields = {
        "max |Δ|": "max_abs_diff",
        "mean |Δ|": "mean_abs_diff",
        "rel L2": "rel_l2",
        "cosine": "cosine",
    }
    for d, line in zip(report.changed, lines[start : start + 3], strict=True):
        row = _cells(line)
        cells = dict(zip(header, row, strict=False))
        name = cells["tensor"]
        assert name == d.name or (
            "…" in name
            and d.name.startswith(name.split("…")[0])
            and d.name.endswith(name.split("…")[1])
        )
        for title, attr in fields.items():
            if title in cells:
                assert _close(cells[title], getattr(d, attr)), (width, title, cells[title])
        part, whole = cells["differing"].split("/")
        for shown, value in ((part, d.differing), (whole, d.numel)):
            assert shown in count_forms(value)  # exact with separators, or 161M: never '161…'
        if d.nan_b:
            assert cells["NaN A/B"] == f"0/{d.nan_b}"  # NaN counts are never hidden
    assert "Dtype mismatches (12)\n  h.{0-11}.w: float32 in A, bfloat16 in B\n" in text
    # Shape and cosine are the same on every row: one line above the table, whatever the width.
    assert lines[start - 3] == "shape [768, 2304] · cosine 0.9991" and "cosine" not in header
    hidden = re.search(r"columns hidden at \d+ columns: ([^(]+) \(", " ".join(lines))
    gone = set(hidden.group(1).split(", ")) if hidden else set()
    assert set(header) | gone == {"tensor", "differing", "max |Δ|", "mean |Δ|", "rel L2", "NaN A/B"}
    assert (hidden is not None) == (width < 80)


def test_diff_lists_elide_long_names_and_keep_their_numbers() -> None:
    from modinspect.render.console import diff_renderable

    deep = "encoder.layers.0.self_attention.query_key_value.lora_adapters.default.weight"
    report = replace(
        _long_diff(),
        only_in_a=(deep,),
        shape_mismatch=(PairMismatch(deep, "[4096, 12288]", "[4096, 4096]"),),
        rollup=(ModuleRollup(deep.rsplit(".", 1)[0], 12, 11, 0.25),),
    )
    for width in (60, 70):
        out = io.StringIO()
        Console(file=out, width=width, no_color=True, highlight=False, soft_wrap=False).print(
            diff_renderable(report, width)
        )
        text = out.getvalue()
        assert max(cell_len(line) for line in text.splitlines()) <= width
        assert "…" in text and ": [4096, 12288] in A, [4096, 4096] in B\n" in text
        assert ": 11 of 12 tensors changed, max |Δ| 2.5e-01\n" in text
        shown = next(
            line for line in text.splitlines() if line.startswith("  …") and ":" not in line
        )
        head, tail = shown.strip().split("…")
        assert head == "" and deep.endswith("." + tail)  # shortened from the left, components whole


# ------------------------------------------------------------------ one styled golden


def _markup(renderable: RenderableType, width: int) -> str:
    """Rendered with colour, each styled run written as rich markup ('[bold red]nan 128[/]'): readable in review."""
    console = Console(
        width=width, force_terminal=True, color_system="truecolor", highlight=False, soft_wrap=False
    )
    lines = []
    for line in console.render_lines(renderable, pad=False):
        parts = []
        for seg in line:
            style = str(seg.style) if seg.style and str(seg.style) != "none" else ""
            parts.append(
                f"[{style}]{escape(seg.text)}[/]"
                if style and seg.text.strip()
                else escape(seg.text)
            )
        lines.append("".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def test_styled_golden(golden: Golden, monkeypatch: pytest.MonkeyPatch) -> None:
    import modinspect
    from modinspect.analysis.diff import DiffOptions
    from modinspect.names import KeyMap
    from modinspect.render.console import diff_renderable

    monkeypatch.chdir(SAMPLES)  # labels as the user typed them, the same on every machine
    with modinspect.open_source("small_cnn.pth") as a, modinspect.open_source("ddp.pt") as b:
        report = modinspect.diff_sources(
            a, b, DiffOptions(keymap=KeyMap(strip_prefixes=("module.",)))
        )
    text = _markup(diff_renderable(report, 120), 120)
    assert "[bold red]" in text and "[bold]Changed, most severe first[/]" in text
    golden("diff_styled_120.txt", text)


def test_golden_files_are_plain_text() -> None:
    for path in (Path(__file__).parent / "golden").glob("*_[0-9]*.txt"):
        assert "\x1b[" not in path.read_text(encoding="utf-8"), path
