"""`watch`: the `stats` hooks inside the user's own training loop, one device->host transfer per `every` steps.

Design (what runs when), in the default mode="sentinel":
- Between logged steps no module hook is registered. After the step's first backward one multi-tensor norm
  over the parameters' gradients, the weights and the floating buffers (`sentinel.tensor_norms`, one read
  of each) and an isfinite of the stacked norms and the loss make the step's NaN/Inf flag; the weights'
  norms (those the step's forward used) feed the update history (`sentinel.UpdateHistory`). A weight or
  buffer made NaN/Inf (by an update, an in-place write, a running statistic) flags the step by itself. Nothing is read on the host with
  on_nonfinite="log": the flag and the first flagged step are folded on the device and travel with the record.
- The step before a logged step registers the Collector of `stats` (stats_hooks.py) on the modules, so the
  logged step's forward and backward are reduced to device scalars in its exact (masked) mode; its end
  removes them again. A record holds the statistics of the logged step alone.
- mode="window": the Collector's hooks stay registered and every step is reduced and packed into one device
  vector (`Collector.pack`), nothing copied; a record then merges every step since the previous one.
- Every `every` steps the window's vectors, the loss and the parameter norms are concatenated and copied
  to the host in one transfer (`stats_hooks.to_host`), merged there exactly (Chan's merge), and written
  as one log record.
- NaN/Inf: unless on_nonfinite="log", one boolean per step (per backward) is read: the OR of the flags
  and counts already queued. It is read at the end of the backward (an autograd engine callback), before
  the optimizer can write NaN into the weights; when it is set, the weights are copied then. At the
  step's end the step's first forward (its args/kwargs, kept by reference, and the RNG state) is replayed
  through `collect_stats` on those weights, whose op tracer names the module, the aten op and the source
  line. Only the first NaN/Inf is traced; the record of that step is written at once. With optimizer= and
  on_nonfinite="raise" the flag is read in an optimizer step pre-hook, which raises before the optimizer
  applies the bad step (`w.check()` does the same in a loop without optimizer=).
- Update norms: the weights are copied at the start of each logged step (at the end of the step before),
  so ‖Δw‖/‖w‖ is the logged step's own update over the weights before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import inspect
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modinspect.run.ranks as distributed
from modinspect.errors import ModinspectError, NonFiniteError, UsageError
from modinspect.reports import ModuleStats, NonfiniteOrigin, ParamStats, WatchReport
from modinspect.run import collector as stats_hooks
from modinspect.run import wrappers
from modinspect.run.collector import RELU_FAMILY, Collector, StatsOptions
from modinspect.run.reductions import NEAR_LIMIT, GradTotals, Running, flags_for, grad_outliers
from modinspect.tensors import map_tensors
from modinspect.watching.log import (
    GroupRecord,
    Histogram,
    LogHeader,
    LogWriter,
    ModuleRecord,
    NonfiniteRecord,
    ParamRecord,
    StepRecord,
    step_document,
)
from modinspect.watching.sentinel import (
    FP32_NORM_LIMIT,
    LoopChecks,
    LoopWarning,
    UpdateHistory,
    caller_frame,
    explain,
    group_hyperparameters,
    learning_rates,
    save_weights,
    tensor_norms,
    weights_path,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modinspect.run.attribution import BadTensor
    from modinspect.run.collector import Packed

ON_NONFINITE = ("warn", "raise", "breakpoint", "log")
MODES = ("sentinel", "window")

__all__ = ["LoopWarning", "NonFiniteWarning", "Watch", "watch"]


class NonFiniteWarning(RuntimeWarning):
    """watch(on_nonfinite="warn") saw the first NaN/Inf."""


def read_flag(flag: torch.Tensor) -> bool:
    """The one per-step read: a single device boolean (none with on_nonfinite="log")."""
    return bool(flag.item())


def watch(
    model: nn.Module,
    *,
    every: int = 100,
    log: str | Path | None = None,
    modules: str | None = None,
    sample: float | None = None,
    on_nonfinite: str = "warn",
    save_batch: str | Path | None = None,
    optimizer: Any = None,
    histogram: bool = True,
    overwrite: bool = False,
    tensorboard: str | Path | None = None,
    training_only: bool = False,
    mode: str = "sentinel",
) -> Watch:
    """Hooks on `model`'s own forward and backward; a context manager whose exit (or `detach()`) removes them.

    Call `w.step(loss)` once per training step (or pass `optimizer=`); every `every` steps one record of
    statistics is written to the log.

    Args:
        model: the nn.Module being trained (DDP, torch.compile and FSDP1 wrappers are looked through).
        every: steps per log record.
        log: a JSON-lines file for the records (`modinspect report` reads it); None: none written.
        modules: a glob of module names to hook (all by default).
        sample: the fraction of elements a histogram counts (default: up to 65,536 evenly spaced).
        on_nonfinite: at the first NaN/Inf, "warn", "raise" (NonFiniteError), "breakpoint", or "log" (no
            per-step read; the log record of the window says where).
        save_batch: a .pt to save the offending forward's inputs to, for `modinspect stats --input`.
        optimizer: steps then advance on its `step()` (a post hook) instead of `w.step()`; with
            on_nonfinite="raise", the error is raised before `optimizer.step()` applies the bad step (without
            it, call `w.check()` between `backward()` and `optimizer.step()` for the same).
        histogram: keep a histogram of each module's output at logged steps.
        overwrite: replace an existing `log` instead of refusing.
        tensorboard: a folder for the same scalars and histograms through torch.utils.tensorboard.
        training_only: ignore forwards run without grad (evaluation loops between steps).
        mode: "sentinel" (default) hooks the modules for the logged step only (one step in `every`): a record
            holds that step's statistics, and the steps between pay only the NaN/Inf sentinel (one multi-tensor
            norm of the gradients and one of the weights per step, no module hook). "window" hooks every step
            and a record merges all the steps since the previous one (every activation counted; costs about
            what `stats` does, on every step).

    Returns:
        A Watch: `step(loss)`, `check()`, `pause()`/`resume()`, `detach()`, and `report()` (a WatchReport).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> with modinspect.watch(model, every=2) as w:
        ...     for _ in range(4):
        ...         loss = model(torch.randn(8, 4)).pow(2).mean()
        ...         loss.backward()
        ...         optimizer.step()
        ...         optimizer.zero_grad()
        ...         w.step(loss)
        >>> report = w.report()
        >>> report.steps, report.records, report.nonfinite_step
        (4, 2, None)
    """
    return Watch(
        model,
        every=every,
        log=log,
        modules=modules,
        sample=sample,
        on_nonfinite=on_nonfinite,
        save_batch=save_batch,
        optimizer=optimizer,
        histogram=histogram,
        overwrite=overwrite,
        tensorboard=tensorboard,
        training_only=training_only,
        mode=mode,
    )


class _Totals:
    """Per-module statistics over the whole run, folded in from each window's Collector."""

    def __init__(self, count: int) -> None:
        self.running = [Running() for _ in range(count)]
        self.grad = [GradTotals() for _ in range(count)]
        self.alive: list[list[bool] | None] = [None] * count
        self.units_ok = [True] * count
        self.steps = 0

    def fold(self, c: Collector, steps: int) -> None:
        """Merge a window's records into the run's, each by its own `merge()`."""
        from modinspect.run.reductions import Units

        self.steps += steps
        for m, r in enumerate(c.running):
            total = self.running[m]
            total.calls += r.calls
            total.merge(r)  # its Moments: calls and units are merged here, each their own way
            self.grad[m].merge(c.grad[m])
            units = Units(self.alive[m] or [], self.units_ok[m])
            units.merge(Units(r.alive, c.units_ok[m]))
            self.alive[m], self.units_ok[m] = units.alive or None, units.ok


class Watch:
    """A watched model. Use as `with modinspect.watch(model) as w:`; call `w.step(loss)` once per step."""

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int,
        log: str | Path | None,
        modules: str | None,
        sample: float | None,
        on_nonfinite: str,
        save_batch: str | Path | None,
        optimizer: Any,
        histogram: bool,
        overwrite: bool,
        tensorboard: str | Path | None = None,
        training_only: bool = False,
        mode: str = "sentinel",
    ) -> None:
        import torch

        if isinstance(model, torch.jit.ScriptModule):
            raise UsageError(
                "TorchScript modules take no Python hooks; watch the Python model instead"
            )
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"watch needs a torch.nn.Module, not {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"every must be a positive number of steps, not {every!r}")
        if on_nonfinite not in ON_NONFINITE:
            raise UsageError(
                f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}, not {on_nonfinite!r}"
            )
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if sample is not None and not 0 < sample <= 1:
            raise UsageError(f"sample must be a fraction in (0, 1], not {sample!r}")
        # Names as the user wrote the model: through DDP / FSDP / torch.compile / checkpoint wrappers.
        named = [
            (n, m)
            for n, m in wrappers.named_modules(model)
            if modules is None or fnmatch.fnmatchcase(n, modules) or n == modules
        ]
        if not named:
            raise UsageError(f"modules={modules!r} matches no module")
        self.model = model
        self._inner = wrappers.unwrap(model)
        self._ranks = distributed.ranks()
        # FSDP1's parameters are plain tensors holding this rank's shard (not DTensors): their squares add up.
        self._fsdp1_sharded = distributed.fsdp1_sharded(model)
        self.every = every
        self.mode = mode
        self.on_nonfinite = on_nonfinite
        self._pattern = modules
        self._names = [n for n, _ in named]
        self._mods = [m for _, m in named]
        self._sample = sample
        self._histogram = histogram
        self._params = [
            (n, p) for n, p in wrappers.named_parameters(model) if p.is_floating_point()
        ]
        self.device = str(distributed.local(self._params[0][1]).device) if self._params else "cpu"
        self._acc = torch.float32 if self.device.startswith("mps") else torch.float64
        self._save_batch = Path(save_batch) if save_batch is not None else None
        self._overwrite = overwrite
        if self._save_batch is not None:
            from modinspect.files import check_writable

            check_writable(self._save_batch, overwrite)
        self.steps = 0
        self.records = 0
        self._window = 0  # steps in the current window
        self._pending: list[Packed] = []
        self._handles: list[Any] = []
        self._paused = False
        self._batch: tuple[tuple[Any, ...], dict[str, Any], Any] | None = None
        self._snapshot: list[torch.Tensor] | None = (
            None  # weights before the optimizer step of a flagged step
        )
        self._update_from: list[torch.Tensor] | None = (
            None  # weights at the start of the logged step
        )
        self._flagged = False
        self._flagged_here = (
            False  # under torchrun: this rank's own flag (`_flagged` is any rank's)
        )
        self._backward_ran = False
        self._grads_seen: set[int] = set()  # parameters whose gradient this backward accumulated
        self._output_hooks: list[Any] = []
        self._callback_queued = False
        self._grad_norms: dict[int, torch.Tensor] = {}
        self._loss: torch.Tensor | None = None
        self._from_optimizer = False
        self._window_open = False  # a step ended and the next has not started
        self.nonfinite_step: int | None = None
        self.nonfinite_origin: NonfiniteOrigin | None = None
        self._last_origin: NonfiniteOrigin | None = (
            None  # of the last record, merged over the ranks
        )
        self._record_origin: NonfiniteOrigin | None = None  # for the next record
        self._last_params: tuple[ParamStats, ...] = ()
        self._totals = _Totals(len(self._mods))
        self._attached = False
        self._writer: LogWriter | None = None
        self._tensorboard: Any = None
        self._training_only = training_only
        self._module_handles: list[
            Any
        ] = []  # the Collector's module hooks (sentinel: the logged step's only)
        self._collected = 0  # steps of the current window the Collector saw
        self._grad_bad: torch.Tensor | None = (
            None  # this step's gradients' NaN/Inf flag, on the device
        )
        self._lazy_bad: torch.Tensor | None = (
            None  # on_nonfinite="log": any flag of the window, on the device
        )
        self._lazy_first: torch.Tensor | None = None  # ... and the first flagged step (-1: none)
        self._backward_started = False
        self._caller: tuple[str, str] | None = (
            None  # the user's line that called the model this step
        )
        self._out_bad: torch.Tensor | None = (
            None  # this step's model outputs' NaN/Inf flag, on the device
        )
        self._history = UpdateHistory([n for n, _ in self._params])
        self._step_lrs: tuple[float | None, ...] = ()  # the lr the current step's update will use
        # Floating buffers (BatchNorm's running statistics...): (name, owner, key), looked up each step.
        self._buffer_slots = [
            (f"{mn}.{key}" if mn else key, m, key)
            for mn, m in self._inner.named_modules()
            for key, b in m._buffers.items()
            if b is not None and b.is_floating_point() and not b.is_meta
        ]
        # Which of them were finite when the watch began (a mask buffer may hold -inf on purpose): on the device.
        self._buffer_ok: torch.Tensor | None = None
        if self._buffer_slots:
            with torch.no_grad():
                self._buffer_ok = torch.isfinite(
                    torch.stack([n.to(self.device) for n in tensor_norms(self._buffers())])
                )
        self._weights_checked = (
            False  # this step's weights and buffers were checked (first backward)
        )
        self._weight_bad: torch.Tensor | None = None  # ... and their NaN/Inf flag, on the device
        self._lazy_weights: torch.Tensor | None = (
            None  # log: the first flagged step's cause was a weight
        )
        # The first NaN/Inf: the weights or buffers holding it.
        self._bad_weights: list[BadTensor] = []
        self._step_batch: tuple[tuple[Any, ...], dict[str, Any], Any] | None = (
            None  # for the flush's replay
        )
        self.explanation: str | None = (
            None  # what happened before the first NaN/Inf, when the history shows it
        )
        self._replay_rows: list[ModuleStats] | None = (
            None  # the replayed first NaN/Inf step's statistics
        )
        self.collector = self._new_collector()
        try:
            self._attach(optimizer)
            if log is not None and self._ranks.writer:
                path = Path(log)
                if path.exists() and not path.is_dir() and not overwrite:
                    raise UsageError(f"log {path} exists; pass overwrite=True to replace it")
                path.parent.mkdir(parents=True, exist_ok=True)
                header = LogHeader(
                    model=wrappers.type_name(self._inner),
                    every=every,
                    device=self.device,
                    world_size=self._ranks.world,
                    started=time.time(),
                )
                self._writer = LogWriter(path, header, force=overwrite)
            if tensorboard is not None and self._ranks.writer:
                from modinspect.watching.tensorboard import TensorBoardWriter

                self._tensorboard = TensorBoardWriter(tensorboard)
        except BaseException:
            self.detach()
            raise
        self.log = str(log) if log is not None else None
        if every == 1:
            self._update_from = self._copy_weights()
        self._set_histogram()

    # ---------------------------------------------------------------- context manager
    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._detach(failed=kind is not None)

    # ---------------------------------------------------------------- hooks
    def _new_collector(self) -> Collector:
        options = StatsOptions(backward=True, pattern=self._pattern, histogram=self._histogram)
        c = Collector(self._names, self._mods, options, self._acc)
        c.exact = self._exact()
        c.sample = self._sample
        c.begin_batch()
        return c

    def _attach(self, optimizer: Any) -> None:
        self._attached = True
        self._handles.append(
            self._inner.register_forward_pre_hook(self._capture, with_kwargs=True, prepend=True)
        )
        self._handles.append(self._inner.register_forward_hook(self._output_hook))
        if self.mode == "window" or self.every == 1:
            self._arm()
        for i, (_, p) in enumerate(self._params):
            if p.requires_grad:
                # torch leaves this method unannotated
                hook = p.register_post_accumulate_grad_hook(self._grad_hook(i))  # type: ignore[no-untyped-call]
                self._handles.append(hook)
        self._optimizer = optimizer
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._optimizer_stepping))
            self._handles.append(optimizer.register_step_post_hook(self._optimizer_stepped))
        self._loop = LoopChecks(self._inner, self._params, optimizer)

    def _exact(self) -> bool:
        """Whether the Collector runs `stats`' exact (masked) reductions rather than its fast ones.

        A window cannot be replayed after the fact, nor can a step under torchrun (the ranks would have to
        agree), nor any step once the weights hold NaN: exact. A sentinel-mode logged step is fast, like
        `stats`: a NaN/Inf makes its mean, M2 or sum of squares non-finite, the step's flag (read at its end)
        is then set, and its record holds the exact statistics of the first NaN/Inf's replay. Under
        on_nonfinite="log" no flag is read, but the record is written at the logged step's own end: when its
        values show a NaN/Inf, the step is replayed then (`_replay_logged`).
        """
        return self.mode == "window" or self._ranks.many or self.nonfinite_step is not None

    def _arm(self) -> None:
        """Register the Collector's module hooks (sentinel mode: for the logged step only)."""
        self.collector.exact = self._exact()
        if self._module_handles:
            return
        for m in self._mods:
            self._module_handles.append(
                m.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            )
            self._module_handles.append(
                m.register_forward_hook(self._forward_hook, with_kwargs=True)
            )

    def _disarm(self) -> None:
        for h in self._module_handles:
            h.remove()
        self._module_handles = []

    def _ignored(self) -> bool:
        """Hooks do nothing while paused (a replay, an evaluation loop) and, with training_only, without grad."""
        if self._paused:
            return True
        if self._training_only:
            import torch

            return not torch.is_grad_enabled()
        return False

    def pause(self) -> None:
        """Ignore forwards and backwards until `resume()` (an evaluation loop between training steps)."""
        self._paused = True

    def resume(self) -> None:
        """Watch forwards and backwards again after `pause()`."""
        self._paused = False

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._paused:
            return
        import torch

        self._loop.forward(torch.is_grad_enabled())
        if not self._ignored() and self._batch is None:
            from modinspect.run.stats import _rng_state

            self._batch = (args, dict(kwargs), _rng_state())
            self._caller = (
                caller_frame()
                if self.on_nonfinite != "log" and self.nonfinite_step is None
                else None
            )
            if (
                self._window_open
            ):  # the first forward of a new step: last step's loss and gradients are spent
                self._loss, self._grad_norms, self._window_open = None, {}, False

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._ignored():
            self.collector.pre_hook(module, args, kwargs)

    def _forward_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not self._ignored():
            self.collector.forward_hook(module, args, kwargs, output)

    def _grad_hook(self, i: int) -> Any:
        def hook(p: torch.Tensor) -> None:
            if self._paused or p.grad is None:
                return
            self._grads_seen.add(i)
            self._queue_after_backward()

        return hook

    def _output_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        """A backward that reaches the model's output queues the end-of-backward callback too.

        FSDP2 assigns its sharded parameters' gradients without accumulating them, so their hooks never fire.
        """
        if self._ignored():
            return
        import torch

        from modinspect.tensors import iter_tensors

        outputs = [t.detach() for t in iter_tensors(output) if t.is_floating_point() and t.numel()]
        if outputs:  # the sentinel's forward half: the model's outputs, one read each
            with torch.no_grad():
                bad = ~torch.isfinite(
                    torch.stack([n.to(self.device) for n in tensor_norms(outputs)])
                ).all()
            if self.on_nonfinite == "log":
                self._fold_lazy(bad)
            else:
                self._out_bad = bad if self._out_bad is None else self._out_bad | bad
        first = next((t for t in iter_tensors(output) if t.requires_grad), None)
        if first is not None:
            self._output_hooks.append(first.register_hook(self._output_grad))  # type: ignore[no-untyped-call]

    def _output_grad(self, grad: Any) -> None:
        if not self._paused:
            if not self._backward_started:
                self._backward_started = True
                self._loop.backward_started()
            self._queue_after_backward()

    def _queue_after_backward(self) -> None:
        if not self._callback_queued:
            import torch

            self._callback_queued = True
            # Runs when this backward finishes, before the user's optimizer step can spread a NaN.
            torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

    def _after_backward(self) -> None:
        import torch

        # Queued from a callback, this one runs after the callbacks queued during the backward, among
        # them DDP's and FSDP's, which wait for the gradients' all-reduce: the norms are of the
        # gradients the optimizer will apply, not of this rank's own.
        torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)

    def _backward_done(self) -> None:
        import torch

        self._callback_queued = False
        self._backward_ran = True
        index, grads = [], []
        for i, (_, p) in enumerate(self._params):
            if p.grad is None or not (i in self._grads_seen or distributed.sharded(p.grad)):
                continue
            g = distributed.local(p.grad.detach())
            if g.is_sparse:  # nn.Embedding(sparse=True)
                g = g.coalesce().values()
            index.append(i)
            grads.append(g)
        self._grads_seen = set()
        self._grad_bad = None
        # The step's first backward also weighs the weights and buffers, before the optimizer updates them:
        # the weights the step's forward used. One multi-tensor norm reads every tensor once.
        weights = [] if self._weights_checked else self._live_weights()
        buffers = [] if self._weights_checked else self._buffers()
        if grads or weights or buffers:
            # The sentinel: a NaN/Inf anywhere in a tensor makes its norm non-finite.
            with torch.no_grad():
                norms = tensor_norms(grads + weights + buffers)
                if grads:
                    self._grad_norms.update(zip(index, norms[: len(grads)], strict=True))
                    self._grad_bad = ~torch.isfinite(
                        torch.stack([n.to(self.device) for n in norms[: len(grads)]])
                    ).all()
                if not self._weights_checked:
                    self._weigh(norms[len(grads) :], len(weights))
        if self.on_nonfinite == "log":
            self._fold_lazy(self._grad_bad)
        elif self._check():
            self._snapshot = self._copy_weights()

    def _buffers(self) -> list[torch.Tensor]:
        import torch

        out = []
        for _, m, key in self._buffer_slots:
            b = m._buffers.get(key)
            out.append(b.detach() if b is not None else torch.zeros((), device=self.device))
        return out

    def _weigh_now(self) -> None:
        """A step without backward: its weights and buffers, at its end."""
        import torch

        weights = self._live_weights()
        tensors = weights + self._buffers()
        if tensors:
            with torch.no_grad():
                self._weigh(tensor_norms(tensors), len(weights))

    def _weigh(self, norms: list[torch.Tensor], count: int) -> None:
        """The weights' norms (`count` of them, then the buffers'): the update history and the weights' flag.

        The norms are of the weights the step's forward used, that is after the previous step's update: they
        enter the history as that step's row. A weight or buffer that was finite at the start and is not now
        flags the step (an update or an in-place write made it; no output or gradient may show it yet).
        """
        import torch

        self._weights_checked = True
        weights, buffers = norms[:count], norms[count:]
        if weights:
            self._history.push(self.steps, weights, self._step_lrs)
        self._step_lrs = learning_rates(self._optimizer)
        parts = []
        if weights:
            parts.append(~torch.isfinite(torch.stack([n.to(self.device) for n in weights])).all())
        if buffers and self._buffer_ok is not None:
            stacked = torch.stack([n.to(self.device) for n in buffers])
            parts.append((~torch.isfinite(stacked) & self._buffer_ok).any())
        if not parts:
            return
        self._weight_bad = parts[0] if len(parts) == 1 else parts[0] | parts[1]
        if self.on_nonfinite == "log":
            self._fold_lazy(self._weight_bad, weights=True)

    def _fold_lazy(self, bad: torch.Tensor | None, weights: bool = False) -> None:
        """on_nonfinite="log": fold a flag into the window's, on the device (read with the record)."""
        import torch

        if bad is None or self.nonfinite_step is not None:
            return
        bad = bad.to(self.device)
        step = self.steps + 1
        if self._lazy_bad is None or self._lazy_first is None or self._lazy_weights is None:
            self._lazy_bad = torch.zeros((), dtype=torch.bool, device=self.device)
            self._lazy_first = torch.full((), -1, dtype=torch.int64, device=self.device)
            self._lazy_weights = torch.zeros((), dtype=torch.bool, device=self.device)
        self._lazy_first = torch.where(bad & ~self._lazy_bad, step, self._lazy_first)
        if (
            weights
        ):  # a weight already NaN/Inf at the step's start came before anything the step computed
            self._lazy_weights = self._lazy_weights | (bad & (self._lazy_first == step))
        self._lazy_bad = self._lazy_bad | bad

    def _optimizer_stepping(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Before the optimizer applies a step: with on_nonfinite="raise", a flagged step ends (and raises) here."""
        self.check()

    def check(self) -> None:
        """Raise now, before the optimizer step, when this step saw the first NaN/Inf and on_nonfinite="raise".

        Call it between `loss.backward()` and `optimizer.step()` in a loop without `optimizer=` (with it,
        an optimizer step pre-hook calls it): the weights the exception leaves are the last finite ones.
        Does nothing in the other on_nonfinite modes, and reads nothing when the flag was already read.
        """
        if not self._attached or self.on_nonfinite != "raise" or self.nonfinite_step is not None:
            return
        if not self._flagged and not self._backward_ran:
            self._check()
        if self._flagged:
            self._from_optimizer = True
            try:
                self.step(self._loss)  # ends the step now: traces, writes its record and raises
            finally:
                self._from_optimizer = False

    def _optimizer_stepped(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._from_optimizer = True
        try:
            self.step(self._loss)
        finally:
            self._from_optimizer = False

    # ---------------------------------------------------------------- steps
    def step(self, loss: Any = None) -> None:
        """End the current step: `loss` (a tensor or a number) is logged; every `every` steps a record is written."""
        if not self._attached:
            raise UsageError("this watch is detached; start a new one")
        if self._optimizer is not None and not self._from_optimizer:
            raise UsageError(
                "with optimizer=, steps advance on optimizer.step(); log the loss with w.log_loss(loss)"
            )
        if loss is not None:
            self.log_loss(loss)
        if not self._weights_checked:
            self._weigh_now()
        self.steps += 1
        self._window += 1
        collected = bool(self._module_handles)  # this step's forward ran with the Collector's hooks
        if self._loss is not None and collected:
            self.collector.record_loss(self._loss)
        if self.on_nonfinite == "log":
            if self._loss is not None:
                import torch

                self._fold_lazy(~torch.isfinite(self._loss))
        elif not self._backward_ran:
            self._check()
        first = self._flagged and self.nonfinite_step is None
        batch = self._batch
        snapshot = self._snapshot
        if first:
            self.nonfinite_step = self.steps
            origin = (
                self._trace()
            )  # on every rank: FSDP's forward gathers parameters from all of them
            self._record_origin = origin if self._flagged_here or not self._ranks.many else None
        if collected:
            self._pending.append(self.collector.pack())
            self._collected += 1
        self.collector.remove_tensor_hooks()
        self._remove_output_hooks()
        self.collector.begin_batch()
        self._batch = None
        self._snapshot = None
        self._flagged = self._backward_ran = self._backward_started = False
        self._out_bad = self._grad_bad = self._weight_bad = None
        self._weights_checked = False
        self._window_open = True
        self._loop.step_ended()
        if first:
            self.explanation = self._explain(snapshot)
        self._bad_weights = []
        if first or self.steps % self.every == 0:
            self._step_batch = batch if collected else None
            try:
                self._flush()  # under torchrun, the merge picks the rank whose origin the record names
            finally:
                self._step_batch = None
        if self.mode == "sentinel":
            if (self.steps + 1) % self.every == 0:
                self._arm()
            else:
                self._disarm()
        if (self.steps + 1) % self.every == 0:
            self._update_from = self._copy_weights()
        self._set_histogram()
        if first:
            self.nonfinite_origin = self._last_origin
            origin_rank = self._last_origin.rank if self._last_origin is not None else None
            if self._save_batch is not None and (origin_rank or 0) == self._ranks.rank:
                self._write_batch(batch, snapshot)
            self._act()

    def _live_weights(self) -> list[torch.Tensor]:
        return [distributed.local(p.detach()) for _, p in self._params]

    def _explain(self, snapshot: list[torch.Tensor] | None) -> str | None:
        """What the update history says happened before the first NaN/Inf (one read of the history)."""
        # The weights before this step's update: the snapshot when the optimizer already stepped, else the live ones.
        weights = snapshot if snapshot is not None else self._live_weights()
        origin = self._record_origin
        where = origin.module if origin is not None and origin.module else None
        try:
            # The history's last row holds the weights this step started from: its own update is not in it.
            return explain(self._history.read(weights), self.steps, where)
        except Exception:
            return None

    def _remove_output_hooks(self) -> None:
        for h in self._output_hooks:
            h.remove()
        self._output_hooks = []

    def log_loss(self, loss: Any) -> None:
        """Record this step's loss (kept on the device until the next record)."""
        import torch

        value = (
            loss.detach()
            if isinstance(loss, torch.Tensor)
            else torch.tensor(float(loss), device=self.device)
        )
        self._loss = value.reshape(-1)[0].to(self._acc) if value.numel() else None

    def _set_histogram(self) -> None:
        # Histograms only for the step a record is written at (and the first NaN/Inf step's flush).
        self.collector.options.histogram = self._histogram and (self.steps + 1) % self.every == 0

    def _check(self) -> bool:
        """Read this step's NaN/Inf flag (once it is set, or after the first NaN/Inf, nothing more is read)."""
        import torch

        if self.on_nonfinite == "log" or self.nonfinite_step is not None or self._flagged:
            return False
        # This rank's own outputs, gradients, loss and weights; the parameter gradients apart: under DDP
        # the all-reduce has spread one rank's NaN to every rank's.
        own = [
            f
            for f in [self.collector.nonfinite_flag() if self._module_handles else None]
            if f is not None
        ]
        if self._loss is not None:
            own.append(~torch.isfinite(self._loss))
        if self._out_bad is not None:
            own.append(self._out_bad)
        weights = [self._weight_bad] if self._weight_bad is not None else []
        grads = [self._grad_bad] if self._grad_bad is not None else []
        flags = own + weights + grads

        def any_of(parts: list[torch.Tensor]) -> torch.Tensor:
            if not parts:
                return torch.zeros((), dtype=torch.bool, device=self.device)
            return torch.stack([f.reshape(()).to(self.device) for f in parts]).any()

        if (
            self._ranks.many
        ):  # every rank reads the same answer, and all of them stop at the same step
            here, anywhere = any_of(own + weights), distributed.any_rank(any_of(flags))
            both = torch.stack([here.to(torch.int32).cpu(), anywhere.to(torch.int32).cpu()])
            self._flagged_here, self._flagged = (bool(v) for v in both.tolist())
            return self._flagged
        if not flags:
            return False
        self._flagged = self._flagged_here = read_flag(any_of(flags)) and self._confirm(
            any_of(own), any_of(weights), any_of(grads)
        )
        return self._flagged

    def _confirm(self, own: torch.Tensor, weights: torch.Tensor, grads: torch.Tensor) -> bool:
        """A set flag, read again in parts (only then): whether a tensor really holds NaN/Inf.

        A float32 norm also overflows for finite values beyond about 1.8e19: when only the norms flagged the
        step, the weights and gradients they came from are checked exactly (one read each, only on this path).
        """
        import torch

        from modinspect.run.attribution import nonfinite_tensors

        out_bad, weight_bad, grad_bad = (
            bool(v) for v in torch.stack([own, weights, grads]).cpu().tolist()
        )
        if out_bad:
            return True
        if weight_bad:
            ok = self._buffer_ok.cpu().tolist() if self._buffer_ok is not None else []
            skip = {
                name for (name, _, _), good in zip(self._buffer_slots, ok, strict=True) if not good
            }
            self._bad_weights = [t for t in nonfinite_tensors(self._inner) if t.name not in skip]
        if self._bad_weights or not grad_bad:
            return bool(self._bad_weights)
        with torch.no_grad():
            for i, norm in self._grad_norms.items():
                grad = self._params[i][1].grad
                if grad is not None and not math.isfinite(float(norm)):
                    g = distributed.local(grad.detach())
                    if not bool(torch.isfinite(g.coalesce().values() if g.is_sparse else g).all()):
                        return True
        return False

    def _copy_weights(self) -> list[torch.Tensor]:
        return [distributed.local(p.detach()).clone() for _, p in self._params]

    # ---------------------------------------------------------------- the first NaN/Inf
    def _trace(self) -> NonfiniteOrigin | None:
        """Replay the step's first forward (and a backward) through `stats`' exact replay and op tracer."""
        from modinspect.run.stats import _restore_rng, _rng_state, collect_stats

        held = self._weight_origin()
        if self._batch is None:
            return held or NonfiniteOrigin(None, None, "backward", "loss", ())
        args, kwargs, rng = self._batch
        saved = (
            _rng_state()
        )  # the replay draws the forward's random numbers again; training goes on after it
        options = StatsOptions(
            backward=any(p.requires_grad for _, p in self._params),
            pattern=self._pattern,
            train=self._inner.training,
            histogram=False,
        )
        was, self._paused = self._paused, True
        try:
            with self._weights(self._snapshot):
                _restore_rng(rng)
                # The user's module, not DDP's wrapper: a replay takes no part in the gradients' all-reduce.
                report = collect_stats(
                    self._inner,
                    [(args, kwargs)],
                    options=options,
                    device=self.device,
                    merge_ranks=False,
                )
        except ModinspectError:
            return None
        finally:
            self._paused = was
            _restore_rng(saved)
        self._replay_rows = list(report.modules)
        if report.nonfinite_origin is None:
            # The model's outputs and their gradients are finite: an unused weight or the user's loss held it.
            return held or NonfiniteOrigin(None, None, "backward", "loss", ())
        origin = report.nonfinite_origin
        if self._caller is not None and self._caller[0] != origin.source:
            # The op's line may be inside a library (transformers); the user's own call of the model too.
            origin = dataclasses.replace(
                origin, caller=self._caller[0], caller_code=self._caller[1]
            )
        return origin

    def _weight_origin(self) -> NonfiniteOrigin | None:
        """A weight or buffer that holds NaN/Inf before any output, gradient or loss shows one."""
        if not self._bad_weights:
            return None
        w = self._bad_weights[0]
        more = (
            f" (and {len(self._bad_weights) - 1} more tensors)"
            if len(self._bad_weights) > 1
            else ""
        )
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

    @contextlib.contextmanager
    def _weights(self, snapshot: list[torch.Tensor] | None) -> Iterator[None]:
        import torch

        if snapshot is None:
            yield
            return
        current = self._copy_weights()
        with torch.no_grad():
            for (_, p), s in zip(self._params, snapshot, strict=True):
                distributed.local(p).copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), s in zip(self._params, current, strict=True):
                    distributed.local(p).copy_(s)

    def _write_batch(
        self,
        batch: tuple[tuple[Any, ...], dict[str, Any], Any] | None,
        snapshot: list[torch.Tensor] | None = None,
    ) -> None:
        import torch

        from modinspect.files import atomic_write
        from modinspect.run.stats import _restore_rng

        assert self._save_batch is not None
        if batch is None:
            return
        args, kwargs, _ = batch
        obj: Any
        if args and kwargs and _bindable(self._inner):
            bound = inspect.signature(self._inner.forward).bind_partial(*args, **kwargs)
            obj = dict(bound.arguments)  # keyword arguments for `stats --input`
        elif kwargs:
            obj = dict(kwargs)
        else:
            obj = args[0] if len(args) == 1 else tuple(args)
        obj = map_tensors(obj, lambda t: t.detach().cpu(), plain=True)
        atomic_write(self._save_batch, lambda tmp: torch.save(obj, tmp), force=self._overwrite)
        if (
            not self._ranks.many
        ):  # the pre-step weights and the forward's RNG state, for `stats --input`
            was = torch.get_rng_state()
            _restore_rng(batch[2])
            try:
                with self._weights(snapshot):
                    save_weights(
                        self._inner,
                        weights_path(self._save_batch),
                        self.nonfinite_step or self.steps,
                        force=True,
                    )
            finally:
                torch.set_rng_state(was)

    def _act(self) -> None:
        step, origin = self.nonfinite_step, self.nonfinite_origin
        assert step is not None
        message = describe_nonfinite(step, origin)
        if self.explanation is not None:
            message += f"; before it, {self.explanation}"
        if self._save_batch is not None:
            message += f"; batch saved to {self._save_batch}"
        if self.on_nonfinite == "raise":
            self._detach(
                failed=False
            )  # the run stops here, inside a `with` or not (a Trainer callback has no exit)
            raise NonFiniteError(step, origin, message)
        if self.on_nonfinite == "warn":
            warnings.warn(message, NonFiniteWarning, stacklevel=3)
        elif self.on_nonfinite == "breakpoint":
            breakpoint()  # the user asked to stop here

    # ---------------------------------------------------------------- records
    def _flush(self, tail: bool = False) -> None:
        """The one transfer of the window: its packed steps, the loss, the parameter norms; then one record."""
        import torch

        if not self._pending and self._replay_rows is None and not tail:
            return
        many = self._ranks.many
        extra = self._param_vector_ranks() if many else self._param_vector()
        lazy = self._lazy_vector(extra.device)
        datas = [p.data.to(extra.device) for p in self._pending if p.data is not None] + [
            lazy,
            extra,
        ]
        flat = stats_hooks.to_host(torch.cat(datas))
        pos = 0
        c = self.collector  # the live one: its execution order and input links are the window's
        found_at = len(self._pending)  # the window's step whose merge first found an origin
        merged = True
        for i, packed in enumerate(self._pending):
            size = packed.data.numel() if packed.data is not None else 0
            merged = c.merge(packed, Collector.unpack(packed, flat[pos : pos + size])) and merged
            pos += size
            if c.origin is not None and found_at == len(self._pending):
                found_at = i
        if not merged:
            self._replay_logged()
        lazy_bad, lazy_first, lazy_weights = flat[pos : pos + 3]
        rest = flat[pos + 3 :]
        loss = rest[0] if self._loss is not None else None
        params = self._param_stats(
            _from_squares(rest[1:]) if many else self._exact_overflows(rest[1:])
        )
        origin = (
            self._record_origin
            if self._record_origin is not None
            else (c.origin if self.on_nonfinite == "log" else None)
        )
        lazy_step = (
            int(lazy_first)
            if lazy_bad > 0 and lazy_first > 0
            else self.steps
            if lazy_bad > 0
            else None
        )
        # Window mode: the Collector saw every step and names the module; sentinel: an earlier flagged step wins.
        earlier = self.mode == "sentinel" and lazy_step is not None and lazy_step < self.steps
        if lazy_step is not None and (origin is None or earlier) and self.on_nonfinite == "log":
            # The sentinel saw it between logged steps: the step is known, the module is not (no hooks ran).
            origin = NonfiniteOrigin(
                None,
                None,
                "backward",
                "sentinel",
                (),
                detail=f"a NaN/Inf {'weight or buffer' if lazy_weights > 0 else 'gradient or loss'} "
                f"at step {lazy_step}",
            )
        if many:  # one gather of every rank's totals and origin, merged exactly on every rank
            distributed.merge_collector(c, self._ranks)
            # The earliest step of the window first: a NaN that reached every rank's weights through the
            # gradients' all-reduce shows up a step later on the other ranks.
            origins = distributed.gather(
                (found_at if origin is not None else len(self._pending), origin)
            )
            first = min(at for at, _ in origins)
            origin = distributed.pick_origin([o if at == first else None for at, o in origins])
        self._last_origin = origin
        if (self._pending and (merged or self._replay_rows is None)) or many:
            rows = self._rows(c, self._collected)
        else:  # sentinel mode between logged steps: the replay's statistics of a first NaN/Inf step, or none
            rows = list(self._replay_rows or [])
        groups = tuple(
            GroupRecord(values=tuple(sorted(g.items())))
            for g in group_hyperparameters(self._optimizer)
        )
        explanation = self.explanation if self.nonfinite_step == self.steps else None
        record = StepRecord(
            step=self.steps,
            time=time.time(),
            loss=loss,
            modules=tuple(_module_record(r) for r in rows),
            params=tuple(
                ParamRecord(p.name, p.norm, p.grad_norm, p.update_norm, p.update_ratio)
                for p in params
            ),
            nonfinite=_origin_record(origin, explanation) if origin is not None else None,
            optimizer=groups,
        )
        if self._writer is not None:
            self._writer.write(record)
        if self._tensorboard is not None:
            self._tensorboard.write(step_document(record))
        self.records += 1
        self._totals.fold(
            c, self._collected
        )  # the steps the Collector saw (sentinel: the logged ones)
        if self.on_nonfinite == "log" and origin is not None and self.nonfinite_origin is None:
            self.nonfinite_step = (
                lazy_step if origin.cause == "sentinel" and lazy_step is not None else self.steps
            )
            self.nonfinite_origin = origin
        self._last_params = tuple(params)
        self._record_origin = None
        self._replay_rows = None
        self._lazy_bad = self._lazy_first = self._lazy_weights = None
        self._pending = []
        self._window = self._collected = 0
        armed = bool(self._module_handles)
        self._disarm()
        self.collector = self._new_collector()
        if armed:
            self._arm()

    def _replay_logged(self) -> None:
        """on_nonfinite="log": the logged step's fast statistics, just read, hold a NaN/Inf: replay it exactly.

        Its inputs are still held and its starting weights were copied for the update norms: the replay runs
        on those, names the module, op and line, and its exact statistics become the record's.
        """
        if self.on_nonfinite != "log" or self._step_batch is None or self._replay_rows is not None:
            return
        self._batch, self._snapshot = self._step_batch, self._update_from
        try:
            self._record_origin = self._trace()
        finally:
            self._batch = self._snapshot = None

    def _lazy_vector(self, device: Any) -> torch.Tensor:
        """[any NaN/Inf flag of the window, its first step, whether a weight held it first] (on_nonfinite="log";
        zeros otherwise)."""
        import torch

        if self._lazy_bad is None or self._lazy_first is None or self._lazy_weights is None:
            flags = torch.zeros(3, dtype=self._acc, device=device)
        else:
            flags = torch.stack(
                [
                    self._lazy_bad.to(self._acc),
                    self._lazy_first.to(self._acc),
                    self._lazy_weights.to(self._acc),
                ]
            ).to(device)
        if (
            self._ranks.many
        ):  # any rank's flag; the step is the record's (the ranks' first steps do not add up)
            return distributed.sum_over_ranks(
                flags * torch.tensor([1.0, 0.0, 0.0], dtype=self._acc, device=device)
            )
        return flags

    def _param_vector(self) -> torch.Tensor:
        """[loss, then per parameter ‖w‖, ‖∇w‖ (-1: none), ‖Δw‖ and ‖w before‖ (-1, -1: no update known)].

        Multi-tensor float32 norms (one read of each tensor); one that overflows float32 is recomputed in
        float64 on the host side (`_exact_overflows`), so weights of 1e30 give 1e30, not null.
        """
        import torch

        values: list[torch.Tensor] = [
            self._loss if self._loss is not None else torch.zeros((), dtype=self._acc)
        ]
        zero = torch.zeros((), dtype=self._acc, device=self.device)
        ws = [p.detach() for _, p in self._params]
        with torch.no_grad():
            norms = tensor_norms(ws)
            moved = [
                i
                for i, w in enumerate(ws)
                if self._update_from is not None and self._update_from[i].shape == w.shape
            ]
            before = [self._update_from[i] for i in moved] if self._update_from is not None else []
            deltas = torch._foreach_sub([ws[i] for i in moved], before) if moved else []
            delta_norms = dict(
                zip(
                    moved, zip(tensor_norms(deltas), tensor_norms(before), strict=True), strict=True
                )
            )
            for i in range(len(ws)):
                values.append(norms[i])
                g = self._grad_norms.get(i)
                values.append(g if g is not None else zero - 1)
                values += list(delta_norms[i]) if i in delta_norms else [zero - 1, zero - 1]
        return torch.stack([v.to(self.device, self._acc) for v in values])

    def _exact_overflows(self, values: list[float]) -> list[float]:
        """The float64 norms of the finite tensors whose float32 norm overflowed (a read each, only then)."""
        import torch

        out = list(values)
        for i, (_, p) in enumerate(self._params):
            w = p.detach()
            before = self._update_from[i] if self._update_from is not None else None
            for k, tensor in ((0, w), (2, w), (3, before)):
                value = out[4 * i + k]
                if tensor is None or value == -1 or math.isnan(value) or value <= FP32_NORM_LIMIT:
                    continue
                if k == 2 and before is not None and before.shape == w.shape:
                    tensor = w.to(torch.float64) - before.to(torch.float64)
                if bool(torch.isfinite(tensor).all()):
                    out[4 * i + k] = float(torch.linalg.vector_norm(tensor, dtype=torch.float64))
        return out

    def _param_vector_ranks(self) -> torch.Tensor:
        """Under torchrun: the loss and squared parameter norms, summed over the ranks in one all_reduce.

        Per parameter [‖w‖², ‖∇w‖², ‖Δw‖², ‖w before‖², has ∇w, has Δw]. A sharded parameter (FSDP2)
        adds up its shards' squares; a replicated one (DDP) enters over the world size on every rank.
        """
        import torch

        world = self._ranks.world
        values: list[torch.Tensor] = [
            self._loss / world
            if self._loss is not None
            else torch.zeros((), dtype=self._acc, device=self.device)
        ]
        zero = torch.zeros((), dtype=self._acc, device=self.device)
        with torch.no_grad():
            for i, (_, p) in enumerate(self._params):
                w = distributed.local(p.detach()).to(self._acc)
                share = 1.0 if self._fsdp1_sharded or distributed.sharded(p) else 1.0 / world
                g = self._grad_norms.get(i)
                before = self._update_from[i] if self._update_from is not None else None
                has_update = before is not None and before.shape == w.shape
                values += [
                    w.square().sum() * share,
                    g.to(self._acc).square() * share if g is not None else zero,
                    (w - before.to(self._acc)).square().sum() * share if has_update else zero,  # type: ignore[union-attr]
                    before.to(self._acc).square().sum() * share if has_update else zero,  # type: ignore[union-attr]
                    zero + (share if g is not None else 0.0),
                    zero + (share if has_update else 0.0),
                ]
        return distributed.sum_over_ranks(torch.stack([v.to(self.device) for v in values]))

    def _param_stats(self, values: list[float]) -> list[ParamStats]:
        out = []
        for i, (name, _) in enumerate(self._params):
            norm, grad, update, before = values[4 * i : 4 * i + 4]
            has_update = update >= 0 or math.isnan(update)
            ratio = update / before if has_update and before > 0 else None
            out.append(
                ParamStats(
                    name,
                    finite_or_none(norm),
                    finite_or_none(grad) if grad != -1 else None,
                    finite_or_none(update) if has_update else None,
                    finite_or_none(ratio),
                )
            )
        return out

    def _rows(self, c: Collector, steps: int) -> list[ModuleStats]:
        """The Collector's rows with gradient norms as the RMS over the window's steps."""
        scale = 1 / math.sqrt(steps) if steps else 1.0
        return [
            dataclasses.replace(
                r, grad_norm=r.grad_norm * scale if r.grad_norm is not None else None
            )
            for r in c.module_stats()
        ]

    # ---------------------------------------------------------------- end
    def detach(self) -> None:
        """Remove every hook and handle; write the record of the steps since the last one. Safe to call twice."""
        self._detach(failed=False)

    def _detach(self, failed: bool) -> None:
        if not self._attached and self._writer is None and self._tensorboard is None:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        self._disarm()
        self.collector.remove_tensor_hooks()
        self._remove_output_hooks()
        attached, self._attached = self._attached, False
        try:
            # Under torchrun a run that failed on one rank cannot count on the others for a last merge.
            if attached and self._window and not (failed and self._ranks.many):
                self._flush(tail=True)
        finally:
            self._update_from = self._snapshot = None
            self._batch = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._tensorboard is not None:
                self._tensorboard.close()
                self._tensorboard = None

    def report(self) -> WatchReport:
        """The statistics over every step watched so far (a record's worth of steps not yet logged excepted)."""
        return WatchReport(
            model=wrappers.type_name(self._inner),
            device=self.device,
            steps=self.steps,
            records=self.records,
            modules=tuple(self._total_rows()),
            params=self._last_params,
            nonfinite_step=self.nonfinite_step,
            nonfinite_origin=self.nonfinite_origin,
            log=self.log,
            mode=self.mode,
            explanation=self.explanation,
            loop_warnings=tuple(self._loop.found),
        )

    def _total_rows(self) -> list[ModuleStats]:
        t = self._totals
        scale = 1 / math.sqrt(t.steps) if t.steps else 1.0
        types = [wrappers.type_name(m) for m in self._mods]
        norms = [math.sqrt(g.squares) * scale if g.seen else None for g in t.grad]
        exploding, vanishing = grad_outliers(
            self._names, types, norms, [g.near * NEAR_LIMIT >= 1.0 for g in t.grad]
        )
        rows = []
        for m, r in enumerate(t.running):
            alive = t.alive[m]
            dead = (
                (sum(1 for a in alive if not a) / len(alive))
                if (types[m] in RELU_FAMILY and t.units_ok[m] and alive)
                else None
            )
            row = ModuleStats(
                name=self._names[m],
                type=types[m],
                calls=r.calls,
                count=r.count,
                finite=r.n,
                mean=r.mean_or_none(),
                std=r.std(),
                min=r.min_or_none(),
                max=r.max_or_none(),
                mean_abs=r.mean_abs(),
                zero_fraction=r.zero_fraction(),
                nan=r.nan,
                inf=r.inf,
                dead_fraction=dead,
                units=len(alive) if dead is not None and alive else None,
                grad_norm=norms[m],
                grad_nan=t.grad[m].nan,
                grad_inf=t.grad[m].inf,
                param_grad_norm=None,
                param_grad_nan=0,
                param_grad_inf=0,
                histogram=(),
                flags=(),
            )
            rows.append(
                dataclasses.replace(row, flags=flags_for(row, m in exploding, m in vanishing))
            )
        return rows


def _from_squares(values: list[float]) -> list[float]:
    """[‖w‖², ‖∇w‖², ‖Δw‖², ‖w‖², has ∇, has Δ] per parameter -> [‖w‖, ‖∇w‖ or -1, ‖Δw‖ or -1, ‖w‖ or -1]."""
    out = []
    for i in range(0, len(values), 6):
        norm, grad, update, before, has_grad, has_update = values[i : i + 6]
        out += [
            _root(norm),
            _root(grad) if has_grad > 0 else -1.0,
            _root(update) if has_update > 0 else -1.0,
            _root(before) if has_update > 0 else -1.0,
        ]
    return out


def _root(square: float) -> float:
    return math.sqrt(square) if square >= 0 or math.isnan(square) else 0.0


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


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _module_record(r: ModuleStats) -> ModuleRecord:
    hist = Histogram(edges=r.histogram_edges, counts=r.histogram) if r.histogram else None
    return ModuleRecord(
        name=r.name,
        type=r.type,
        calls=r.calls,
        count=r.count,
        mean=r.mean,
        std=r.std,
        min=r.min,
        max=r.max,
        zero_fraction=r.zero_fraction,
        nan=r.nan,
        inf=r.inf,
        dead_fraction=r.dead_fraction,
        grad_norm=r.grad_norm,
        grad_nan=r.grad_nan,
        grad_inf=r.grad_inf,
        histogram=hist,
    )


def _origin_record(o: NonfiniteOrigin, explanation: str | None = None) -> NonfiniteRecord:
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
