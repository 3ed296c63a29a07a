"""`watch`'s records: the window's packed steps, one transfer, one record written; the run's totals.

`Records` owns what a record is built from between two records (the Collector's packed steps, the steps in
the window, the origin the next record names), the log and TensorBoard writers, and what the report keeps
of the records (the run's totals, the last record's parameter norms). `_Totals` folds each window's
Collector into the run's per-module statistics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modinspect.run.ranks as distributed
from modinspect.run import collector as stats_hooks
from modinspect.run.collector import Collector, StatsOptions
from modinspect.run.reductions import GradTotals, Running
from modinspect.watching.log import (
    GroupRecord,
    LogHeader,
    LogWriter,
    ParamRecord,
    StepRecord,
    module_record,
    open_log,
    step_document,
)
from modinspect.watching.nonfinite import Batch, LazyFlags, origin_record, sentinel_origin
from modinspect.watching.paramnorms import from_squares
from modinspect.watching.sentinel import group_hyperparameters
from modinspect.watching.window import rms_rows, total_rows

if TYPE_CHECKING:
    from torch import nn

    from modinspect.reports import ModuleStats, NonfiniteOrigin, ParamStats
    from modinspect.run.collector import Packed
    from modinspect.run.ranks import Ranks
    from modinspect.watching.firstbad import FirstBad
    from modinspect.watching.options import WatchOptions
    from modinspect.watching.paramnorms import ParamNorms
    from modinspect.watching.stepstate import StepState, WatchView


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


class Records:
    """A watched run's records: the window being gathered, its one transfer and record, the log's writers."""

    def __init__(
        self,
        owner: WatchView,
        state: StepState,
        first: FirstBad,
        norms: ParamNorms,
        lazy: LazyFlags,
        options: WatchOptions,
        ranks: Ranks,
        optimizer: Any,
        mods: list[nn.Module],
    ) -> None:
        self._owner = owner
        self._state = state
        self._first = first
        self._norms = norms
        self._lazy = lazy  # on_nonfinite="log": the window's flags, on the device
        self._options = options
        self._ranks = ranks
        self._optimizer = optimizer
        self._mods = mods
        self._names = list(options.names)
        self.window = 0  # steps in the current window
        self.collected = 0  # steps of the current window the Collector saw
        self.pending: list[Packed] = []  # the Collector's packed steps of the window, on the device
        self.origin: NonfiniteOrigin | None = None  # for the next record
        self.last_origin: NonfiniteOrigin | None = None  # of the last record, merged over the ranks
        self.last_params: tuple[ParamStats, ...] = ()
        self.totals = _Totals(len(mods))
        self.writer: LogWriter | None = None
        self.tensorboard: Any = None

    def new_collector(self, exact: bool) -> Collector:
        """The next window's Collector (`exact`: `stats`' masked reductions rather than its fast ones)."""
        options = StatsOptions(
            backward=True, pattern=self._options.pattern, histogram=self._options.histogram
        )
        c = Collector(self._names, self._mods, options, self._norms.acc)
        c.exact = exact
        c.sample = self._options.sample
        c.begin_batch()
        return c

    def module_rows(self) -> tuple[ModuleStats, ...]:
        """The run's per-module statistics over every record written so far."""
        return tuple(total_rows(self.totals, self._names, self._mods))

    def open(
        self, log: Path | None, header: LogHeader, overwrite: bool, tensorboard: str | Path | None
    ) -> None:
        """Open the JSON-lines log and the TensorBoard folder (None: not written)."""
        if log is not None:
            self.writer = open_log(log, header, overwrite)
        if tensorboard is not None:
            from modinspect.watching.tensorboard import TensorBoardWriter

            self.tensorboard = TensorBoardWriter(tensorboard)

    def is_open(self) -> bool:
        """Whether a log or TensorBoard writer is still open."""
        return self.writer is not None or self.tensorboard is not None

    def close(self) -> None:
        """Close the log and TensorBoard writers (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def flush(self, tail: bool = False, batch: Batch | None = None) -> bool:
        """The one transfer of the window: its packed steps, the loss, the parameter norms; then one record.

        `batch`: the logged step's inputs, for a replay of its NaN/Inf under on_nonfinite="log". Returns
        whether a record was written (the caller then starts the next window's Collector).
        """
        import torch

        if not self.pending and self._first.replay_rows is None and not tail:
            return False
        owner = self._owner
        many = self._ranks.many
        extra = (
            self._norms.vector_ranks(self._state.loss)
            if many
            else self._norms.vector(self._state.loss)
        )
        lazy = self._lazy.vector(self._norms.acc, extra.device, self._ranks)
        datas = [p.data.to(extra.device) for p in self.pending if p.data is not None] + [
            lazy,
            extra,
        ]
        flat = stats_hooks.to_host(torch.cat(datas))
        pos = 0
        c = owner.collector  # the live one: its execution order and input links are the window's
        found_at = len(self.pending)  # the window's step whose merge first found an origin
        merged = True
        for i, packed in enumerate(self.pending):
            size = packed.data.numel() if packed.data is not None else 0
            merged = c.merge(packed, Collector.unpack(packed, flat[pos : pos + size])) and merged
            pos += size
            if c.origin is not None and found_at == len(self.pending):
                found_at = i
        if not merged:
            self._replay_logged(batch)
        lazy_bad, lazy_first, lazy_weights = flat[pos : pos + 3]
        rest = flat[pos + 3 :]
        loss = rest[0] if self._state.loss is not None else None
        params = self._norms.stats(
            from_squares(rest[1:]) if many else self._norms.exact_overflows(rest[1:])
        )
        origin = (
            self.origin
            if self.origin is not None
            else (c.origin if self._options.on_nonfinite == "log" else None)
        )
        lazy_step = (
            int(lazy_first)
            if lazy_bad > 0 and lazy_first > 0
            else owner.steps
            if lazy_bad > 0
            else None
        )
        # Window mode: the Collector saw every step and names the module; sentinel: an earlier flagged step wins.
        earlier = (
            self._options.mode == "sentinel" and lazy_step is not None and lazy_step < owner.steps
        )
        if (
            lazy_step is not None
            and (origin is None or earlier)
            and self._options.on_nonfinite == "log"
        ):
            # The sentinel saw it between logged steps: the step is known, the module is not (no hooks ran).
            origin = sentinel_origin(lazy_step, lazy_weights > 0)
        if many:  # one gather of every rank's totals and origin, merged exactly on every rank
            distributed.merge_collector(c, self._ranks)
            # The earliest step of the window first: a NaN that reached every rank's weights through the
            # gradients' all-reduce shows up a step later on the other ranks.
            origins = distributed.gather(
                (found_at if origin is not None else len(self.pending), origin)
            )
            first = min(at for at, _ in origins)
            origin = distributed.pick_origin([o if at == first else None for at, o in origins])
        self.last_origin = origin
        if (self.pending and (merged or self._first.replay_rows is None)) or many:
            rows = rms_rows(c.module_stats(), self.collected)
        else:  # sentinel mode between logged steps: the replay's statistics of a first NaN/Inf step, or none
            rows = list(self._first.replay_rows or [])
        groups = tuple(
            GroupRecord(values=tuple(sorted(g.items())))
            for g in group_hyperparameters(self._optimizer)
        )
        explanation = owner.explanation if owner.nonfinite_step == owner.steps else None
        record = StepRecord(
            step=owner.steps,
            time=time.time(),
            loss=loss,
            modules=tuple(module_record(r) for r in rows),
            params=tuple(
                ParamRecord(p.name, p.norm, p.grad_norm, p.update_norm, p.update_ratio)
                for p in params
            ),
            nonfinite=origin_record(origin, explanation) if origin is not None else None,
            optimizer=groups,
        )
        if self.writer is not None:
            self.writer.write(record)
        if self.tensorboard is not None:
            self.tensorboard.write(step_document(record))
        owner.records += 1
        self.totals.fold(
            c, self.collected
        )  # the steps the Collector saw (sentinel: the logged ones)
        if (
            self._options.on_nonfinite == "log"
            and origin is not None
            and owner.nonfinite_origin is None
        ):
            owner.nonfinite_step = (
                lazy_step if origin.cause == "sentinel" and lazy_step is not None else owner.steps
            )
            owner.nonfinite_origin = origin
        self.last_params = tuple(params)
        self.origin = None
        self._first.replay_rows = None
        self._lazy.clear()
        self.pending = []
        self.window = self.collected = 0
        return True

    def _replay_logged(self, batch: Batch | None) -> None:
        """on_nonfinite="log": the logged step's fast statistics, just read, hold a NaN/Inf: replay it exactly.

        Its inputs are still held and its starting weights were copied for the update norms: the replay runs
        on those, names the module, op and line, and its exact statistics become the record's.
        """
        if (
            self._options.on_nonfinite != "log"
            or batch is None
            or self._first.replay_rows is not None
        ):
            return
        self.origin = self._first.trace(batch, self._norms.update_from)
        self._first.false_alarm = (
            False  # no origin recorded: the record shows the overflowed values as such
        )
