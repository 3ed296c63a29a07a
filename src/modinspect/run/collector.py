"""The hook machinery behind `stats` and `watch`: hooks wired to device reductions, merged after one transfer.

Every hook call reduces its tensor to a few device scalars (`device_stats`: no `.item()`, no host sync)
and queues them (`transfer.TransferQueue`); at the end of a batch they are stacked, copied to the host in
one transfer, turned back into named records (`reductions`) and merged exactly there. The first NaN/Inf
is found from the calls and tensors the hooks noted (`origins`).

Gradients are captured with tensor hooks on module outputs, not `register_full_backward_hook`,
which breaks on in-place modules. Each tensor gets one hook however many modules return it.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modinspect.reports import ModuleStats, NonfiniteOrigin
from modinspect.run import device_stats
from modinspect.run.device_stats import (
    BLOCKED_DOT,
    HIST_BINS,
    HIST_SAMPLE,
    Scratch,
    sumsq,
    unit_dim,
)
from modinspect.run.origins import Call, ForwardEvent, GradEvent, OriginFinder, TensorRec
from modinspect.run.reductions import (
    NEAR_LIMIT,
    GradTotals,
    Moments,
    ParamGradTotals,
    Running,
    flags_for,
    from_chunk,
    grad_outliers,
    slot,
)
from modinspect.run.transfer import Chunk, Packed, TransferQueue, suspect, to_host, unpack
from modinspect.tensors import iter_tensors

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modinspect.run.attribution import OpTracer

__all__ = [
    "BLOCKED_DOT",
    "HIST_BINS",
    "HIST_SAMPLE",
    "RELU_FAMILY",
    "Batch",
    "Collector",
    "Packed",
    "StatsOptions",
    "floating",
    "sumsq",
    "to_host",
    "unit_dim",
]

RELU_FAMILY = ("ReLU", "ReLU6")
Batch = tuple[tuple[Any, ...], dict[str, Any]]
_LO, _HI = slot(Moments, "lo"), slot(Moments, "hi")
_NAN, _INF = slot(Moments, "nan"), slot(Moments, "inf")


@dataclass
class StatsOptions:
    """How `collect_stats` runs the model and what it records; the CLI's defaults.

    Attributes:
        backward: run a backward too, for the gradient statistics.
        pattern: hook only the modules whose name matches this glob (None: every module).
        loss: what the backward starts from: "auto" (the model's own `loss` output if any, else "sum"),
            "sum", "mean", or a function of the output.
        autocast_dtype: "bfloat16" or "float16" to run under torch.autocast; None: the model's own dtypes.
        train: run in training mode (dropout, batch statistics); False: eval mode.
        histogram: keep a histogram of each module's output over [min, max] of its first call.
        exact: always use the masked reductions (normally only for a batch with a NaN/Inf).
    """

    backward: bool = True
    pattern: str | None = None
    loss: str | Callable[[Any], Any] = (
        "auto"  # auto: the model's own `loss` output if any, else sum
    )
    autocast_dtype: str | None = None  # "bfloat16" | "float16" | None
    train: bool = False
    histogram: bool = True
    exact: bool = False  # always use the masked reductions (normally only for batches with NaN/Inf)


def floating(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [t for t in tensors if t.is_floating_point() and t.numel() > 0]


class Collector:
    """Hook state for one run. Host-side totals live in `running`, `grad` and `param_grad` (named records)."""

    def __init__(
        self, names: list[str], modules: list[Any], options: StatsOptions, acc_dtype: torch.dtype
    ) -> None:
        import torch

        self.names = names
        self.modules = modules
        self.options = options
        self.acc = acc_dtype
        self.index = {id(m): i for i, m in enumerate(modules)}
        self.running = [Running() for _ in modules]
        self.alive: list[torch.Tensor | None] = [None] * len(modules)
        self.units_ok = [True] * len(modules)
        self.histograms: list[tuple[int, ...]] = [() for _ in modules]
        self.hist_range: list[tuple[float, float] | None] = [
            None for _ in modules
        ]  # [min, max] the bins span
        self.input_from: dict[
            int, int
        ] = {}  # module -> the module whose output was its first input
        self.grad = [GradTotals() for _ in modules]
        self.param_grad = [ParamGradTotals() for _ in modules]
        self.origin: NonfiniteOrigin | None = None
        self.wants_grad: set[int] = set()  # modules whose first output required grad
        self.first_call: dict[
            int, int
        ] = {}  # module -> order of its first call, for execution order
        self.batch_index = 0
        # Fast mode computes statistics that are exact when every value is finite; a mean, M2 or sum of
        # squares that is not finite (read on the host) flags the batch, which is replayed in exact (masked) mode.
        self.exact = False
        self._nonnegative = (
            torch.nn.ReLU,
            torch.nn.ReLU6,
        )  # outputs >= 0 (or NaN): sum |x| is their sum
        self.tensor_hooks: list[Any] = []
        self.in_hook = 0
        self.tracer: OpTracer | None = None  # set during the replay of a flagged batch
        self._scratch = Scratch()
        self.sample: float | None = (
            None  # histogram: this fraction of the elements (watch's sample=), else HIST_SAMPLE
        )
        self._reset_batch()

    def remove_tensor_hooks(self) -> None:
        for handle in self.tensor_hooks:
            handle.remove()
        self.tensor_hooks = []

    # ---------------------------------------------------------------- per batch
    def _reset_batch(self) -> None:
        # Values waiting for the end-of-batch transfer. Hooks only append; nothing is stacked or converted per call.
        self.queue = TransferQueue(self.acc)
        self.calls: list[Call] = []
        self.tensors: list[TensorRec] = []
        # Keyed by object and version: an in-place module (ReLU(inplace=True)) returns its input object
        # with a bumped version, and the gradient of the new value is not the gradient of the old one.
        self.tensor_ids: dict[tuple[int, int], tuple[weakref.ref[Any], int]] = {}
        self.finite_cache: dict[int, tuple[weakref.ref[Any], int, torch.Tensor | int]] = {}
        self.reduce_cache: dict[int, tuple[weakref.ref[Any], int, list[Any]]] = {}
        self.hist_pending: set[int] = set()  # modules whose histogram this batch already queued
        self.hist_cache: dict[
            int, tuple[list[Any], torch.Tensor]
        ] = {}  # id(reduced values) -> (values, counts)
        self.producer_of: dict[tuple[int, int], tuple[weakref.ref[Any], int]] = {}
        self.loss_bad: torch.Tensor | None = None

    def pack(self) -> Packed:
        """The queued values of this batch stacked into one device vector, with what is needed to merge them later.

        No transfer: `stats` copies it at once (end_batch), `watch` keeps a window of them and copies them together.
        """
        for m, a in enumerate(self.alive):
            if a is not None:
                self.queue.push("alive", m, [a])
        return self.queue.pack(self.calls, self.tensors, self.exact)

    unpack = staticmethod(unpack)

    def nonfinite_flag(self) -> torch.Tensor | None:
        """A 0-dim device bool: did anything queued so far hold NaN/Inf (or, in fast mode, look like it)?"""
        return self.queue.nonfinite_flag(self.exact)

    # ---------------------------------------------------------------- device reductions
    def _nonfinite(self, t: torch.Tensor) -> torch.Tensor | int:
        """A 0-dim device bool: does `t` hold NaN/Inf? Reuses the answer for an unchanged tensor.

        An int 0 where `t` is a fast-mode output of a hooked module: its own mean and M2 say it (`transfer`).
        """
        hit = self.finite_cache.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        flag = device_stats.nonfinite(t, self.exact)
        self.finite_cache[id(t)] = (weakref.ref(t), t._version, flag)
        return flag

    def _reduce_fast(self, t: torch.Tensor, nonnegative: bool = False) -> list[Any]:
        """The `Moments` chunk of `t`, exact when its values are finite (`device_stats.moments_fast`)."""
        return device_stats.moments_fast(t, self._scratch, nonnegative)

    def _reduce(self, t: torch.Tensor) -> list[Any]:
        """The `Moments` chunk of `t` over its finite values, NaN/Inf counted (`device_stats.moments_exact`)."""
        return device_stats.moments_exact(t)

    def _histogram(self, t: torch.Tensor, values: list[Any]) -> torch.Tensor:
        """Counts over [min, max] of the call whose `Moments` chunk is `values` (`device_stats.histogram`)."""
        return device_stats.histogram(t, values[_LO], values[_HI], self.sample, self.exact)

    # ---------------------------------------------------------------- hooks
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.in_hook += 1  # the op tracer of a replay ignores our own reductions
        try:
            self._pre_hook(module, args, kwargs)
        finally:
            self.in_hook -= 1

    def forward_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self.in_hook += 1
        try:
            self._forward_hook(module, args, kwargs, output)
        finally:
            self.in_hook -= 1

    def current_module(self) -> int | None:
        """The innermost hooked module whose forward is running."""
        open_calls = getattr(self, "_open_calls", None)
        return self.calls[open_calls[-1]].module if open_calls else None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        call_index = len(self.calls)
        call = Call(self.index[id(module)])
        self.first_call.setdefault(call.module, len(self.first_call))
        inputs = floating(iter_tensors((args, kwargs)))
        if inputs:
            if call.module not in self.input_from:
                hit = self.producer_of.get((id(inputs[0]), inputs[0]._version))
                if hit is not None and hit[0]() is inputs[0]:
                    self.input_from[call.module] = hit[1]
            # Host zeros: fast-mode outputs of hooked modules, whose own values make a NaN/Inf suspect.
            flags = [f for f in (self._nonfinite(t) for t in inputs) if isinstance(f, torch.Tensor)]
            if flags:
                call.in_bad = flags[0] if len(flags) == 1 else torch.stack(flags).any()
        self.calls.append(call)
        if self.options.backward and torch.is_grad_enabled():
            for t in inputs:
                if t.requires_grad:
                    self._tensor(t).consumers.append(call_index)
        # Forward hooks fire in completion order; the call index links pre and post.
        self._open_calls.append(call_index)

    def _forward_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        import torch

        call_index = self._open_calls.pop()
        if self.tracer is not None:
            self.tracer.note_output(output, self.calls[call_index].module)
        call = self.calls[call_index]
        m = call.module
        outputs = floating(iter_tensors(output))
        in_bad: Any = call.in_bad if call.in_bad is not None else 0
        if not outputs:
            self.queue.push("call", m, [in_bad, 0])
            return
        # The innermost module that returned this tensor (forward hooks fire innermost first).
        key = (id(outputs[0]), outputs[0]._version)
        known = self.producer_of.get(key)
        if known is None or known[0]() is not outputs[0]:  # a freed tensor's id can come back
            self.producer_of[key] = (weakref.ref(outputs[0]), m)
        values = self._reduced(outputs[0], isinstance(self.modules[m], self._nonnegative))
        # Fast mode: a NaN/Inf in the first output shows in its own mean or M2, checked on the host.
        out_bad: Any = (values[_NAN] + values[_INF]) > 0 if self.exact else 0
        for other in outputs[1:]:
            bad = self._nonfinite(other)
            out_bad = bad if isinstance(out_bad, int) else out_bad | bad
        self.finite_cache[id(outputs[0])] = (weakref.ref(outputs[0]), outputs[0]._version, out_bad)
        self.queue.push("call", m, [in_bad, out_bad])
        self.queue.push("stats", m, values)
        if (
            self.options.histogram
            and self.batch_index == 0
            and not self.histograms[m]
            and m not in self.hist_pending
        ):
            self.hist_pending.add(m)
            # A parent returning its child's output: the child's counts (the values list is the cached one).
            hist = self.hist_cache.get(id(values))
            if hist is None or hist[0] is not values:
                hist = (values, self._histogram(outputs[0], values))
                self.hist_cache[id(values)] = hist
            self.queue.push("hist", m, [values[_LO], values[_HI], hist[1]])
        if type(self.modules[m]).__name__ in RELU_FAMILY:
            self._track_units(m, outputs[0])
        if self.options.backward and torch.is_grad_enabled():
            for i, t in enumerate(outputs):
                if t.requires_grad:
                    self._tensor(t).producers.append((call_index, i == 0))
                    if i == 0:
                        self.wants_grad.add(m)

    def _reduced(self, t: torch.Tensor, nonnegative: bool = False) -> list[Any]:
        """_reduce, once per tensor and version: a parent returning its child's output costs nothing more."""
        hit = self.reduce_cache.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        values = self._reduce(t) if self.exact else self._reduce_fast(t, nonnegative)
        self.reduce_cache[id(t)] = (weakref.ref(t), t._version, values)
        return values

    def _track_units(self, m: int, out: torch.Tensor) -> None:
        if not self.units_ok[m]:
            return
        alive = device_stats.units_alive(out)
        if alive is None:
            return
        prev = self.alive[m]
        if prev is None:
            self.alive[m] = alive
        elif prev.shape != alive.shape:
            self.units_ok[m] = False  # the unit count changed between calls: no per-unit answer
        else:
            self.alive[m] = prev | alive

    def _tensor(self, t: torch.Tensor) -> TensorRec:
        """The record of `t` at its current version, registering its gradient hook the first time it is seen.

        A hook registered before an in-place op receives the gradient of the value before it, one
        registered after receives the new value's: each version gets its own record and hook.
        """
        key = (id(t), t._version)
        hit = self.tensor_ids.get(key)
        if hit is not None and hit[0]() is t:
            return self.tensors[hit[1]]
        index = len(self.tensors)
        self.tensors.append(TensorRec())
        self.tensor_ids[key] = (weakref.ref(t), index)
        # Hooks on parameters (a leaf used as an activation) would outlive the run: keep every handle.
        self.tensor_hooks.append(t.register_hook(self._grad_hook(index)))  # type: ignore[no-untyped-call]
        return self.tensors[index]

    def _grad_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor | None) -> None:
            self.in_hook += 1
            try:
                record(grad)
            finally:
                self.in_hook -= 1

        def record(grad: torch.Tensor | None) -> None:
            # autograd passes None where a non-differentiable op (a quantized Linear) cut the graph
            if grad is not None:
                self.queue.push("grad", index, device_stats.grad_totals(grad, self.exact))

        return hook

    # ---------------------------------------------------------------- batch boundaries
    def begin_batch(self) -> None:
        self._reset_batch()
        self._open_calls: list[int] = []

    def record_loss(self, loss: torch.Tensor) -> None:
        import torch

        self.queue.push("loss", 0, [(~torch.isfinite(loss.detach())).any()])

    def record_param_grads(self) -> None:
        for m, module in enumerate(self.modules):
            grads = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
            if grads:
                self.queue.push("pgrad", m, device_stats.param_grad_totals(grads, self.exact))

    def end_batch(self) -> bool:
        """The one device->host transfer of the batch, then exact merges on the host.

        Returns False, merging nothing, when a fast-mode batch raised a suspect flag: the caller then
        replays the batch in exact mode.
        """
        packed = self.pack()
        return self.merge(packed, self.unpack(packed, to_host(packed.data)))

    def merge(self, packed: Packed, chunks: list[Chunk]) -> bool:
        """Merge one batch's chunks into the running totals; False (nothing merged) for a suspect fast batch."""
        if not packed.exact and any(suspect(kind, values) for kind, _, values in chunks):
            return False
        self.calls, self.tensors = packed.calls, packed.tensors
        forward_events: list[ForwardEvent] = []
        grad_events: list[GradEvent] = []
        loss_bad = False
        for kind, index, values in chunks:
            if kind == "call":
                forward_events.append((index, values[0] > 0, values[1] > 0))
                self.running[index].calls += 1
            elif kind == "stats":
                self.running[index].merge(from_chunk(Moments, values))
            elif kind == "hist":
                self.hist_range[index] = (values[0], values[1])
                self.histograms[index] = tuple(int(c) for c in values[2:])
            elif kind == "grad":
                grad_events.append((index, from_chunk(GradTotals, values)))
            elif kind == "pgrad":
                self.param_grad[index].merge(from_chunk(ParamGradTotals, values))
            elif kind == "loss":
                loss_bad = values[0] > 0
            elif kind == "alive":
                self.running[index].set_alive(values)
        self._attribute_grads(grad_events)
        if self.origin is None:
            finder = OriginFinder(self.names, self._type, self.calls, self.tensors)
            self.origin = finder.forward(forward_events) or finder.backward(
                grad_events, loss_bad, self.param_grad
            )
        self.batch_index += 1
        return True

    def _attribute_grads(self, grad_events: list[GradEvent]) -> None:
        for index, totals in grad_events:
            for call_index, primary in self.tensors[index].producers:
                m = self.calls[call_index].module
                # Only the primary output's gradient counts toward the norm; NaN/Inf of any output count.
                self.grad[m].merge(totals if primary else GradTotals(0.0, totals.nan, totals.inf))

    # ---------------------------------------------------------------- report
    def _edges(self, m: int) -> tuple[float, ...]:
        """The HIST_BINS + 1 bin edges: equal widths over the [min, max] of the call the histogram sampled."""
        span = self.hist_range[m]
        if span is None or not self.histograms[m]:
            return ()
        lo, hi = span
        return tuple(lo + (hi - lo) * i / HIST_BINS for i in range(HIST_BINS + 1))

    def without_gradient(self) -> list[str]:
        """Modules whose output required grad but never received one (cut off by a non-differentiable op)."""
        return [
            f"{self.names[m] or '(model)'} ({self._type(m)})"
            for m in sorted(self.wants_grad)
            if not self.grad[m].seen
        ]

    def _type(self, m: int) -> str:
        from modinspect.run.wrappers import type_name

        return type_name(self.modules[m])

    def module_stats(self) -> list[ModuleStats]:
        grad_norms = [
            math.sqrt(g.squares) if self.options.backward and g.seen else None for g in self.grad
        ]
        exploding, vanishing = grad_outliers(
            self.names,
            [self._type(m) for m in range(len(self.modules))],
            grad_norms,
            [g.near * NEAR_LIMIT >= 1.0 for g in self.grad],
        )
        rows = []
        for m, r in enumerate(self.running):
            is_relu = type(self.modules[m]).__name__ in RELU_FAMILY
            dead = r.dead_fraction() if is_relu and self.units_ok[m] else None
            pg = self.param_grad[m]
            row = ModuleStats(
                name=self.names[m],
                type=self._type(m),
                **r.report_fields(),
                dead_fraction=dead,
                units=r.units if dead is not None else None,
                grad_norm=grad_norms[m],
                grad_nan=int(self.grad[m].nan),
                grad_inf=int(self.grad[m].inf),
                param_grad_norm=math.sqrt(pg.squares) if pg.seen else None,
                param_grad_nan=int(pg.nan),
                param_grad_inf=int(pg.inf),
                histogram=self.histograms[m] if r.n else (),
                flags=(),
                histogram_edges=self._edges(m) if r.n else (),
                input_from=self.names[self.input_from[m]] if m in self.input_from else None,
            )
            rows.append(
                dataclasses.replace(row, flags=flags_for(row, m in exploding, m in vanishing))
            )
        # Execution order (by first call); modules never called go last, in definition order.
        order = sorted(range(len(rows)), key=lambda m: self.first_call.get(m, len(rows) + m))
        return [rows[m] for m in order]
