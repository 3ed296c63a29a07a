"""Loading a checkpoint into a module: --weights on every command, and `modinspect load`."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modinspect.analysis.loading import plan_load
from modinspect.errors import UsageError, WeightsMismatchError
from modinspect.names import KeyMap
from modinspect.reports import LoadPlan
from modinspect.sources.base import Source
from modinspect.sources.module import ModuleSource

if TYPE_CHECKING:
    from torch import nn


def describe_problems(plan: LoadPlan, limit: int = 3) -> str:
    """'2 missing (fc.weight, fc.bias), 1 unexpected (head.weight)' in one line."""
    parts = []
    for label, names in (
        ("missing", list(plan.missing)),
        ("unexpected", list(plan.unexpected)),
        ("with another shape", [f"{m.name} {m.model} vs {m.checkpoint}" for m in plan.mismatched]),
    ):
        if names:
            shown = ", ".join(names[:limit]) + (
                f", … {len(names) - limit} more" if len(names) > limit else ""
            )
            parts.append(f"{len(names)} {label} ({shown})")
    return "; ".join(parts)


def describe_mismatched(plan: LoadPlan, limit: int = 3) -> str:
    """'classifier.weight [10, 16] in the model vs [5, 16], …' in one line."""
    items = [f"{m.name} {m.model} in the model vs {m.checkpoint}" for m in plan.mismatched]
    return ", ".join(items[:limit]) + (
        f", … {len(items) - limit} more" if len(items) > limit else ""
    )


def is_meta(module: nn.Module) -> bool:
    return any(t.device.type == "meta" for t in [*module.parameters(), *module.buffers()])


def copy_into(module: nn.Module, plan: LoadPlan, checkpoint: Source) -> dict[str, float]:
    """Copy every loaded key's tensor from the checkpoint into the module, one tensor at a time.

    Returns, for each cast key, the largest |checkpoint value − value the model now holds| over the
    finite values, in float64: what copy_'s silent dtype conversion cost.
    """
    import torch

    state = module.state_dict(keep_vars=True)
    ckpt_names = dict(plan.sources)
    cast = {m.name for m in plan.cast}
    errors: dict[str, float] = {}
    own = _own_state_prefixes(module)
    pending: dict[str, Any] = {}
    subclasses = _subclass_pairs(plan, state, checkpoint, ckpt_names)
    with torch.no_grad():
        for name in plan.loaded:
            if name in subclasses:
                for attr, part in subclasses[name].items():
                    getattr(state[name], attr).copy_(part())
                continue
            value = checkpoint.read_tensor(ckpt_names.get(name, name))
            if own and name.startswith(
                own
            ):  # saved by the module's own code: loaded by its own code below
                pending[name] = value
                continue
            state[name].copy_(value)
            if name in cast:
                delta = (state[name].detach().to(torch.float64) - value.to(torch.float64)).abs()
                finite = delta[torch.isfinite(delta)]
                errors[name] = float(finite.max()) if finite.numel() else 0.0
    if pending:
        _load_own_state(module, state, own, pending)
    return errors


def _subclass_pairs(
    plan: LoadPlan, state: dict[str, Any], checkpoint: Source, ckpt_names: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """The loaded keys that are tensor subclasses (torchao's) on either side: for each, its inner tensors'
    readers by attribute, copied one by one into the model's. Checked before anything is copied: a subclass
    loads only into one that holds the same inner tensors, never as its stored values into a float tensor."""
    import torch

    from modinspect.sources.module import subclass_info

    pairs: dict[str, dict[str, Any]] = {}
    for name in plan.loaded:
        source_name = ckpt_names.get(name, name)
        saved = checkpoint.info(source_name).subclass
        target = state.get(name)  # absent: an entry the module's own code saves (packed params)
        live = subclass_info(target) if isinstance(target, torch.Tensor) else None
        if saved is None and live is None:
            continue
        reader = getattr(checkpoint, "read_subclass_part", None)
        if saved is None or live is None or saved.parts != live.parts or reader is None:
            have = f"a {saved.cls.rpartition('.')[2]}" if saved else "a plain tensor"
            want = f"a {live.cls.rpartition('.')[2]}" if live else "a plain tensor"
            raise UsageError(
                f"{name} is {have} in the checkpoint and {want} in the model: quantize the model as the "
                "checkpoint was (torchao's quantize_ with the same config) before loading it"
            )
        pairs[name] = {attr: partial(reader, source_name, attr) for attr, _, _ in saved.parts}
    return pairs


def _own_state_prefixes(module: nn.Module) -> tuple[str, ...]:
    """The name prefixes of modules whose own `_save_to_state_dict` saves more than parameters and buffers."""
    from modinspect.sources.module import has_own_state

    return tuple(
        f"{name}." if name else "" for name, mod in module.named_modules() if has_own_state(mod)
    )


def _load_own_state(
    module: nn.Module, state: dict[str, Any], own: tuple[str, ...], pending: dict[str, Any]
) -> None:
    """Those modules' entries through load_state_dict, as torch would load them: packed (weight, bias) tuples
    rebuilt from their `.0`/`.1` tensors, entries the checkpoint cannot hold as tensors (a dtype) kept as the
    model has them."""
    from collections import OrderedDict

    entries = OrderedDict((k, v) for k, v in state.items() if k.startswith(own))
    entries._metadata = getattr(state, "_metadata", {})  # type: ignore[attr-defined]  # the versions modules load by
    for name, value in pending.items():
        if name in entries:
            entries[name] = value
            continue
        base, _, index = name.rpartition(".")
        packed = entries.get(base)
        if isinstance(packed, tuple) and index.isdigit() and int(index) < len(packed):
            entries[base] = (*packed[: int(index)], value, *packed[int(index) + 1 :])
    module.load_state_dict(entries, strict=False)


def apply_weights(
    model: Source, checkpoint: Source, strict: bool = True, keymap: KeyMap | None = None
) -> LoadPlan:
    """--weights: load every tensor that fits; under `strict` any missing, unexpected or mis-shaped key fails."""
    assert isinstance(model, ModuleSource)
    plan = plan_load(
        model.tensors,
        checkpoint.tensors,
        keymap,
        module=model.module,
        shared=checkpoint.shared_storage,
    )
    if strict and not plan.strict_ok:
        hint = f" ({plan.hints[0]})" if plan.hints else ""
        raise WeightsMismatchError(
            f"{checkpoint.label} does not match {model.label}: {describe_problems(plan)}{hint}; "
            "fix the key names or pass --no-strict to load what matches "
            f"(every key's status: modinspect load {model.label} {checkpoint.label} --dry-run)"
        )
    module = model.module
    if is_meta(module):
        model.notes.append(
            f"weights from {checkpoint.label} checked against the model, not loaded (--meta)"
        )
        return plan
    copy_into(module, plan, checkpoint)
    if not plan.strict_ok:
        model.warnings.append(
            f"--weights loaded {len(plan.loaded)} tensors; {describe_problems(plan)}"
        )
    model.notes.append(f"weights: {len(plan.loaded)} tensors loaded from {checkpoint.label}")
    model.refresh()
    return plan


def write_state_dict(module: nn.Module, target: Path, kind: str) -> None:
    """Write the module's state dict to `target` as `kind` (safetensors | torch).

    safetensors goes through `safetensors.torch.save_model`: each storage is stored once under a name that
    holds it whole (tied weights, a buffer that views part of a parameter) and each dropped name is recorded
    in the metadata, so `safetensors.torch.load_model` restores the model. save_model refuses a tensor that
    views part of a storage no name holds whole (a buffer sliced from a table kept nowhere else); such a
    state dict is written with every tensor whole, which `load_file` + `load_state_dict` read back.
    """
    import torch

    state = module.state_dict()
    if kind != "safetensors":
        torch.save(state, target)
        return
    from safetensors.torch import save_file, save_model

    if _all_storages_held_whole(state):
        save_model(module, str(target), metadata={"format": "pt"})
    else:
        save_file(
            {name: t.detach().clone() for name, t in state.items()},
            str(target),
            metadata={"format": "pt"},
        )


def _all_storages_held_whole(state: dict[str, Any]) -> bool:
    """Whether every tensor's storage is held whole by some name of `state` (what save_model requires)."""
    whole = set()
    for t in state.values():
        storage = t.untyped_storage()
        if t.data_ptr() == storage.data_ptr() and t.nbytes == storage.nbytes():
            whole.add((t.device, storage.data_ptr()))
    return all((t.device, t.untyped_storage().data_ptr()) in whole for t in state.values())


def output_kind(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return "torch"
    raise UsageError(f"--out {path}: use a .safetensors, .pt, .pth, .bin or .ckpt file name")
