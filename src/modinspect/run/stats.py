"""Activation and gradient statistics of a model run: hooks on, batches through, model restored.

The hooks themselves live in stats_hooks.py; this module runs the batches, replays a flagged batch
exactly, and guarantees the model is left as it was found.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from modinspect.errors import ModinspectError
from modinspect.reports import FrozenParams, StatsReport
from modinspect.run.attribution import OpTracer, nonfinite_tensors, refine_origin
from modinspect.run.collector import (
    HIST_BINS,
    HIST_SAMPLE,
    RELU_FAMILY,
    Batch,
    Collector,
    StatsOptions,
    floating,
    unit_dim,
)
from modinspect.run.reductions import diagnose
from modinspect.tensors import iter_tensors

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "HIST_BINS",
    "HIST_SAMPLE",
    "RELU_FAMILY",
    "Batch",
    "ForwardError",
    "StatsOptions",
    "as_batches",
    "collect_stats",
    "preserved",
    "seed_all",
    "unit_dim",
]


class ForwardError(ModinspectError):
    """The model's forward (or backward) raised: reported as a user error with the modules that ran."""


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore training flags, requires_grad and .grad of every module and parameter afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    # Forward passes in training mode update BatchNorm running statistics (and a replayed batch would
    # update them twice): keep every buffer's values.
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with _no_grad():
            for b, value in buffers:
                b.copy_(value)
        for m, mode in modes:
            m.training = mode
        for p, requires_grad, grad in saved:
            p.grad = grad
            p.requires_grad_(requires_grad)


def seed_all(seed: int) -> None:
    """Seed torch (every device), Python's `random`, and NumPy when loaded: model construction and dropout."""
    import random
    import sys

    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


def _no_grad() -> contextlib.AbstractContextManager[Any]:
    import torch

    return torch.no_grad()


def _loss(output: Any, loss: str | Callable[[Any], Any]) -> tuple[torch.Tensor | None, str]:
    """The scalar to run backward on, and what it is: `output.loss`, `output['loss']`, sum, mean or custom.

    "auto" (the default) takes the loss a model computed itself (a Hugging Face model given labels
    returns a ModelOutput whose `loss` is set), and otherwise the sum of the floating outputs.
    """
    import torch

    if callable(loss):
        value = loss(output)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ModinspectError("the --loss function must return a scalar tensor")
        return value.reshape(()), "custom"
    if loss == "auto":
        own, described = _own_loss(output)
        if own is not None:
            return own, described
        loss = "sum"
    tensors = [t for t in floating(iter_tensors(output)) if t.requires_grad]
    if not tensors:
        return None, loss
    parts = [t.float().sum() if loss == "sum" else t.float().mean() for t in tensors]
    return torch.stack(parts).sum(), loss


def _own_loss(output: Any) -> tuple[torch.Tensor | None, str]:
    """A scalar `loss` the model returned (attribute of a ModelOutput/dataclass, or a dict key)."""
    import torch

    value, described = None, ""
    if isinstance(output, dict) and "loss" in output:
        value = output["loss"]
        described = (
            "output.loss" if hasattr(output, "to_tuple") else "output['loss']"
        )  # ModelOutput or plain dict
    elif not isinstance(output, torch.Tensor | tuple | list) and isinstance(
        getattr(output, "loss", None), torch.Tensor
    ):
        value, described = output.loss, "output.loss"
    if (
        isinstance(value, torch.Tensor)
        and value.numel() == 1
        and value.is_floating_point()
        and value.requires_grad
    ):
        return value.reshape(()), described
    return None, ""


def collect_stats(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    options: StatsOptions | None = None,
    source: str = "",
    device: str = "cpu",
    inputs: str = "",
    progress: Callable[[int], None] | None = None,
    merge_ranks: bool = True,
) -> StatsReport:
    """Run `model` on each batch with hooks on its modules and return merged per-module statistics.

    The model is left as it was found: hooks removed, training flags, requires_grad and .grad restored
    (also when the forward or backward raises); parameters are never updated.

    Under torch.distributed (each rank calling this on its own slice of the batches) the parameter
    gradients are averaged over the ranks after each backward (summed for the `sum` loss), a batch one
    rank flags is replayed on all of them, and the statistics are merged exactly at the end
    (modinspect.run.ranks): every rank returns the same report.

    Args:
        model: the nn.Module to run, already on `device` with its batches.
        batches: an iterable (a list, a generator) of batches, each what `model` is called with, read as
            `modinspect stats --input` reads a file: a tensor is the one positional input
            (`model(x)`), a tuple or list holds the positional inputs (`model(x, mask)`), a dict the
            keyword inputs (`model(**d)`), and a pair `(args, kwargs)` whose first item is a tuple or
            list and whose second a dict is both (`model(*args, **kwargs)`). A bare tensor is refused,
            not iterated row by row: wrap one batch in a list.
        options: backward, loss, autocast, mode, module filter (default: `StatsOptions()`, the CLI's).
        source: the model's name in the report and in error messages.
        device: where the model and the batches are, named in the report.
        inputs: a description of the batches, kept in the report.
        progress: called with 1 after each batch.
        merge_ranks: under torch.distributed, merge the ranks' statistics (False: each rank keeps to its
            own batches, with no collective of modinspect's own; an FSDP model's forward still gathers).

    Returns:
        A StatsReport: per-module statistics in call order, the first NaN/Inf's origin, diagnoses.

    Raises:
        ForwardError: the model's forward or backward raised (named with the modules that ran).
        ModinspectError: a TorchScript model (no Python hooks), or no module matches the filter.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> report = modinspect.collect_stats(model, [torch.randn(16, 4), torch.randn(8, 4)])
        >>> report.batches, [(m.name, m.type, m.count) for m in report.modules]
        (2, [('', 'Sequential', 48), ('0', 'Linear', 192), ('1', 'ReLU', 192), ('2', 'Linear', 48)])
    """
    import torch

    import modinspect.run.ranks as distributed

    options = options or StatsOptions()
    batches = as_batches(batches)
    ranks = distributed.ranks() if merge_ranks else distributed.Ranks()

    if isinstance(model, torch.jit.ScriptModule):
        raise ModinspectError(
            f"{source or 'this model'} is TorchScript, whose modules take no Python hooks; run stats on the Python "
            f"model instead, e.g. an entry point with --weights {source or 'CHECKPOINT'}"
        )
    named = [
        (n, m)
        for n, m in model.named_modules()
        if options.pattern is None
        or fnmatch.fnmatchcase(n, options.pattern)
        or n == options.pattern
    ]
    if not named:
        raise ModinspectError(f"--filter {options.pattern!r} matches no module")
    acc = torch.float32 if device.startswith("mps") else torch.float64
    collector = Collector([n for n, _ in named], [m for _, m in named], options, acc)
    notes: list[str] = []
    losses: list[str] = []  # what backward ran on, per batch
    backward_origin = None
    handles = []
    batches_run = 0
    with preserved(model):
        model.train(options.train)
        if options.backward:
            for p in model.parameters():
                if p.is_floating_point():
                    p.requires_grad_(True)
                    p.grad = None
        try:
            for _, m in named:
                handles.append(m.register_forward_pre_hook(collector.pre_hook, with_kwargs=True))
                handles.append(m.register_forward_hook(collector.forward_hook, with_kwargs=True))
            for args, kwargs in batches:
                rng = _rng_state()
                collector.exact = options.exact
                collector.begin_batch()
                _run_batch(
                    model, args, kwargs, collector, options, device, notes, losses, ranks=ranks
                )
                if not _end_batch(collector, ranks):
                    # Something may be non-finite: run the batch again, same RNG, with exact masked reductions
                    # and the op tracer, which finds the op and the source line.
                    _restore_rng(rng)
                    collector.exact = True
                    collector.begin_batch()
                    had_origin = collector.origin is not None
                    weights = [] if had_origin else nonfinite_tensors(model)
                    tracer = (
                        None
                        if had_origin
                        else OpTracer(collector.current_module, lambda: collector.in_hook > 0)
                    )
                    collector.tracer = tracer
                    try:
                        _run_batch(
                            model,
                            args,
                            kwargs,
                            collector,
                            options,
                            device,
                            notes,
                            losses,
                            tracer,
                            ranks,
                        )
                    finally:
                        collector.tracer = None
                    collector.end_batch()
                    if tracer is not None and (
                        collector.origin is not None or tracer.events or weights
                    ):
                        collector.origin, backward_origin = refine_origin(
                            collector.origin,
                            tracer.events,
                            weights,
                            collector.names,
                            [collector._type(m) for m in range(len(collector.names))],
                        )
                batches_run += 1
                if progress is not None:
                    progress(1)
        finally:
            for h in handles:
                h.remove()
            collector.remove_tensor_hooks()
    if ranks.many:
        own = _own_nonfinite(
            collector
        )  # before the merge replaces this rank's totals by everyone's
        sum_loss = _loss_used(losses, options.loss) == "sum"
        # A mean loss per rank, gradients averaged: each rank's output gradient is world times its share.
        distributed.merge_collector(
            collector, ranks, grad_scale=1.0 if sum_loss else 1.0 / ranks.world**2
        )
        collector.origin, backward_origin = _pick_origins(
            distributed.gather((collector.origin, backward_origin, own))
        )
    rows = collector.module_stats()
    cut = collector.without_gradient() if options.backward and batches_run else []
    if cut:
        shown = ", ".join(cut[:5]) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
        notes.append(
            f"no gradient reached {shown}: the loss does not depend on them, or a non-differentiable op "
            "(e.g. a quantized Linear) cut the graph"
        )
    found = any(
        r.nan or r.inf or r.grad_nan or r.grad_inf or r.param_grad_nan or r.param_grad_inf
        for r in rows
    )
    origin = collector.origin
    return StatsReport(
        source=source,
        device=device,
        dtype=options.autocast_dtype,
        mode="train" if options.train else "eval",
        batches=batches_run,
        backward=options.backward,
        loss=_loss_used(losses, options.loss),
        inputs=inputs,
        modules=tuple(rows),
        nonfinite_origin=origin,
        nonfinite_found=found or origin is not None,
        notes=tuple(dict.fromkeys(notes)),
        backward_origin=backward_origin,
        diagnoses=tuple(diagnose(rows)),
        frozen=frozen_params(model),
    )


def frozen_params(model: nn.Module) -> FrozenParams:
    """The parameters with requires_grad False and the outermost modules all of whose parameters are.

    One pass over named_parameters (each tensor once), marking every enclosing module: a module is fully
    frozen when it holds a parameter and no trainable one.
    """
    frozen = total = tensors = 0
    holds: dict[str, bool] = {}  # module -> whether it holds a trainable parameter
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        if not p.requires_grad:
            frozen += n
            tensors += 1
        trainable = bool(p.requires_grad)
        module = ""
        for part in ["", *name.split(".")[:-1]]:  # "" (the model), then each enclosing module
            module = f"{module}.{part}" if module else part
            holds[module] = holds.get(module, False) or trainable
    # A module whose parent is fully frozen is inside a listed one; a frozen ancestor means a frozen parent.
    outer = [
        m
        for m, moving in holds.items()
        if not moving and (m == "" or holds.get(m.rpartition(".")[0] if "." in m else "", True))
    ]
    return FrozenParams(params=frozen, total=total, tensors=tensors, modules=tuple(outer))


def as_batches(batches: Iterable[Any]) -> Iterator[Batch]:
    """Each batch as the (args, kwargs) the model is called with (see collect_stats); a user error otherwise."""
    import torch

    if isinstance(batches, torch.Tensor | dict | str | bytes) or not isinstance(batches, Iterable):
        raise ModinspectError(
            f"collect_stats takes an iterable of batches, not a {type(batches).__name__}: pass [x] for one batch "
            "x (a tensor, a tuple or list of positional inputs, a dict of keyword inputs, or (args, kwargs))"
        )
    return map(_as_batch, batches)


def _as_batch(batch: Any) -> Batch:
    if (
        isinstance(batch, tuple | list)
        and len(batch) == 2
        and isinstance(batch[0], tuple | list)
        and isinstance(batch[1], dict)
    ):
        return tuple(batch[0]), dict(batch[1])
    if isinstance(batch, tuple | list):
        return tuple(batch), {}
    if isinstance(batch, dict):
        return (), dict(batch)
    return (batch,), {}


def _own_nonfinite(collector: Collector) -> bool:
    """Whether this rank's own activations, output gradients or loss held a NaN/Inf, rather than only the
    parameter gradients that the ranks' gradient all-reduce brought in from another rank."""
    origin = collector.origin
    if origin is not None and (origin.phase == "forward" or origin.cause != "produced"):
        return True
    return any(r.nan or r.inf for r in collector.running) or any(
        g.nan or g.inf for g in collector.grad
    )


def _pick_origins(gathered: Sequence[tuple[Any, Any, bool]]) -> tuple[Any, Any]:
    """The (origin, backward origin) of the rank whose own pass held the NaN/Inf (distributed.pick_origins
    over those ranks, at their places so each keeps its rank); of any rank when none did."""
    import modinspect.run.ranks as distributed

    own = [(o, b) if mine else (None, None) for o, b, mine in gathered]
    if not any(o is not None for o, _ in own):
        own = [(o, b) for o, b, _ in gathered]
    return distributed.pick_origins(own)


def _loss_used(losses: list[str], requested: str | Callable[[Any], Any]) -> str:
    if not losses:
        return "custom" if callable(requested) else "sum" if requested == "auto" else requested
    kinds = list(dict.fromkeys(losses))
    return kinds[0] if len(kinds) == 1 else " / ".join(kinds)


def _rng_state() -> tuple[Any, Any]:
    import torch

    cuda = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        else None
    )
    return torch.get_rng_state(), cuda


def _restore_rng(state: tuple[Any, Any]) -> None:
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _end_batch(collector: Collector, ranks: Any) -> bool:
    """Collector.end_batch; under torch.distributed the ranks agree first: one suspect batch is replayed by all."""
    if not ranks.many:
        return collector.end_batch()
    import torch

    import modinspect.run.ranks as distributed
    from modinspect.run.collector import to_host
    from modinspect.run.transfer import suspect

    packed = collector.pack()
    chunks = collector.unpack(packed, to_host(packed.data))
    bad = not packed.exact and any(suspect(kind, values) for kind, _, values in chunks)
    if bool(distributed.any_rank(torch.tensor(bad)).item()):
        return False
    return collector.merge(packed, chunks)


def _average_grads(model: nn.Module, ranks: Any, summed: bool) -> None:
    """What DDP does after a backward: every rank's parameter gradients replaced by their mean (sum) over the ranks."""
    import modinspect.run.ranks as distributed

    for p in model.parameters():
        if p.grad is not None:
            total = distributed.sum_over_ranks(p.grad.detach()).to(p.grad.dtype)
            p.grad.copy_(total if summed else total / ranks.world)


def _run_batch(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    collector: Collector,
    options: StatsOptions,
    device: str,
    notes: list[str],
    losses: list[str],
    tracer: OpTracer | None = None,
    ranks: Any = None,
) -> None:
    import torch

    autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if options.autocast_dtype is not None:
        autocast = torch.autocast(
            device_type=device.split(":")[0], dtype=getattr(torch, options.autocast_dtype)
        )
    grad_mode = torch.enable_grad() if options.backward else torch.no_grad()
    try:
        tracing = tracer.forward() if tracer is not None else contextlib.nullcontext()
        with grad_mode, autocast, tracing:
            output = model(*args, **kwargs)
            loss, described = _loss(output, options.loss) if options.backward else (None, "")
        if options.backward:
            losses.append(described)
            if loss is None:
                notes.append("no floating output requires grad: backward skipped")
            else:
                collector.record_loss(loss)
                with tracer.backward(loss) if tracer is not None else contextlib.nullcontext():
                    loss.backward()  # type: ignore[no-untyped-call]
                if ranks is not None and ranks.many:
                    _average_grads(model, ranks, summed=described == "sum")
                collector.record_param_grads()
                for p in model.parameters():
                    p.grad = None
    except ModinspectError:
        raise
    except Exception as exc:
        open_calls = getattr(collector, "_open_calls", [])
        where = ""
        if open_calls:
            m = collector.calls[open_calls[-1]].module
            where = f" in {collector.names[m] or '(model)'} ({collector._type(m)})"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ForwardError(f"the model raised {type(exc).__name__}: {first}{where}") from exc
