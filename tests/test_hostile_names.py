"""Names, types, paths and strings read from files are data: every command shows them verbatim.

A tensor named '[/]' is not a closing tag, and '[#000000 on #000000]hidden[/]' must not be hidden.
Each command (tree, stats, diff, load, report) runs over files and a model whose names hold rich markup,
and every name must appear in the human output exactly as written.
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
from modinspect.watchlog import LogHeader, LogWriter, NonfiniteRecord

# Names as they come out of a file: rich markup, a colour pair that would hide the text, an emoji code.
MARKUP = ("[/]", "[#000000 on #000000]hidden[/]", "[bold]b", "x[link=https://evil]y", ":cross_mark:")
NAMES = MARKUP


def shown(name: str) -> str:
    """How a human view must show `name`."""
    return name


MODELS = '''
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
'''


@pytest.fixture
def files(tmp_path: Path) -> Path:
    keys = [f"m.{name}.w" for name in NAMES]
    metadata = {name: name for name in NAMES}
    save_file({k: torch.zeros(2) for k in keys}, tmp_path / "a.safetensors", metadata=metadata)
    save_file({k: torch.ones(2) for k in keys}, tmp_path / "b.safetensors")
    (tmp_path / "models.py").write_text(MODELS.format(names=NAMES), encoding="utf-8")
    origin = NonfiniteRecord(module=NAMES[0], type=NAMES[1], phase="forward", op=NAMES[2], source=NAMES[3],
                             code=NAMES[4], cause="produced")
    modules = tuple((name, name) for name in NAMES)
    with LogWriter(tmp_path / "run.jsonl", LogHeader(model=NAMES[1], every=10, device=NAMES[2],
                                                      started=runlogs.STARTED)) as log:
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


def test_diff_lists_every_hostile_key_in_its_table(files: Path) -> None:
    out = invoke(*_commands(files)["diff"]).stdout
    for name in NAMES:
        assert sum(line.startswith(f"m.{shown(name)}.w ") for line in out.splitlines()) == 1, name


def test_load_lists_the_hostile_keys_as_missing_and_unexpected(files: Path) -> None:
    out = invoke(*_commands(files)["load"]).stdout
    for name in NAMES:
        assert f"{shown(name)}.weight" in out and f"m.{shown(name)}.w" in out


def test_tree_metadata_shows_hostile_keys_and_values(files: Path) -> None:
    out = invoke("tree", str(files / "a.safetensors")).stdout
    for name in NAMES:
        assert f"{shown(name)}  {shown(name)}" in out


def test_json_keeps_the_exact_names(files: Path) -> None:
    doc = json.loads(invoke("diff", str(files / "a.safetensors"), str(files / "b.safetensors"), "--json").stdout)
    assert sorted(d["name"] for d in doc["changed"]) == sorted(f"m.{name}.w" for name in NAMES)


def test_stats_rows_show_hostile_module_names_and_types(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough for the type column
    out = invoke(*_commands(files)["stats"]).stdout
    rows = [re.split(r"\s{2,}", line.strip())[:2] for line in out.splitlines()]
    for name in NAMES:
        assert rows.count([shown(name), shown(name)]) == 1, name
