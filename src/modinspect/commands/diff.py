"""`modinspect diff` as a library call: open both SOURCEs and compare them tensor by tensor, streamed.

    report = run_diff(DiffRequest("before.safetensors", "after.safetensors", exact=True))
    report.differs, [d.name for d in report.changed]

The CLI (the Typer command and the Typer-free fast path in cli/launch.py alike) parses its options into a
DiffRequest, passes its spinner and progress bar, prints the report and exits 1 when `report.differs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modinspect.commands.feedback import Phase, ProgressBar, Warn, no_progress, quiet_phase
from modinspect.names import KeyMap
from modinspect.reports import DiffReport

__all__ = ["DiffRequest", "run_diff"]


@dataclass(frozen=True)
class DiffRequest:
    """What `modinspect diff A B` is asked to do; every field has the CLI's default."""

    a: str  # any SOURCE, or an entry point with weights_a
    b: str
    weights_a: str | None = None  # a checkpoint to load into A when A is an entry point
    weights_b: str | None = None
    atol: float | None = None  # None: torch.testing's default for the dtypes compared
    rtol: float | None = None
    exact: bool = False  # bitwise equality: no tolerance
    nan_equal: bool = True  # NaN against NaN counts as equal
    keymap: KeyMap | None = None  # prefixes stripped, renames, include/exclude globs (both sides)
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None


def run_diff(
    request: DiffRequest,
    warn: Warn | None = None,
    phase: Phase = quiet_phase,
    progress: ProgressBar = no_progress,
) -> DiffReport:
    """Open A and B, then diff_sources them; raises ModinspectError on a user error.

    `warn` gets both sources' warnings once they are open; `phase` wraps the opening; `progress(total)`
    is entered with the bytes both sides store, and its `advance(n)` hears the bytes compared so far.
    """
    from modinspect.analysis.diff import DiffOptions, diff_sources
    from modinspect.run.source import open_source

    options = DiffOptions(
        atol=request.atol,
        rtol=request.rtol,
        exact=request.exact,
        nan_equal=request.nan_equal,
        keymap=request.keymap or KeyMap(),
    )
    gate: dict[str, Any] = {
        "unsafe_pickle": request.unsafe_pickle,
        "allow_globals": request.allow_globals,
        "max_pickle_size": request.max_pickle_size,
        "max_layers": request.max_layers,
    }
    with phase("opening the sources…"):
        src_a = open_source(request.a, weights=request.weights_a, **gate)
        try:
            src_b = open_source(request.b, weights=request.weights_b, **gate)
        except BaseException:
            src_a.close()
            raise
    with src_a, src_b:
        if warn is not None:
            warn(src_a.warnings + src_b.warnings)
        total = sum(t.nbytes for t in src_a.tensors) + sum(t.nbytes for t in src_b.tensors)
        with progress(total) as advance:
            return diff_sources(src_a, src_b, options, progress=advance)
