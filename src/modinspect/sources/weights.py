"""--weights: load a checkpoint into a module source, strictly by default."""

from __future__ import annotations

from modinspect.analysis.loading import plan_load
from modinspect.errors import WeightsMismatchError
from modinspect.report import LoadPlan
from modinspect.sources.base import Source
from modinspect.sources.module import ModuleSource


def describe_problems(plan: LoadPlan, limit: int = 3) -> str:
    """'2 missing (fc.weight, fc.bias), 1 unexpected (head.weight)' in one line."""
    parts = []
    for label, names in (
        ("missing", list(plan.missing)),
        ("unexpected", list(plan.unexpected)),
        ("with another shape", [f"{m.name} {m.model} vs {m.checkpoint}" for m in plan.mismatched]),
    ):
        if names:
            shown = ", ".join(names[:limit]) + (f", … {len(names) - limit} more" if len(names) > limit else "")
            parts.append(f"{len(names)} {label} ({shown})")
    return "; ".join(parts)


def apply_weights(model: Source, checkpoint: Source, strict: bool = True) -> LoadPlan:
    """Copy every loadable checkpoint tensor into the module; raise under `strict` if any key fails."""
    import torch

    assert isinstance(model, ModuleSource)
    plan = plan_load(model.tensors, checkpoint.tensors)
    if strict and not plan.strict_ok:
        raise WeightsMismatchError(
            f"{checkpoint.label} does not match {model.label}: {describe_problems(plan)}; "
            "fix the key names or pass --no-strict to load what matches"
        )
    meta = any(p.device.type == "meta" for p in model.module.parameters())
    if meta:
        model.notes.append(f"weights from {checkpoint.label} checked against the model, not loaded (--meta)")
        return plan
    state = model.module.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in checkpoint.iter_tensors(plan.loaded):
            state[name].copy_(tensor)
    if not plan.strict_ok:
        model.warnings.append(f"--weights loaded {len(plan.loaded)} tensors; {describe_problems(plan)}")
    model.notes.append(f"weights: {len(plan.loaded)} tensors loaded from {checkpoint.label}")
    model.refresh()
    return plan
