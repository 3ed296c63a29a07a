"""Every command has help with examples and a README section; the README's JSON field names exist."""

from __future__ import annotations

import re

import pytest

from conftest import REPO, invoke
from modinspect.cli.app import app

COMMANDS = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_six_commands_are_registered() -> None:
    assert sorted(COMMANDS) == ["diff", "doctor", "load", "report", "stats", "tree"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert f"modinspect {command}" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_readme_section(command: str) -> None:
    assert re.search(rf"^## `modinspect {command}\b", README, re.MULTILINE), command


def test_readme_has_the_two_fresh_machine_commands() -> None:
    assert "bash .ci/run" in README
    assert re.search(
        r"pip install torch==2\.13\.0 && pip install -c constraints\.txt -e \. && modinspect tree "
        r"sample_models/",
        README,
    )
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and "constraints.txt" in ci


def test_changelog_follows_keep_a_changelog() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert changelog.startswith("# Changelog") and "## [Unreleased]" in changelog
