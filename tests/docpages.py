"""The README and the docs pages as the tests read them: where each example lives, and how to find it."""

from __future__ import annotations

import re
import unicodedata

from conftest import REPO

# README.md first, then docs/*.md in name order: every page whose examples the tests run.
PAGES: dict[str, str] = {
    name: (REPO / name).read_text(encoding="utf-8")
    for name in ["README.md", *(f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md")))]
}
README = PAGES["README.md"]


def page(name: str) -> str:
    """One page's text, by its path from the repository root (`README.md`, `docs/tree.md`)."""
    return PAGES[name]


def fenced(text: str, info: str) -> list[tuple[int, str]]:
    """(line number, body) of each ``` block whose info string is `info` ("" for a bare ```), in order."""
    found: list[tuple[int, str]] = []
    opened: tuple[int, str] | None = None  # (line number, info string) of the block being read
    body: list[str] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if opened is None and line.startswith("```"):
            opened, body = (number, line[3:].strip()), []
        elif opened is not None and line.rstrip("\n") == "```":
            if opened[1] == info:
                found.append((opened[0], "".join(body)))
            opened = None
        elif opened is not None:
            body.append(line)
    return found


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading: markup dropped, lower case, dashes."""
    text = re.sub(r"<[^>]*>|[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (outside code blocks)."""
    found: set[str] = set()
    fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#").strip()))
    return found
