"""`modinspect diff` as a library call: open both SOURCEs and compare them tensor by tensor, streamed.

    report = run_diff(DiffRequest("before.safetensors", "after.safetensors", exact=True))
    report.differs, [d.name for d in report.changed]

The CLI (the Typer command and the Typer-free fast path in cli/launch.py alike) parses its options into a
DiffRequest, passes its spinner and progress bar, prints the report and exits 1 when `report.differs`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from modinspect.commands.feedback import Phase, ProgressBar, Warn, no_progress, quiet_phase
from modinspect.errors import UsageError
from modinspect.names import KeyMap
from modinspect.reports import DiffReport

if TYPE_CHECKING:
    from modinspect.sources.base import Source

__all__ = ["DiffRequest", "run_diff"]


@dataclass(frozen=True)
class DiffRequest:
    """What `modinspect diff A B` is asked to do; every field but `a` and `b` has the CLI's default.

    Attributes:
        a: any SOURCE, or an entry point with `weights_a`.
        b: likewise.
        weights_a: a checkpoint to load into A when A is an entry point.
        weights_b: likewise for B.
        atol: absolute tolerance; None: torch.testing's default for the dtypes compared.
        rtol: relative tolerance; None: likewise.
        exact: bitwise equality: no tolerance.
        nan_equal: NaN against NaN counts as equal.
        keymap: prefixes stripped, renames, include/exclude globs (both sides).
        unsafe_pickle: let pickles call any global (runs the file's code: only for a file you trust).
        allow_globals: globals a pickle may call beyond the allowlist, as `module.name`.
        max_pickle_size: the largest pickle read, in bytes (None: 256 MiB).
        max_layers: a Hugging Face config.json's layers built at most (None: 512).
        hf_names: compare a GGUF side under the Hugging Face names of the checkpoint it was converted from
            (without it, a GGUF side against a side that is not GGUF is so compared when more names match
            that way; a hint says so).
    """

    a: str
    b: str
    weights_a: str | None = None
    weights_b: str | None = None
    atol: float | None = None
    rtol: float | None = None
    exact: bool = False
    nan_equal: bool = True
    keymap: KeyMap | None = None
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None
    hf_names: bool = False


def run_diff(
    request: DiffRequest,
    warn: Warn | None = None,
    phase: Phase = quiet_phase,
    progress: ProgressBar = no_progress,
) -> DiffReport:
    """Open A and B, then `diff_sources` them: what `modinspect diff A B` runs.

    Args:
        request: a DiffRequest (every field but `a` and `b` has the CLI's default).
        warn: gets both sources' warnings once they are open.
        phase: wraps the opening with its description.
        progress: entered with the bytes both sides store; its `advance(n)` hears the bytes compared so far.

    Returns:
        The DiffReport of `diff_sources`.

    Raises:
        ModinspectError: a user error (a SOURCE that does not open, a key mapping that sends two keys to one).

    Example:
        >>> request = modinspect.DiffRequest("sample_models/small_cnn.pth", "sample_models/small_cnn.safetensors")
        >>> report = modinspect.run_diff(request)
        >>> report.differs, report.compared, report.identical
        (False, 16, 16)
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
        hint = None
        if request.hf_names:
            src_a, src_b = hf_sides(src_a, src_b)
        else:
            src_a, src_b, hint = _hf_names_if_they_match(src_a, src_b)
        if warn is not None:
            warn(src_a.warnings + src_b.warnings)
        total = sum(t.nbytes for t in src_a.tensors) + sum(t.nbytes for t in src_b.tensors)
        with progress(total) as advance:
            report = diff_sources(src_a, src_b, options, progress=advance)
        return report if hint is None else replace(report, hints=(*report.hints, hint))


def _hf_names_if_they_match(a: Source, b: Source) -> tuple[Source, Source, str | None]:
    """A GGUF side against a side that is not GGUF, under the Hugging Face names when more of the other
    side's names match them than match llama.cpp's: (a, b, the hint that says so, or None)."""
    from modinspect.sources.gguf import GGUFSource
    from modinspect.sources.gguf_names import with_hf_names

    if isinstance(a, GGUFSource) == isinstance(b, GGUFSource):
        return a, b, None
    gguf, other = (a, b) if isinstance(a, GGUFSource) else (b, a)
    try:
        renamed = with_hf_names(gguf)
    except UsageError:  # an architecture without a table
        return a, b, None
    names = other.state_dict_names()
    as_is, mapped = set(gguf.names()), set(renamed.names())
    if sum(n in mapped for n in names) <= sum(n in as_is for n in names):
        return a, b, None
    side = "A" if gguf is a else "B"
    hint = (
        f"{side}'s GGUF tensor names were matched under the Hugging Face names of the checkpoint it was "
        "converted from (as --hf-names does)"
    )
    return (renamed, b, hint) if gguf is a else (a, renamed, hint)


def hf_sides(a: Source, b: Source) -> tuple[Source, Source]:
    """A and B with each GGUF side under Hugging Face names; a UsageError when neither is a GGUF file."""
    from modinspect.sources.gguf import GGUFSource
    from modinspect.sources.gguf_names import with_hf_names

    if not isinstance(a, GGUFSource) and not isinstance(b, GGUFSource):
        raise UsageError(
            f"--hf-names applies to GGUF files; neither {a.label} ({a.format}) nor {b.label} "
            f"({b.format}) is one"
        )
    return (
        with_hf_names(a) if isinstance(a, GGUFSource) else a,
        with_hf_names(b) if isinstance(b, GGUFSource) else b,
    )
