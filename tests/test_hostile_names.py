"""Names, types, paths and strings read from files are data: every command shows them verbatim.

A tensor named '[/]' is not a closing tag, '[#000000 on #000000]hidden[/]' must not be hidden, and a name
holding ESC [2J must not clear the screen. Each command (tree, stats, diff, load, report) runs over files
and a model whose names hold rich markup and control characters: every name must appear in the human
output exactly as written, its control characters as visible escapes (JSON keeps the exact strings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import runlogs
from conftest import invoke
from modinspect.render.text import visible, visible_report
from modinspect.reports import ModuleNode, ModuleRow, TensorRow
from modinspect.watching.log import LogHeader, LogWriter, NonfiniteRecord

# Names as they come out of a file: rich markup, a colour pair that would hide the text, an emoji code.
MARKUP = (
    "[/]",
    "[#000000 on #000000]hidden[/]",
    "[bold]b",
    "x[link=https://evil]y",
    ":cross_mark:",
)
# Control characters: clear screen, an OSC window title, a carriage return that overwrites the line, a
# right-to-left override, a C1 CSI, DEL, a tab, a newline.
CONTROL = (
    "\x1b[2J",
    "t\x1b]0;pwned\x07",
    "c\rd",
    "\u202ertl",
    "\x9b31m",
    "del\x7f",
    "tab\there",
    "nl\nx",
)
NAMES = MARKUP + CONTROL
ESCAPED = {
    "\x1b[2J": "\\x1b[2J",
    "t\x1b]0;pwned\x07": "t\\x1b]0;pwned\\x07",
    "c\rd": "c\\rd",
    "\u202ertl": "\\u202ertl",
    "\x9b31m": "\\x9b31m",
    "del\x7f": "del\\x7f",
    "tab\there": "tab\\there",
    "nl\nx": "nl\\nx",
}


def shown(name: str) -> str:
    """How a human view must show `name`: markup as written, control characters as escapes."""
    return ESCAPED.get(name, name)


def no_raw_controls(text: str) -> bool:
    """No control character but the line ends, and no bidi override, reaches the terminal."""
    return not any(
        (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c in "\u202e\u2066" for c in text
    )


MODELS = """
import torch
from torch import nn

NAMES = {names!r}


def build():
    torch.manual_seed(0)
    model = nn.Sequential()
    for name in NAMES:
        kind = type(name, (nn.Linear,), {{}})  # a class whose name is hostile too
        model.add_module(name, kind(4, 4))
    return model
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    keys = [f"m.{name}.w" for name in NAMES]
    metadata = {name: name for name in NAMES}
    save_file({k: torch.zeros(2) for k in keys}, tmp_path / "a.safetensors", metadata=metadata)
    save_file({k: torch.ones(2) for k in keys}, tmp_path / "b.safetensors")
    (tmp_path / "models.py").write_text(MODELS.format(names=NAMES), encoding="utf-8")
    origin = NonfiniteRecord(
        module=NAMES[0],
        type=NAMES[1],
        phase="forward",
        op=NAMES[2],
        source=NAMES[3],
        code=NAMES[4],
        cause="produced",
    )
    modules = tuple((name, name) for name in NAMES)
    with LogWriter(
        tmp_path / "run.jsonl",
        LogHeader(model=NAMES[1], every=10, device=NAMES[2], started=runlogs.STARTED),
    ) as log:
        for i in range(4):
            log.write(runlogs.step_record(i, 2, origin, modules))
    return tmp_path


def _commands(d: Path) -> dict[str, list[str]]:
    a, b, models = d / "a.safetensors", d / "b.safetensors", f"{d / 'models.py'}:build"
    return {
        "tree-file": ["tree", str(a)],
        "tree-model": ["tree", models],
        "stats": ["stats", models, "--input-shape", "2,4", "--no-backward"],
        "diff": ["diff", str(a), str(b)],
        "load": ["load", models, str(a), "--dry-run"],
        "report": ["report", str(d / "run.jsonl")],
    }


COMMANDS = ("tree-file", "tree-model", "stats", "diff", "load", "report")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_shows_every_hostile_name_verbatim(files: Path, command: str) -> None:
    result = invoke(*_commands(files)[command])
    assert result.exit_code in (0, 1), result.output  # diff: 1, they differ
    out = result.stdout
    missing = [name for name in NAMES if shown(name) not in out]
    assert not missing, f"{command} hides {missing}:\n{out}"
    assert no_raw_controls(result.stdout) and no_raw_controls(result.stderr)


def test_diff_lists_every_hostile_key_in_its_table(files: Path) -> None:
    out = invoke(*_commands(files)["diff"]).stdout
    for name in NAMES:
        # Every value is the same on all rows here (moved above the table): a row is its name alone.
        assert sum(line == f"m.{shown(name)}.w" for line in out.splitlines()) == 1, name


def test_load_lists_the_hostile_keys_as_missing_and_unexpected(files: Path) -> None:
    out = invoke(*_commands(files)["load"]).stdout
    for name in NAMES:
        assert f"{shown(name)}.weight" in out and f"m.{shown(name)}.w" in out


def test_tree_metadata_shows_hostile_keys_and_values(files: Path) -> None:
    out = invoke("tree", str(files / "a.safetensors")).stdout
    for name in NAMES:
        assert f"{shown(name)}  {shown(name)}" in out


def test_json_keeps_the_exact_names(files: Path) -> None:
    doc = json.loads(
        invoke("diff", str(files / "a.safetensors"), str(files / "b.safetensors"), "--json").stdout
    )
    assert sorted(d["name"] for d in doc["changed"]) == sorted(f"m.{name}.w" for name in NAMES)


def test_stats_rows_show_hostile_module_names_and_types(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough for the type column
    out = invoke(*_commands(files)["stats"]).stdout
    rows = [re.split(r"\s{2,}", line.strip())[:2] for line in out.splitlines()]
    for name in NAMES:
        assert rows.count([shown(name), shown(name)]) == 1, name


@pytest.mark.parametrize("command", ["tree", "diff", "report"])
def test_an_error_line_shows_a_hostile_path_escaped(tmp_path: Path, command: str) -> None:
    path = tmp_path / "x\x1b]0;pwned\x07\u202e[/].safetensors"
    args = [command, str(path)] + ([str(path)] if command == "diff" else [])
    result = invoke(*args)
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {tmp_path}/x\\x1b]0;pwned\\x07\\u202e[/].safetensors does not exist\n"
    )


def test_json_keeps_the_exact_control_characters(files: Path) -> None:
    doc = json.loads(invoke("tree", str(files / "a.safetensors"), "--json").stdout)
    assert {t["name"] for t in doc["tensors"]} == {f"m.{name}.w" for name in NAMES}


def test_html_report_shows_names_escaped(files: Path) -> None:
    out = files / "r.html"
    assert invoke("report", str(files / "run.jsonl"), "--html", str(out)).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert (
        no_raw_controls(page.replace("\t", ""))
        and "\\u202ertl" in page
        and "t\\x1b]0;pwned\\x07" in page
    )


def test_visible_escapes_each_control_class() -> None:
    assert visible("a\x00\x1f\x7f\x80\x9f\u061c\u200e\u2028\u202a\u202e\u2066\u2069b") == (
        "a\\x00\\x1f\\x7f\\x80\\x9f\\u061c\\u200e\\u2028\\u202a\\u202e\\u2066\\u2069b"
    )
    assert visible("ünïcode 名前 ×12 ‖∇out‖") == "ünïcode 名前 ×12 ‖∇out‖"


def test_visible_report_escapes_every_string_and_copies_nothing_clean() -> None:
    leaf = ModuleNode(row=ModuleRow("deep", None, 0, 0, None, None), tensors=(), children=())
    node = leaf
    for i in range(3000):  # a tree deeper than Python's recursion limit
        node = ModuleNode(
            row=ModuleRow(f"n{i}", "T", 0, 0, None, None), tensors=(), children=(node,)
        )
    assert visible_report(node) is node
    bad = TensorRow("w\x1b[2J", (2,), "float32", 8, "param", None, None, alias_of="v\u202e")
    top = ModuleNode(row=ModuleRow("top", "T", 0, 0, None, None), tensors=(bad,), children=(node,))
    out = visible_report(top)
    assert out.tensors[0].name == "w\\x1b[2J" and out.tensors[0].alias_of == "v\\u202e"
    assert out.tensors[0].shape == (2,) and out.children[0] is node
