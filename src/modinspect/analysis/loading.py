"""Which checkpoint tensors fit which model tensors: the plan behind --weights and `modinspect load`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from modinspect.names import WRAPPER_PREFIXES, KeyMap, suggest_prefix
from modinspect.reports import Alias, LoadPlan, Mismatch
from modinspect.sources.base import TensorInfo
from modinspect.sources.layout_hints import layout_hints
from modinspect.sources.module import shares_storage

if TYPE_CHECKING:
    from torch import nn


def plan_load(
    model: Sequence[TensorInfo],
    checkpoint: Sequence[TensorInfo],
    keymap: KeyMap | None = None,
    module: nn.Module | None = None,
    shared: Mapping[str, str] | None = None,
) -> LoadPlan:
    """Give every key a status: loaded, cast, mismatched, missing, unexpected or tied. Nothing is loaded.

    Checkpoint keys are rewritten by `keymap` first. Only what a state dict holds counts on the model's
    side (parameters and persistent buffers). A model name whose tied partner is loaded is `tied`, not
    missing: loading one loads both.

    Args:
        model: the model's TensorInfo (`Source.tensors` of the model).
        checkpoint: the checkpoint's TensorInfo.
        keymap: how checkpoint keys are rewritten before matching (strip/add prefixes, renames, filters).
        module: the live model, to tell a part of a shared storage from a copy of it.
        shared: checkpoint keys recorded only as sharing a kept key's storage (`Source.shared_storage`): one
            whose shape or dtype is not the model's is a part of the kept tensor, not a copy of it, and is
            `tied` when the model's tensor too lies in the kept one's storage.

    Returns:
        A LoadPlan; `strict_ok` says whether a strict load would succeed.

    Example:
        >>> model = modinspect.open_source("sample_models/models.py:small_cnn")
        >>> with modinspect.open_source("sample_models/ddp.pt") as ckpt:  # saved from DDP: "module." prefixes
        ...     plan = modinspect.plan_load(model.tensors, ckpt.tensors)
        ...     fixed = modinspect.plan_load(model.tensors, ckpt.tensors, modinspect.KeyMap(strip_prefixes=("module.",)))
        >>> len(plan.missing), len(plan.unexpected), len(fixed.loaded), fixed.strict_ok
        (16, 16, 16, True)
    """
    keymap = keymap or KeyMap()
    wanted = [t for t in model if t.persistent is not False]
    # A checkpoint's non-persistent buffers (an entry point's, a Hugging Face directory's) are no state dict entries.
    mapped = keymap.map_names(
        [t.name for t in checkpoint if t.persistent is not False], "the checkpoint"
    )
    by_name = {t.name: t for t in checkpoint}
    ckpt = {new: by_name[old] for new, old in mapped.items()}
    loaded: list[str] = []
    sources: list[tuple[str, str]] = []
    cast: list[Mismatch] = []
    mismatched: list[Mismatch] = []
    absent: list[TensorInfo] = []
    parts: list[
        tuple[TensorInfo, str]
    ] = []  # (model tensor, the checkpoint key whose storage holds it)
    for t in wanted:
        c = ckpt.get(t.name)
        if (
            c is not None
            and shared
            and c.name in shared
            and (c.shape != t.shape or c.dtype != t.dtype)
        ):
            parts.append((t, shared[c.name]))
        elif c is None:
            absent.append(t)
        elif c.shape != t.shape:
            mismatched.append(Mismatch(t.name, _shape(t), _shape(c)))
        else:
            loaded.append(t.name)
            sources.append((t.name, c.name))
            if c.dtype != t.dtype:
                cast.append(Mismatch(t.name, t.dtype, c.dtype))
    loaded_set = set(loaded)
    loaded_storages = {t.storage: t.name for t in wanted if t.name in loaded_set and t.storage}
    tied = [
        Alias(t.name, loaded_storages[t.storage]) for t in absent if t.storage in loaded_storages
    ]
    if parts:
        as_model = {old: new for new, old in mapped.items()}
        for t, kept in parts:
            whole = as_model.get(kept)
            if whole in loaded_set and module is not None and shares_storage(module, t.name, whole):
                tied.append(Alias(t.name, whole))
            else:
                absent.append(t)
    tied_names = {m.name for m in tied}
    missing = [t.name for t in absent if t.name not in tied_names]
    model_names = {t.name for t in model}
    unexpected = [ckpt[name].name for name in ckpt if name not in model_names]
    unmatched = [n for n in ckpt if n not in model_names]
    # `module`, when given, lets the hints recognise its library's checkpoint layouts (transformers, PEFT).
    hints = layout_hints(missing, unmatched, module) + _hints(
        missing, unmatched, len(loaded), len(wanted)
    )
    return LoadPlan(
        loaded=tuple(loaded),
        cast=tuple(cast),
        mismatched=tuple(mismatched),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        tied=tuple(tied),
        sources=tuple(sources),
        hints=tuple(hints),
    )


def _hints(missing: list[str], unexpected: list[str], loaded: int, wanted: int) -> list[str]:
    """When little matches, the wrapper prefix that explains it and the flag that fixes it."""
    if not missing or not unexpected or loaded * 2 > wanted:
        return []
    hints = []
    strip = suggest_prefix(unexpected, set(missing))
    if strip is not None:
        prefix, hits = strip
        hints.append(
            f"{hits} checkpoint keys match the model once the prefix '{prefix}' "
            f"({WRAPPER_PREFIXES[prefix]}) is removed: pass --strip-prefix {prefix}"
        )
    add = suggest_prefix(missing, set(unexpected))
    if add is not None:
        prefix, hits = add
        hints.append(
            f"{hits} model keys match the checkpoint once the prefix '{prefix}' is added to its keys: "
            f"pass --add-prefix {prefix}"
        )
    return hints


def _shape(t: TensorInfo) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"
