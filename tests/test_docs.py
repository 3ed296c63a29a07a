"""Every command has help with examples, a docs page and an example in the README; the docs build in CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, invoke
from docpages import README, page
from modinspect.cli.app import app

COMMANDS = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]


def test_the_six_commands_are_registered() -> None:
    assert sorted(COMMANDS) == ["diff", "doctor", "load", "report", "stats", "tree"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert f"modinspect {command}" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_docs_page_and_a_readme_example(command: str) -> None:
    assert re.match(rf"# `modinspect {command}\b", page(f"docs/{command}.md")), command
    assert f"(docs/{command}.md)" in README, command
    example = README.split(f"### `modinspect {command}`\n", 1)[1].split("\n### ", 1)[0]
    assert re.search(
        rf"^\$ (cd sample_models && )?modinspect {command}\b", example, re.MULTILINE
    ), command


def test_the_readme_shows_watch_and_every_command() -> None:
    shown = re.findall(r"^### `modinspect[ .](\w+)`", README, re.MULTILINE)
    assert shown == ["tree", "stats", "watch", "report", "diff", "load", "doctor"]


def test_ci_builds_the_docs_strictly_after_mypy() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("mkdocs build --strict") > ci.index("\nmypy")
    pyproject = (REPO / "pyproject.toml").read_text()
    docs_extra = pyproject.split("\ndocs = [", 1)[1].split("\n]", 1)[0]
    dev_extra = pyproject.split("\ndev = [", 1)[1].split("\n]", 1)[0]
    pin = re.search(r'"mkdocs==[\d.]+"', docs_extra)
    assert pin and (pin.group() in dev_extra or "modinspect[docs]" in dev_extra)
    assert "strict: true" in (REPO / "mkdocs.yml").read_text()


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


CONTRIBUTING = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
# (file, name) that CONTRIBUTING.md tells a contributor to edit: each must still be there, or the guide lies.
CITED = [
    ("sources/dispatch.py", "FILE_READERS"),
    ("sources/dispatch.py", "DIR_READERS"),
    ("sources/dispatch.py", "ZIP_READERS"),
    ("sources/dispatch.py", "reader_errors"),
    ("sources/entrypoint.py", "CHECKPOINT_SUFFIXES"),
    ("run/device_stats.py", "moments_fast"),
    ("run/device_stats.py", "moments_exact"),
    ("run/device_stats.py", "grad_totals"),
    ("run/reductions.py", "report_fields"),
    ("render/registry.py", "emit"),
    ("render/console/stats_view.py", "STATS_COLUMNS"),
    ("analysis/doctor_checks.py", "checkpoint_findings"),
    ("run/doctor.py", "static_findings"),
    ("run/doctor.py", "run_checks"),
    ("reports/doctor.py", "CATALOG"),
    ("render/registry.py", "REGISTRY"),
    ("render/jsonout.py", "STATS"),
]


@pytest.mark.parametrize(("path", "name"), CITED, ids=[f"{p}:{n}" for p, n in CITED])
def test_contributing_cites_code_that_exists(path: str, name: str) -> None:
    assert f"`{name}`" in CONTRIBUTING or f"`{name}(" in CONTRIBUTING, name
    source = (REPO / "src" / "modinspect" / path).read_text(encoding="utf-8")
    assert re.search(rf"^\s*(def {name}\(|{name}\b.*=)", source, re.MULTILINE), (path, name)


def test_contributing_paths_exist() -> None:
    paths = re.findall(r"`((?:src|tests|bench|docs)/[\w./]+)`", CONTRIBUTING)
    assert len(paths) > 20
    assert [p for p in paths if not (REPO / p).exists()] == []


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    """What .ci/run does after mypy: MkDocs fails on a broken link, a missing anchor or a page left out of the
    nav. Skipped where mkdocs is not installed (it is in the `dev` and `docs` extras)."""
    pytest.importorskip("mkdocs")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "tree" / "index.html").is_file()


def test_the_readme_links_every_docs_page() -> None:
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert [p for p in pages if f"(docs/{p})" not in README] == []
