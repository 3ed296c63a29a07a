"""`watch`: the `stats` hooks inside the user's own training loop, one device->host transfer per `every` steps.

Design (what runs when), in the default mode="sentinel":
- Between logged steps no module hook is registered. After the step's first backward one multi-tensor norm
  over the parameters' gradients, the weights and the floating buffers (`sentinel.tensor_norms`, one read
  of each) and an isfinite of the stacked norms and the loss make the step's NaN/Inf flag; the weights'
  norms (those the step's forward used) feed the update history (`sentinel.UpdateHistory`). A weight or
  buffer made NaN/Inf (by an update, an in-place write, a running statistic) flags the step by itself. Nothing is read on the host with
  on_nonfinite="log": the flag and the first flagged step are folded on the device and travel with the record.
- The step before a logged step registers the Collector of `stats` (run/collector.py) on the modules, so the
  logged step's forward and backward are reduced to device scalars with `stats`' fast reductions (exact for
  finite values; a NaN/Inf makes a sum non-finite and the step is replayed exactly); its end removes them
  again. A record holds the statistics of the logged step alone.
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
  so ‖Δw‖/‖w‖ is the logged step's own update over the weights before it; ‖w‖ and ‖Δw‖ are one pass over
  the weights and their copy, ‖w before‖ the sentinel's norm when the weight was not written since its copy.

`Watch` is the coordinator (the public API, the step's order of events); each part has one job:
`options.py` (validated once), `stepstate.py` (the current step's state, one `reset()` per step),
`hooks.py` (every hook and handle, the end-of-backward sentinel), `firstbad.py` (the first NaN/Inf: the
flag read, its confirmation, trace and message), `record.py` (the window's one transfer and record, the
writers, the run's totals), `paramnorms.py` (parameter and update norms), `nonfinite.py` (the device flags,
the replay, the saved batch), `window.py` (a record's rows and the run's).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modinspect.run.ranks as distributed
from modinspect.errors import UsageError
from modinspect.reports import NonfiniteOrigin, WatchReport
from modinspect.run import wrappers
from modinspect.watching.firstbad import FirstBad
from modinspect.watching.hooks import Hooks
from modinspect.watching.log import LogHeader
from modinspect.watching.nonfinite import Batch, BufferCheck, LazyFlags, NonFiniteWarning, read_flag
from modinspect.watching.options import MODES, ON_NONFINITE, watch_options
from modinspect.watching.paramnorms import ParamNorms
from modinspect.watching.record import Records
from modinspect.watching.sentinel import LoopWarning
from modinspect.watching.stepstate import StepState

if TYPE_CHECKING:
    from torch import nn


__all__ = [
    "MODES",
    "ON_NONFINITE",
    "LoopWarning",
    "NonFiniteWarning",
    "Watch",
    "read_flag",
    "watch",
]


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
        options, mods = watch_options(
            model,
            every=every,
            modules=modules,
            sample=sample,
            on_nonfinite=on_nonfinite,
            save_batch=save_batch,
            histogram=histogram,
            overwrite=overwrite,
            training_only=training_only,
            mode=mode,
        )
        self.model = model
        self._inner = wrappers.unwrap(model)
        self._ranks = distributed.ranks()
        self.every = every
        self.mode = mode
        self.on_nonfinite = on_nonfinite
        self._options = options
        params = [(n, p) for n, p in wrappers.named_parameters(model) if p.is_floating_point()]
        self._norms = ParamNorms(params, self._ranks, distributed.fsdp1_sharded(model))
        self.device = self._norms.device
        self.steps = 0
        self.records = 0
        self.nonfinite_step: int | None = None
        self.nonfinite_origin: NonfiniteOrigin | None = None
        self.explanation: str | None = None  # what happened before the first NaN/Inf, if known
        self._from_optimizer = False
        self._attached = False
        # The parts, each with one job (see the module docstring), sharing the step's state.
        self._state = state = StepState()
        lazy = LazyFlags()  # on_nonfinite="log": the window's flags, on the device
        buffers = BufferCheck(self._inner, self.device)
        self._first = FirstBad(self, state, self._inner, self._norms, buffers, options, self._ranks)
        self._record = Records(
            self, state, self._first, self._norms, lazy, options, self._ranks, optimizer, mods
        )
        self._hooks = Hooks(
            self,
            state,
            self._first,
            self._inner,
            mods,
            self._norms,
            buffers,
            lazy,
            options,
            optimizer,
        )
        self.collector = self._record.new_collector(self._exact())
        try:
            self._attached = True
            self._hooks.attach(
                mode == "window" or every == 1, self._optimizer_stepping, self._step_now
            )
            if self._ranks.writer:
                header = LogHeader(
                    model=wrappers.type_name(self._inner),
                    every=every,
                    device=self.device,
                    world_size=self._ranks.world,
                    started=time.time(),
                )
                self._record.open(
                    Path(log) if log is not None else None, header, overwrite, tensorboard
                )
        except BaseException:
            self.detach()
            raise
        self.log = str(log) if log is not None else None
        if every == 1:
            self._norms.keep_start()
        self._set_histogram()

    # ---------------------------------------------------------------- context manager
    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._detach(failed=kind is not None)

    # ---------------------------------------------------------------- the Collector
    def _exact(self) -> bool:
        """Whether the Collector runs `stats`' exact (masked) reductions rather than its fast ones.

        A window cannot be replayed after the fact, nor can a step under torchrun (the ranks would have to
        agree), nor any step once the weights hold NaN: exact. A sentinel-mode logged step is fast, like
        `stats`: a NaN/Inf makes its mean, M2 or sum of squares non-finite, the step's flag (read at its end)
        is then set, and its record holds the exact statistics of the first NaN/Inf's replay. Under
        on_nonfinite="log" no flag is read, but the record is written at the logged step's own end: when its
        values show a NaN/Inf, the step is replayed then (`Records._replay_logged`).
        """
        return self.mode == "window" or self._ranks.many or self.nonfinite_step is not None

    def _arm(self) -> None:
        """Register the Collector's module hooks for the next step (sentinel mode: a logged step)."""
        self.collector.exact = self._exact()
        self._hooks.arm()

    def pause(self) -> None:
        """Ignore forwards and backwards until `resume()` (an evaluation loop between training steps)."""
        self._state.paused = True

    def resume(self) -> None:
        """Watch forwards and backwards again after `pause()`."""
        self._state.paused = False

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
        if not self._first.flagged and not self._state.backward_ran:
            self._first.check(self._hooks.module_handles)
        if self._first.flagged:
            self._step_now()  # ends the step now: traces, writes its record and raises

    def _step_now(self, *_hook_args: Any) -> None:
        """`step()` with the loss logged so far: the optimizer's step post hook, or `check()`."""
        self._from_optimizer = True
        try:
            self.step(self._state.loss)
        finally:
            self._from_optimizer = False

    # ---------------------------------------------------------------- steps
    def step(self, loss: Any = None) -> None:
        """End the current step: `loss` (a tensor or a number) is logged; every `every` steps a record is written."""
        if not self._attached:
            raise UsageError("this watch is detached; start a new one")
        if self._hooks.optimizer is not None and not self._from_optimizer:
            raise UsageError(
                "with optimizer=, steps advance on optimizer.step(); log the loss with w.log_loss(loss)"
            )
        if loss is not None:
            self.log_loss(loss)
        if not self._state.weights_checked:
            self._hooks.weigh_now()
        self.steps += 1
        self._record.window += 1
        # This step's forward ran with the Collector's hooks.
        collected = bool(self._hooks.module_handles)
        if self._state.loss is not None and collected:
            self.collector.record_loss(self._state.loss)
        if self.on_nonfinite == "log":
            if self._state.loss is not None:
                import torch

                self._hooks.fold_lazy(~torch.isfinite(self._state.loss))
        elif not self._state.backward_ran:
            self._first.check(self._hooks.module_handles)
        first = self._first.flagged and self.nonfinite_step is None
        batch = self._state.batch
        snapshot = self._first.snapshot
        if first:
            self.nonfinite_step = self.steps
            # On every rank: FSDP's forward gathers parameters from all of them.
            origin = self._first.trace(batch, snapshot)
            if self._first.false_alarm:
                # Finite values whose float32 sums of squares overflowed: not a NaN/Inf.
                self._first.false_alarm = self._first.flagged = self._first.flagged_here = False
                first = False
                self.nonfinite_step = None
            self._record.origin = (
                origin if self._first.flagged_here or not self._ranks.many else None
            )
        if collected:
            self._record.pending.append(self.collector.pack())
            self._record.collected += 1
        self.collector.remove_tensor_hooks()
        self._hooks.remove_output_hooks()
        self.collector.begin_batch()
        self._state.reset()
        self._first.end_step()
        self._hooks.loop.step_ended()
        if first:
            self.explanation = self._first.explain(snapshot, self._record.origin)
        if first or self.steps % self.every == 0:
            # under torchrun, the merge picks the rank whose origin the record names
            self._flush(batch=batch if collected else None)
        if self.mode == "sentinel":
            if (self.steps + 1) % self.every == 0:
                self._arm()
            else:
                self._hooks.disarm()
        if (self.steps + 1) % self.every == 0:
            self._norms.keep_start()
        self._set_histogram()
        if first:
            self.nonfinite_origin = self._record.last_origin
            last = self._record.last_origin
            origin_rank = last.rank if last is not None else None
            if self._options.save_batch is not None and (origin_rank or 0) == self._ranks.rank:
                self._first.write_batch(batch, snapshot)
            # The run stops here on_nonfinite="raise", inside a `with` or not (a Trainer callback has no exit).
            self._first.act(self.detach)

    def log_loss(self, loss: Any) -> None:
        """Record this step's loss (kept on the device until the next record)."""
        import torch

        value = (
            loss.detach()
            if isinstance(loss, torch.Tensor)
            else torch.tensor(float(loss), device=self.device)
        )
        self._state.loss = value.reshape(-1)[0].to(self._norms.acc) if value.numel() else None

    def _set_histogram(self) -> None:
        # Histograms only for the step a record is written at (and the first NaN/Inf step's flush).
        self.collector.options.histogram = (
            self._options.histogram and (self.steps + 1) % self.every == 0
        )

    # ---------------------------------------------------------------- records
    def _flush(self, tail: bool = False, batch: Batch | None = None) -> None:
        """Write the window's record (`Records.flush`), then start the next window's Collector."""
        if not self._record.flush(tail, batch):
            return
        self.collector = self._record.new_collector(self._exact())
        if self._hooks.module_handles:
            # The module hooks call through `self.collector`: they stay registered (removing and adding
            # two hooks per module again cost a logged step about 3 ms on the CNN); only the mode is set.
            self._arm()

    # ---------------------------------------------------------------- end
    def detach(self) -> None:
        """Remove every hook and handle; write the record of the steps since the last one. Safe to call twice."""
        self._detach(failed=False)

    def _detach(self, failed: bool) -> None:
        if not self._attached and not self._record.is_open():
            return
        self._hooks.remove()
        attached, self._attached = self._attached, False
        try:
            # Under torchrun a run that failed on one rank cannot count on the others for a last merge.
            if attached and self._record.window and not (failed and self._ranks.many):
                self._flush(tail=True)
        finally:
            self._norms.release()
            self._first.snapshot = None
            self._state.batch = None
            self._record.close()

    def report(self) -> WatchReport:
        """The statistics over every step watched so far (a record's worth of steps not yet logged excepted)."""
        return WatchReport(
            model=wrappers.type_name(self._inner),
            device=self.device,
            steps=self.steps,
            records=self.records,
            modules=self._record.module_rows(),
            params=self._record.last_params,
            nonfinite_step=self.nonfinite_step,
            nonfinite_origin=self.nonfinite_origin,
            log=self.log,
            mode=self.mode,
            explanation=self.explanation,
            loop_warnings=tuple(self._hooks.loop.found),
        )
