"""Shared fixtures: checkpoints written into tmp_path, a CLI runner with a fixed, colourless console."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from modinspect.cli.app import app
from modinspect.sources import Source

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
Golden = Callable[[str, str], None]  # the `golden` fixture: golden(name, text)


@pytest.fixture(autouse=True)
def _plain_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered output is deterministic: fixed width, no colour, whatever the caller's terminal."""
    for var in ("FORCE_COLOR", "CLICOLOR_FORCE", "TERM", "COLORTERM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def live(source: Source) -> Any:
    """The source's live nn.Module, typed Any: a test reaches into its own model's attributes."""
    assert source.module is not None, f"{source.label} has no live module"
    return source.module


def invoke(*args: str | Path, cwd: Path | None = None) -> Result:
    """Run the CLI in-process; returns Typer's (click's) Result: exit_code, stdout, stderr."""
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture
def chdir(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="Rewrite tests/golden/ from current output."
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """golden(name, text): compare with tests/golden/<name>, or rewrite it under --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = Path(__file__).parent / "golden" / name
        if update:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        assert text == path.read_text(encoding="utf-8")

    return check
