"""`modinspect doctor` as a library call: the SOURCE opened, the example input resolved as `stats` does it.

The CLI is a thin shell over `run_doctor(DoctorRequest(...))`; `parse_expect` reads `--expect NAME=MULT`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.errors import UsageError
from modinspect.reports.doctor import RANK, DoctorReport, Severity

if TYPE_CHECKING:
    from torch import nn

FAIL_ON: tuple[Severity, ...] = ("warning", "error")


@dataclass(frozen=True)
class DoctorRequest:
    """What `modinspect doctor` is asked to do; every field has the CLI's default.

    Attributes:
        source: a SOURCE, a live nn.Module, or None for the [tool.modinspect] default.
        weights: a checkpoint to load into the model first (`--weights`).
        strict: with `weights`, fail on a key that does not match instead of loading what fits.
        unsafe_pickle: let pickles call any global (runs the file's code: only for a file you trust).
        allow_globals: globals a pickle may call beyond the allowlist, as `module.name`.
        max_pickle_size: the largest pickle read, in bytes (None: 256 MiB).
        input_file: a .pt / .safetensors example batch (`--input`).
        input_shapes: shapes of random positional example inputs (`--input-shape`).
        input_dtype: the random inputs' dtype; None: [tool.modinspect]'s input_dtype, else int64 when the
            model has an nn.Embedding, else float32.
        seed: the seed of the random inputs and of torch's generators.
        context: "training" or "inference"; None: the model's own mode.
        select: check identifiers to keep (empty: all).
        ignore: check identifiers to drop.
        expect: (Function name, intended gradient multiple) pairs, e.g. (("GradReverse", -0.1),).
        budget_s: CPU seconds of gradcheck per custom autograd Function.
    """

    source: str | Path | nn.Module | None = None
    weights: str | None = None
    strict: bool = True
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    input_file: Path | None = None
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_dtype: str | None = None
    seed: int = 0
    context: str | None = None
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    expect: tuple[tuple[str, float], ...] = ()
    budget_s: float = 2.0


def parse_expect(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """'GradReverse=-0.1' -> (('GradReverse', -0.1),)."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        try:
            multiple = float(value)
        except ValueError:
            multiple = float("nan")
        if not sep or not name.isidentifier() or multiple != multiple:
            raise UsageError(
                f"--expect {item!r} is not NAME=MULTIPLE, e.g. --expect GradReverse=-0.1"
            )
        out.append((name, multiple))
    return tuple(out)


def exit_code(report: DoctorReport, fail_on: str) -> int:
    """1 when a finding is at or above `fail_on` (warning or error), else 0."""
    if fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on {fail_on!r} is not warning or error")
    return 1 if any(RANK[f.severity] >= RANK[fail_on] for f in report.findings) else 0


def run_doctor(
    request: DoctorRequest, announce: Callable[[str], None] | None = None
) -> DoctorReport:
    """Open SOURCE, build the example input as `stats` does, run doctor: what `modinspect doctor` runs.

    Args:
        request: a DoctorRequest (every field has the CLI's default).
        announce: hears notes (an entry point about to be imported from [tool.modinspect]).

    Returns:
        The DoctorReport of `doctor`.

    Raises:
        ModinspectError: a user error (an unknown check identifier, a bad --context, a SOURCE that does not open).

    Example:
        >>> request = modinspect.DoctorRequest(
        ...     source="sample_models/models.py:small_cnn", input_shapes=((2, 3, 16, 16),)
        ... )
        >>> report = modinspect.run_doctor(request)
        >>> report.kind, report.inputs, report.findings
        ('module', 'random (2, 3, 16, 16) float32 × 1 batch(es), seed 0', ())
    """
    from modinspect.commands.stats import project_defaults
    from modinspect.reports.doctor import check_ids
    from modinspect.run.doctor import doctor
    from modinspect.run.source import open_source
    from modinspect.run.stats import seed_all

    check_ids(request.select, "--select")
    check_ids(request.ignore, "--ignore")
    if request.context not in (None, "training", "inference"):
        raise UsageError(f"--context {request.context!r} is not training or inference")
    extra = project_defaults(request.source)
    seed_all(request.seed)
    src = open_source(
        request.source,
        weights=request.weights,
        unsafe_pickle=request.unsafe_pickle,
        strict=request.strict,
        announce=announce,
        model_weights="init" if request.weights else "pretrained",
        allow_globals=request.allow_globals,
        max_pickle_size=request.max_pickle_size,
    )
    with src:
        options: dict[str, Any] = {
            "select": request.select,
            "ignore": request.ignore,
            "expect": dict(request.expect),
            "context": request.context,
            "budget_s": request.budget_s,
        }
        if src.module is None:
            if request.input_file is not None or request.input_shapes:
                raise UsageError(
                    f"{src.label} is a checkpoint without code: doctor checks its stored values and "
                    "runs nothing, so --input/--input-shape do not apply"
                )
            return doctor(src, **options)
        batch, described = _input(src.module, request, extra)
        from modinspect.sources.module import ModuleSource

        in_use = src.in_use() if isinstance(src, ModuleSource) else _null()
        with in_use:
            return doctor(src, batch, inputs_described=described, **options)


def _input(
    model: nn.Module, request: DoctorRequest, extra: dict[str, object]
) -> tuple[Any, str | None]:
    """The first batch `stats` would run, or (None, None) when no input is given anywhere."""
    from modinspect.commands.stats import default_input_dtype
    from modinspect.run.inputs import InputSpec, resolve_batches

    dtype = request.input_dtype or str(extra.get("input_dtype") or default_input_dtype(model))
    spec = InputSpec(
        file=request.input_file,
        shapes=request.input_shapes,
        dtype=dtype,
        batches=1,
        seed=request.seed,
    )
    if (
        spec.file is None
        and not spec.shapes
        and "input_shape" not in extra
        and "input" not in extra
        and getattr(model, "example_input_array", None) is None
    ):
        return None, None
    batches, described = resolve_batches(
        model, spec, {**extra, "input_dtype": dtype} if "input_shape" in extra else extra
    )
    return next(iter(batches)), described


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()
