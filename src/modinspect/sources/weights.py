"""Loading a checkpoint into a module: --weights on every command, and `modinspect load`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modinspect.analysis.keymap import KeyMap
from modinspect.analysis.loading import plan_load
from modinspect.errors import UsageError, WeightsMismatchError
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


def describe_mismatched(plan: LoadPlan, limit: int = 3) -> str:
    """'classifier.weight [10, 16] in the model vs [5, 16], …' in one line."""
    items = [f"{m.name} {m.model} in the model vs {m.checkpoint}" for m in plan.mismatched]
    return ", ".join(items[:limit]) + (f", … {len(items) - limit} more" if len(items) > limit else "")


def is_meta(module: Any) -> bool:
    return any(t.device.type == "meta" for t in [*module.parameters(), *module.buffers()])


def copy_into(module: Any, plan: LoadPlan, checkpoint: Source) -> dict[str, float]:
    """Copy every loaded key's tensor from the checkpoint into the module, one tensor at a time.

    Returns, for each cast key, the largest |checkpoint value − value the model now holds| over the
    finite values, in float64: what copy_'s silent dtype conversion cost.
    """
    import torch

    state = module.state_dict(keep_vars=True)
    ckpt_names = dict(plan.sources)
    cast = {m.name for m in plan.cast}
    errors: dict[str, float] = {}
    with torch.no_grad():
        for name in plan.loaded:
            value = checkpoint.read_tensor(ckpt_names.get(name, name))
            state[name].copy_(value)
            if name in cast:
                delta = (state[name].detach().to(torch.float64) - value.to(torch.float64)).abs()
                finite = delta[torch.isfinite(delta)]
                errors[name] = float(finite.max()) if finite.numel() else 0.0
    return errors


def apply_weights(model: Source, checkpoint: Source, strict: bool = True, keymap: KeyMap | None = None) -> LoadPlan:
    """--weights: load every tensor that fits; under `strict` any missing, unexpected or mis-shaped key fails."""
    assert isinstance(model, ModuleSource)
    plan = plan_load(model.tensors, checkpoint.tensors, keymap, module=model.module)
    if strict and not plan.strict_ok:
        hint = f" ({plan.hints[0]})" if plan.hints else ""
        raise WeightsMismatchError(
            f"{checkpoint.label} does not match {model.label}: {describe_problems(plan)}{hint}; "
            "fix the key names or pass --no-strict to load what matches "
            f"(every key's status: modinspect load {model.label} {checkpoint.label} --dry-run)"
        )
    if is_meta(model.module):
        model.notes.append(f"weights from {checkpoint.label} checked against the model, not loaded (--meta)")
        return plan
    copy_into(model.module, plan, checkpoint)
    if not plan.strict_ok:
        model.warnings.append(f"--weights loaded {len(plan.loaded)} tensors; {describe_problems(plan)}")
    model.notes.append(f"weights: {len(plan.loaded)} tensors loaded from {checkpoint.label}")
    model.refresh()
    return plan


def write_state_dict(module: Any, target: Path, kind: str) -> None:
    """Write the module's state dict to `target` as `kind` (safetensors | torch), tied weights as save_model does."""
    import torch

    state = module.state_dict()
    if kind == "safetensors":
        from safetensors.torch import save_file

        kept: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
        metadata = {"format": "pt"}
        out: dict[str, torch.Tensor] = {}
        for name, t in state.items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
            if t.numel() and key in kept:
                metadata[name] = kept[key]  # the dropped alias -> the name kept, like save_model
                continue
            kept[key] = name
            out[name] = t.detach().contiguous()
        save_file(out, str(target), metadata=metadata)
    else:
        torch.save(state, target)


def output_kind(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return "torch"
    raise UsageError(f"--out {path}: use a .safetensors, .pt, .pth, .bin or .ckpt file name")
