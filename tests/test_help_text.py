"""Every command's --help shows its declared help texts whole: no bracketed text is eaten as rich markup."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.core import TyperGroup

from conftest import invoke
from modinspect.cli.app import app

_COMMAND = typer.main.get_command(app)
assert isinstance(_COMMAND, TyperGroup)  # an app of several commands is a group
CLICK_APP: TyperGroup = _COMMAND
COMMANDS = sorted(CLICK_APP.commands)
BRACKETED = re.compile(r"\[[^\]\n]*\]")


def _declared(text: str) -> str:
    """A help text as the user should read it: rich's markup escapes (`\\[`) removed, whitespace collapsed."""
    return " ".join(text.replace("\\[", "[").split())


def _rendered(command: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: nothing wraps inside a text
    monkeypatch.setenv("TERMINAL_WIDTH", "2000")
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    lines = [line.strip(" │╭╮╰╯─") for line in result.stdout.splitlines()]
    return " ".join(" ".join(lines).split())


def _help_texts(command: str) -> list[str]:
    cmd = CLICK_APP.commands[command]
    texts = [cmd.help or ""]
    texts += [getattr(p, "help", None) or "" for p in cmd.params]
    return [_declared(t) for t in texts if t]


def test_every_command_is_walked() -> None:
    assert COMMANDS == ["diff", "doctor", "load", "report", "stats", "tree"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_bracketed_help_text_is_shown_verbatim(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = _rendered(command, monkeypatch)
    bracketed = [m for text in _help_texts(command) for m in BRACKETED.findall(text)]
    missing = [m for m in bracketed if m not in shown]
    assert not missing, f"{command} --help lost {missing}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_help_is_shown_whole(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _rendered(command, monkeypatch)
    cmd = CLICK_APP.commands[command]
    missing = [
        p.name
        for p in cmd.params
        if (text := getattr(p, "help", None)) and _declared(text) not in shown
    ]
    assert not missing, f"{command} --help does not show the help of {missing}"


def test_the_known_bracketed_texts_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "(e.g. 1G) [default: 256M]." in _rendered("tree", monkeypatch)
    assert "TorchScript; default: [tool.modinspect]);" in _rendered("load", monkeypatch)
    assert "Absolute tolerance [default: per dtype]." in _rendered("diff", monkeypatch)
