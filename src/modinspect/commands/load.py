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
    """What `modinspect load [MODEL] CHECKPOINT` is asked to do; every field has the CLI's default."""

    checkpoint: (
        str | Path | nn.Module
    )  # any SOURCE with a state dict (a path, a directory, an entry point)
    # an entry point, a TorchScript archive, a live nn.Module, or None: [tool.modinspect]
    model: str | Path | nn.Module | None = None
    keymap: KeyMap | None = None
    strict: bool = False
    skip_mismatched: bool = False
    dry_run: bool = False
    meta: bool = False  # build the model on the meta device: a free plan (implies dry_run)
    out: str | Path | None = None
    force: bool = False
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None  # a Hugging Face config.json's layers built at most (default 512)


def run_load(
    request: LoadRequest,
    announce: Callable[[str], None] | None = None,
    warn: Callable[[list[str]], None] | None = None,
) -> LoadReport:
    """Open MODEL and CHECKPOINT, then perform_load: what `modinspect load` runs, as one call.

    `announce` hears notes (an entry point about to be imported from [tool.modinspect]); `warn` gets the
    sources' warnings once both are open, before anything is loaded. Raises MismatchedShapesError (with
    `.report`) like perform_load.
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
    see `MismatchedShapesError.report`). `out` writes the resulting state dict atomically
    (.safetensors with safetensors' save_model, or a torch file); it refuses to overwrite a file without `force`,
    and never overwrites one of `inputs` (the SOURCE paths).
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
