"""Loading a checkpoint into a model, planned and reported: the library behind `modinspect load`.

    model = modinspect.open_source("models.py:build")
    with modinspect.open_source("pretrained.pt") as ckpt:
        report = modinspect.perform_load(model, ckpt, skip_mismatched=True, out="init.safetensors")
    report.plan.missing          # what the checkpoint did not have

Unlike the analysis modules this one acts: it copies tensors into the model and may write a file.
It never prints; every refusal is a ModinspectError with the line the CLI shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modinspect.analysis.keymap import KeyMap
from modinspect.analysis.loading import plan_load
from modinspect.errors import UsageError
from modinspect.report import LoadReport
from modinspect.sources import Source, model_of


def perform_load(model: Source, checkpoint: Source, *, keymap: KeyMap | None = None, strict: bool = False,
                 skip_mismatched: bool = False, dry_run: bool = False, out: str | Path | None = None,
                 force: bool = False, inputs: Sequence[str | Path] = ()) -> LoadReport:
    """Plan the load of `checkpoint` into `model`'s module, perform it unless told not to, and report.

    Nothing is copied when `dry_run`, when the model is on the meta device, when `strict` fails, or
    when shapes differ and `skip_mismatched` is off (that last case raises, after the report exists:
    see `MismatchedShapesError.report`). `out` writes the resulting state dict atomically
    (.safetensors like save_model, or a torch file); it refuses to overwrite a file without `force`,
    and never overwrites one of `inputs` (the SOURCE paths).
    """
    from modinspect.sources.weights import (
        copy_into,
        describe_mismatched,
        is_meta,
        output_kind,
        write_state_dict,
    )
    from modinspect.writes import atomic_write, check_writable

    module = model_of(model, "load")
    target = Path(out) if out is not None else None
    kind = None
    input_paths = [Path(p) for p in inputs]
    if target is not None:
        kind = output_kind(target)
        check_writable(target, force, input_paths)
    plan = plan_load(model.tensors, checkpoint.tensors, keymap, module=module)
    planning = dry_run or is_meta(module)
    strict_failed = strict and not plan.strict_ok
    blocked = bool(plan.mismatched) and not skip_mismatched and not strict_failed
    performed, written, cast_errors = False, None, {}
    if not (planning or strict_failed or blocked):
        cast_errors = copy_into(module, plan, checkpoint)
        performed = True
        if target is not None:
            assert kind is not None
            atomic_write(target, lambda tmp: write_state_dict(module, tmp, kind), force=force, inputs=input_paths)
            written = str(target)
    report = LoadReport(model=model.label, checkpoint=checkpoint.label, plan=plan, strict=strict,
                        skip_mismatched=skip_mismatched, performed=performed, dry_run=planning, written=written,
                        cast_errors=tuple(cast_errors.items()))
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
