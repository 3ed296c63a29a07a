"""Loading a checkpoint into a model, planned and reported: the library behind `modinspect load`.

    model = modinspect.open_source("models.py:build")
    with modinspect.open_source("pretrained.pt") as ckpt:
        report = modinspect.perform_load(model, ckpt, skip_mismatched=True, out="init.safetensors")
    report.plan.missing          # what the checkpoint did not have

Unlike the analysis modules this one acts: it copies tensors into the model and may write a file.
It never prints; every refusal is a ModinspectError with the line the CLI shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.analysis.loading import plan_load
from modinspect.errors import UsageError
from modinspect.names import KeyMap
from modinspect.reports import LoadReport
from modinspect.sources import Source, model_of

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LoadRequest:
    """What `modinspect load [MODEL] CHECKPOINT` is asked to do; every field has the CLI's default.

    Attributes:
        checkpoint: any SOURCE with a state dict (a path, a directory, an entry point).
        model: an entry point, a TorchScript archive, a live nn.Module, or None for [tool.modinspect]'s.
        keymap: how checkpoint keys are rewritten before matching (None: as stored).
        strict: load nothing unless every key matches.
        skip_mismatched: load the rest when some shapes differ, instead of failing.
        dry_run: plan only.
        meta: build the model on the meta device: a free plan (implies `dry_run`).
        out: write the loaded state dict there (.safetensors, else a torch file).
        force: let `out` overwrite an existing file.
        unsafe_pickle: let pickles call any global (runs the file's code: only for a file you trust).
        allow_globals: globals a pickle may call beyond the allowlist, as `module.name`.
        max_pickle_size: the largest pickle read, in bytes (None: 256 MiB).
        max_layers: a Hugging Face config.json's layers built at most (None: 512).
    """

    checkpoint: str | Path | nn.Module
    model: str | Path | nn.Module | None = None
    keymap: KeyMap | None = None
    strict: bool = False
    skip_mismatched: bool = False
    dry_run: bool = False
    meta: bool = False
    out: str | Path | None = None
    force: bool = False
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None


def run_load(
    request: LoadRequest,
    announce: Callable[[str], None] | None = None,
    warn: Callable[[list[str]], None] | None = None,
) -> LoadReport:
    """Open MODEL and CHECKPOINT, then perform_load: what `modinspect load` runs, as one call.

    Args:
        request: a LoadRequest (every field has the CLI's default).
        announce: hears notes (an entry point about to be imported from [tool.modinspect]).
        warn: gets the sources' warnings once both are open, before anything is loaded.

    Returns:
        The LoadReport of `perform_load`.

    Raises:
        MismatchedShapesError: like perform_load (with `.report`); any ModinspectError of opening a source.

    Example:
        >>> request = modinspect.LoadRequest(
        ...     model="sample_models/models.py:small_cnn",
        ...     checkpoint="sample_models/ddp.pt",
        ...     keymap=modinspect.KeyMap(strip_prefixes=("module.",)),
        ...     dry_run=True,
        ... )
        >>> report = modinspect.run_load(request)
        >>> len(report.plan.loaded), report.plan.strict_ok, report.performed
        (16, True, False)
    """
    from modinspect.run.source import open_source

    if request.out is not None and request.meta:
        raise UsageError("--out needs real weights: drop --meta (which only plans)")
    gate: dict[str, Any] = {
        "unsafe_pickle": request.unsafe_pickle,
        "allow_globals": request.allow_globals,
        "max_pickle_size": request.max_pickle_size,
        "max_layers": request.max_layers,
    }
    model = open_source(
        request.model,
        meta=request.meta,
        config_weights=False,
        announce=announce,
        model_weights="header" if request.meta else "init",
        **gate,
    )
    if model.module is None and model.format == "torchscript":
        model_of(model, "load")
    if model.module is None:
        raise UsageError(
            f"{model.label} is a checkpoint, not a model: load needs MODEL as an entry point (file.py:NAME) "
            "or a TorchScript file"
        )
    inputs = [str(p) for p in (request.model, request.checkpoint) if isinstance(p, str | Path)]
    with open_source(request.checkpoint, **gate) as checkpoint:
        if warn is not None:
            warn(model.warnings + checkpoint.warnings)
        return perform_load(
            model,
            checkpoint,
            keymap=request.keymap,
            strict=request.strict,
            skip_mismatched=request.skip_mismatched,
            dry_run=request.dry_run,
            out=request.out,
            force=request.force,
            inputs=inputs,
        )


def perform_load(
    model: Source,
    checkpoint: Source,
    *,
    keymap: KeyMap | None = None,
    strict: bool = False,
    skip_mismatched: bool = False,
    dry_run: bool = False,
    out: str | Path | None = None,
    force: bool = False,
    inputs: Sequence[str | Path] = (),
) -> LoadReport:
    """Plan the load of `checkpoint` into `model`'s module, perform it unless told not to, and report.

    Nothing is copied when `dry_run`, when the model is on the meta device, when `strict` fails, or
    when shapes differ and `skip_mismatched` is off (that last case raises, after the report exists:
    see `MismatchedShapesError.report`).

    Args:
        model: a Source with a live module (an entry point, a live nn.Module, a TorchScript archive).
        checkpoint: the Source whose tensors are loaded.
        keymap: how checkpoint keys are rewritten before matching.
        strict: load nothing unless every key matches (missing, unexpected and mis-shaped keys fail).
        skip_mismatched: load the rest when some shapes differ, instead of raising.
        dry_run: plan only.
        out: write the resulting state dict there, atomically (.safetensors with safetensors' save_model,
            else a torch file).
        force: let `out` overwrite an existing file (never one of `inputs`).
        inputs: the SOURCE paths, which `out` must never overwrite.

    Returns:
        A LoadReport: the plan, whether values were copied (`performed`), the file `written`, and each cast
        key's largest rounding error.

    Raises:
        MismatchedShapesError: shapes differ and `skip_mismatched` is off (`.report` holds the report).
        UsageError: `out` exists without `force`, or is one of the inputs.

    Example:
        >>> net = modinspect.open_source("sample_models/models.py:small_cnn")
        >>> with modinspect.open_source("sample_models/small_cnn.safetensors") as ckpt:
        ...     report = modinspect.perform_load(net, ckpt, strict=True)
        >>> len(report.plan.loaded), report.performed
        (16, True)
    """
    from modinspect.files import atomic_write, check_writable
    from modinspect.run.weights import (
        copy_into,
        describe_mismatched,
        is_meta,
        output_kind,
        write_state_dict,
    )

    module = model_of(model, "load")
    target = Path(out) if out is not None else None
    kind = None
    input_paths = [Path(p) for p in inputs]
    if target is not None:
        kind = output_kind(target)
        check_writable(target, force, input_paths)
    plan = plan_load(
        model.tensors, checkpoint.tensors, keymap, module=module, shared=checkpoint.shared_storage
    )
    planning = dry_run or is_meta(module)
    strict_failed = strict and not plan.strict_ok
    blocked = bool(plan.mismatched) and not skip_mismatched and not strict_failed
    performed, written, cast_errors = False, None, {}
    if not (planning or strict_failed or blocked):
        cast_errors = copy_into(module, plan, checkpoint)
        performed = True
        if target is not None:
            assert kind is not None
            atomic_write(
                target,
                lambda tmp: write_state_dict(module, tmp, kind),
                force=force,
                inputs=input_paths,
            )
            written = str(target)
    report = LoadReport(
        model=model.label,
        checkpoint=checkpoint.label,
        plan=plan,
        strict=strict,
        skip_mismatched=skip_mismatched,
        performed=performed,
        dry_run=planning,
        written=written,
        cast_errors=tuple(cast_errors.items()),
        would_call=tuple(checkpoint.would_call),
    )
    if blocked:
        raise MismatchedShapesError(
            f"{len(plan.mismatched)} tensor(s) have another shape in the checkpoint ({describe_mismatched(plan)}); "
            "nothing was loaded: pass --skip-mismatched to load the rest",
            report,
        )
    return report


class MismatchedShapesError(UsageError):
    """Shapes differ and skipping them was not asked for; `.report` says what would have happened."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report
