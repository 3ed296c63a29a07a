"""What a command may tell its caller while it works, as callbacks: the commands never print.

The CLI passes its own (a note on stderr, a spinner and a progress bar on a terminal); a library caller
passes nothing and hears nothing, or passes `list.append` to keep what was said.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

Announce = Callable[[str], None]
"""Hears a note before something happens (an entry point named by [tool.modinspect] about to be imported)."""

Warn = Callable[[list[str]], None]
"""Gets the opened sources' warnings, once, before the work starts."""

Phase = Callable[[str], AbstractContextManager[object]]
"""`with phase("opening the source…"):` wraps a step whose length is unknown (the CLI's spinner)."""

ProgressBar = Callable[[int], AbstractContextManager[Callable[[int], None]]]
"""`with progress(total) as advance:` then `advance(n)` as n of `total` units are done (the CLI's bar)."""


def quiet_phase(_message: str) -> AbstractContextManager[object]:
    """A Phase that shows nothing."""
    return contextlib.nullcontext()


def no_progress(_total: int) -> AbstractContextManager[Callable[[int], None]]:
    """A ProgressBar that shows nothing."""
    return contextlib.nullcontext(_ignore)


def _ignore(_n: int) -> None:
    return None
