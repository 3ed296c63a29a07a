"""JSON text: the record-by-record tree writer gives the documented document exactly, compact or one record a line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import SAMPLES, invoke
from models import Tied, TwoLayer
from modinspect.analysis.tree import build_tree
from modinspect.render.jsonout import dumps, tree_document, tree_json
from modinspect.reports import TreeReport
from modinspect.run.source import open_source
from modinspect.sources.module import ModuleSource

ODD_NAMES = [
    'quo"te.w',
    "back\\slash.w",
    "tab\tand\nnewline.w",
    "ünï.çødé.w",
    "emoji🙂.w",
    "ctl\x01\x1f.w",
    "0.1.2",
]


def reports(tmp_path: Path) -> list[TreeReport]:
    save_file({n: torch.ones(2) for n in ODD_NAMES}, str(tmp_path / "odd.safetensors"))
    out = [
        build_tree(open_source(str(p)))
        for p in (
            SAMPLES / "tiny_lm.safetensors",
            SAMPLES / "small_cnn.pth",
            SAMPLES / "training_checkpoint.pt",
            tmp_path / "odd.safetensors",
        )
    ]
    out += [build_tree(ModuleSource(m, "live", "entrypoint")) for m in (TwoLayer(), Tied())]
    out.append(build_tree(ModuleSource(Tied(), "live", "entrypoint"), pattern="blocks.1"))
    return out


@pytest.mark.parametrize("pretty", [False, True])
def test_tree_json_is_the_tree_document(tmp_path: Path, pretty: bool) -> None:
    for report in reports(tmp_path):
        text = tree_json(report, pretty)
        assert json.loads(text) == tree_document(report)
        assert json.loads(dumps(tree_document(report), pretty)) == tree_document(report)


def test_compact_is_one_line_and_pretty_is_one_record_a_line(tmp_path: Path) -> None:
    report = build_tree(ModuleSource(TwoLayer(), "live", "entrypoint"))
    compact = tree_json(report, pretty=False)
    assert "\n" not in compact and ", " not in compact
    assert compact == json.dumps(tree_document(report), ensure_ascii=False, separators=(",", ":"))
    lines = tree_json(report, pretty=True).splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    modules = lines.index('  "modules":[')
    assert [json.loads(line.rstrip(","))["name"] for line in lines[modules + 1 : modules + 5]] == [
        "",
        "fc1",
        "act",
        "fc2",
    ]
    assert lines[modules + 5] == "  ],"
    assert '  "tied":[],' in lines and '  "schema_version":2,' in lines


def test_piped_json_is_compact(tmp_path: Path) -> None:
    result = invoke("tree", SAMPLES / "tiny_lm.safetensors", "--json")
    assert result.exit_code == 0
    assert (
        result.stdout.count("\n") == 1
    )  # one line and print's newline: CliRunner's stdout is not a terminal
    assert json.loads(result.stdout)["totals"]["params"] == 16032
