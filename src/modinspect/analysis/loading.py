"""Which checkpoint tensors fit which model tensors: the plan behind --weights and `modinspect load`."""

from __future__ import annotations

from collections.abc import Sequence

from modinspect.report import Alias, LoadPlan, Mismatch
from modinspect.sources.base import TensorInfo


def plan_load(model: Sequence[TensorInfo], checkpoint: Sequence[TensorInfo]) -> LoadPlan:
    """Give every key a status: loaded, cast, mismatched, missing, unexpected or tied.

    Only what a state dict holds counts on the model's side (parameters and persistent buffers).
    A model name whose tied partner is loaded is `tied`, not missing: loading one loads both.
    """
    wanted = [t for t in model if t.persistent is not False]
    ckpt = {t.name: t for t in checkpoint}
    loaded: list[str] = []
    cast: list[Mismatch] = []
    mismatched: list[Mismatch] = []
    absent: list[TensorInfo] = []
    for t in wanted:
        c = ckpt.get(t.name)
        if c is None:
            absent.append(t)
        elif c.shape != t.shape:
            mismatched.append(Mismatch(t.name, _shape(t), _shape(c)))
        else:
            loaded.append(t.name)
            if c.dtype != t.dtype:
                cast.append(Mismatch(t.name, t.dtype, c.dtype))
    loaded_storages = {t.storage: t.name for t in wanted if t.name in set(loaded) and t.storage}
    tied = [Alias(t.name, loaded_storages[t.storage]) for t in absent if t.storage in loaded_storages]
    tied_names = {m.name for m in tied}
    missing = [t.name for t in absent if t.name not in tied_names]
    model_names = {t.name for t in model}
    unexpected = [name for name in ckpt if name not in model_names]
    return LoadPlan(
        loaded=tuple(loaded), cast=tuple(cast), mismatched=tuple(mismatched),
        missing=tuple(missing), unexpected=tuple(unexpected), tied=tuple(tied),
    )


def _shape(t: TensorInfo) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"
