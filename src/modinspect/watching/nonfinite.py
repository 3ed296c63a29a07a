"""`watch`'s non-finite handling: the flags folded on the device, the checks behind a set flag, the replay.

- `LazyFlags`: on_nonfinite="log" reads nothing per step; the window's flag, its first step and whether a
  weight or buffer held it first are folded on the device and travel with the record.
- `BufferCheck`: the floating buffers the sentinel weighs each step, and which of them were finite at the
  start (a mask buffer may hold -inf on purpose).
- `real_nonfinite_grad`, `weight_origin`: what a set flag means, checked exactly (only then).
- `replay`: the flagged step's first forward (and a backward) through `stats`' exact replay and op tracer.
- `save_inputs`: the offending forward's inputs and, beside them, the weights it started from.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modinspect.run.ranks as distributed
from modinspect.errors import ModinspectError
from modinspect.reports import NonfiniteOrigin
from modinspect.run.collector import StatsOptions
from modinspect.tensors import map_tensors
from modinspect.watching.log import NonfiniteRecord
from modinspect.watching.sentinel import save_weights, tensor_norms, weights_path

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import torch
    from torch import nn

    from modinspect.reports import ModuleStats
    from modinspect.run.attribution import BadTensor

Batch = tuple[tuple[Any, ...], dict[str, Any], Any]  # a forward's args, kwargs and RNG state


class NonFiniteWarning(RuntimeWarning):
    """watch(on_nonfinite="warn") saw the first NaN/Inf."""


def read_flag(flag: torch.Tensor) -> bool:
    """The one per-step read: a single device boolean (none with on_nonfinite="log")."""
    return bool(flag.item())


class LazyFlags:
    """on_nonfinite="log": the window's NaN/Inf flag, its first step and its kind, on the device."""

    def __init__(self) -> None:
        self.bad: torch.Tensor | None = None
        self.first: torch.Tensor | None = None  # the first flagged step (-1: none)
        self.weights: torch.Tensor | None = None  # that step's cause was a weight or buffer

    def fold(self, bad: torch.Tensor, step: int, device: str, weights: bool = False) -> None:
        import torch

        bad = bad.to(device)
        if self.bad is None or self.first is None or self.weights is None:
            self.bad = torch.zeros((), dtype=torch.bool, device=device)
            self.first = torch.full((), -1, dtype=torch.int64, device=device)
            self.weights = torch.zeros((), dtype=torch.bool, device=device)
        self.first = torch.where(bad & ~self.bad, step, self.first)
        if (
            weights
        ):  # a weight already NaN/Inf at the step's start came before anything the step computed
            self.weights = self.weights | (bad & (self.first == step))
        self.bad = self.bad | bad

    def vector(self, acc: torch.dtype, device: Any, ranks: Any) -> torch.Tensor:
        """[any flag of the window, its first step, whether a weight held it first] (zeros when none)."""
        import torch

        if self.bad is None or self.first is None or self.weights is None:
            flags = torch.zeros(3, dtype=acc, device=device)
        else:
            flags = torch.stack([self.bad.to(acc), self.first.to(acc), self.weights.to(acc)]).to(
                device
            )
        if (
            ranks.many
        ):  # any rank's flag; the step is the record's (the ranks' first steps do not add up)
            return distributed.sum_over_ranks(
                flags * torch.tensor([1.0, 0.0, 0.0], dtype=acc, device=device)
            )
        return flags

    def clear(self) -> None:
        self.bad = self.first = self.weights = None


def sentinel_origin(step: int, weights: bool) -> NonfiniteOrigin:
    """The sentinel saw it between logged steps: the step is known, the module is not (no hooks ran)."""
    what = "weight or buffer" if weights else "gradient or loss"
    return NonfiniteOrigin(
        None, None, "backward", "sentinel", (), detail=f"a NaN/Inf {what} at step {step}"
    )


class BufferCheck:
    """The model's floating buffers (BatchNorm's running statistics...), looked up by owner each step."""

    def __init__(self, inner: nn.Module, device: str) -> None:
        import torch

        self.device = device
        self.slots = [
            (f"{mn}.{key}" if mn else key, m, key)
            for mn, m in inner.named_modules()
            for key, b in m._buffers.items()
            if b is not None and b.is_floating_point() and not b.is_meta
        ]
        # Which of them were finite when the watch began: on the device, read only behind a set flag.
        self.ok: torch.Tensor | None = None
        if self.slots:
            with torch.no_grad():
                self.ok = torch.isfinite(
                    torch.stack([n.to(device) for n in tensor_norms(self.tensors())])
                )

    def tensors(self) -> list[torch.Tensor]:
        import torch

        out = []
        for _, m, key in self.slots:
            b = m._buffers.get(key)
            out.append(b.detach() if b is not None else torch.zeros((), device=self.device))
        return out

    def flag(self, norms: list[torch.Tensor]) -> torch.Tensor | None:
        """Whether a buffer finite at the start has a non-finite norm now (on the device)."""
        import torch

        if not norms or self.ok is None:
            return None
        stacked = torch.stack([n.to(self.device) for n in norms])
        return (~torch.isfinite(stacked) & self.ok).any()

    def held(self, inner: nn.Module) -> list[BadTensor]:
        """The parameters and buffers holding NaN/Inf now, exactly, less the buffers that started so."""
        from modinspect.run.attribution import nonfinite_tensors

        ok = self.ok.cpu().tolist() if self.ok is not None else []
        skip = {name for (name, _, _), good in zip(self.slots, ok, strict=True) if not good}
        return [t for t in nonfinite_tensors(inner) if t.name not in skip]


def real_nonfinite_grad(params: list[tuple[str, Any]], grad_norms: dict[int, Any]) -> bool:
    """Whether a gradient whose float32 norm is not finite holds NaN/Inf (its norm may only have overflowed)."""
    import torch

    with torch.no_grad():
        for i, norm in grad_norms.items():
            grad = params[i][1].grad
            if grad is not None and not math.isfinite(float(norm)):
                g = distributed.local(grad.detach())
                if not bool(torch.isfinite(g.coalesce().values() if g.is_sparse else g).all()):
                    return True
    return False


def weight_origin(bad: list[BadTensor]) -> NonfiniteOrigin | None:
    """A weight or buffer that holds NaN/Inf before any output, gradient or loss shows one."""
    if not bad:
        return None
    w = bad[0]
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    return NonfiniteOrigin(
        w.module,
        w.type,
        "forward",
        "weight",
        (),
        tensor=w.name,
        detail=f"`{w.name}` {w.describe()}{more}, while no output, gradient or loss held one: an "
        "optimizer update, an in-place write or a running statistic made it",
    )


def replay(
    inner: nn.Module,
    batch: Batch,
    options: StatsOptions,
    device: str,
    weights: AbstractContextManager[None],
) -> tuple[NonfiniteOrigin | None, list[ModuleStats]] | None:
    """The origin `stats` finds replaying `batch` on `weights`, and its exact rows; None when it cannot run.

    The global RNG state is put back afterwards: the replay draws the forward's random numbers again, and
    the training that goes on must draw what it would have drawn.
    """
    from modinspect.run.stats import _restore_rng, _rng_state, collect_stats

    args, kwargs, rng = batch
    saved = _rng_state()
    try:
        with weights:
            _restore_rng(rng)
            # The user's module, not DDP's wrapper: a replay takes no part in the gradients' all-reduce.
            report = collect_stats(
                inner, [(args, kwargs)], options=options, device=device, merge_ranks=False
            )
    except ModinspectError:
        return None
    finally:
        _restore_rng(saved)
    return report.nonfinite_origin, list(report.modules)


def with_caller(origin: NonfiniteOrigin, caller: tuple[str, str] | None) -> NonfiniteOrigin:
    """The op's line may be inside a library (transformers): the user's own call of the model too."""
    if caller is None or caller[0] == origin.source:
        return origin
    return dataclasses.replace(origin, caller=caller[0], caller_code=caller[1])


def save_inputs(
    inner: nn.Module,
    batch: Batch,
    path: Path,
    overwrite: bool,
    weights: Callable[[], AbstractContextManager[None]] | None,
    step: int,
) -> None:
    """`save_batch`: the forward's inputs (keyword arguments as a dict) and, unless `weights` is None (under
    torchrun), the weights it started from (`weights()` puts them in place) and its RNG state beside them."""
    import torch

    from modinspect.files import atomic_write
    from modinspect.run.stats import _restore_rng

    args, kwargs, _ = batch
    obj: Any
    if args and kwargs and _bindable(inner):
        bound = inspect.signature(inner.forward).bind_partial(*args, **kwargs)
        obj = dict(bound.arguments)  # keyword arguments for `stats --input`
    elif kwargs:
        obj = dict(kwargs)
    else:
        obj = args[0] if len(args) == 1 else tuple(args)
    obj = map_tensors(obj, lambda t: t.detach().cpu(), plain=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp), force=overwrite)
    if weights is None:
        return
    was = torch.get_rng_state()
    _restore_rng(batch[2])
    try:
        with weights():
            save_weights(inner, weights_path(path), step, force=True)
    finally:
        torch.set_rng_state(was)


def _bindable(model: nn.Module) -> bool:
    try:
        inspect.signature(model.forward)
    except (TypeError, ValueError):
        return False
    return True


def describe_nonfinite(step: int, origin: NonfiniteOrigin | None) -> str:
    """One line: 'first NaN/Inf at step 7: fc2 (Linear), forward, aten::log at train.py:12'."""
    if origin is None:
        return f"first NaN/Inf at step {step}"
    if origin.module is None:
        where = {"input": "already in the model's input", "loss": "in the loss"}.get(
            origin.cause, origin.cause
        )
    else:
        where = f"{origin.module or '(model)'} ({origin.type}), {origin.phase}"
    if origin.op:
        where += f", {origin.op}"
    if origin.source:
        where += f" at {origin.source}"
    if origin.caller:
        where += f" (called from {origin.caller})"
    if origin.detail:
        where += f" ({origin.detail})"
    if origin.rank is not None:
        where += f", on rank {origin.rank}"
    return f"first NaN/Inf at step {step}: {where}"


def origin_record(o: NonfiniteOrigin, explanation: str | None = None) -> NonfiniteRecord:
    return NonfiniteRecord(
        module=o.module,
        type=o.type,
        phase=o.phase,
        op=o.op,
        source=o.source,
        code=o.code,
        cause=o.cause,
        rank=o.rank,
        caller=o.caller,
        explanation=explanation,
    )
