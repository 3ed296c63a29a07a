"""`watch`'s first NaN/Inf: reading the step's flag, confirming it, tracing it to its origin, and saying so.

`FirstBad` owns the decision and its evidence: whether this step is flagged (on any rank, on this one), the
weights copied before a flagged step's update (`snapshot`), the weights or buffers found holding the NaN/Inf,
a false alarm (finite values whose float32 sums of squares overflowed), and the replay's statistics of the
flagged step. The coordinator (`Watch.step`) decides when to call it and what to do with the answer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import modinspect.run.ranks as distributed
from modinspect.errors import NonFiniteError
from modinspect.reports import NonfiniteOrigin
from modinspect.run.collector import StatsOptions
from modinspect.watching.nonfinite import (
    Batch,
    BufferCheck,
    NonFiniteWarning,
    describe_nonfinite,
    read_flag,
    real_nonfinite_grad,
    replay,
    save_inputs,
    weight_origin,
    with_caller,
)
from modinspect.watching.sentinel import user_stacklevel

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modinspect.reports import ModuleStats
    from modinspect.run.attribution import BadTensor
    from modinspect.run.ranks import Ranks
    from modinspect.watching.options import WatchOptions
    from modinspect.watching.paramnorms import ParamNorms
    from modinspect.watching.stepstate import StepState, WatchView


class FirstBad:
    """The first NaN/Inf of a watched run: the per-step flag read, its confirmation, its trace."""

    def __init__(
        self,
        owner: WatchView,
        state: StepState,
        inner: nn.Module,
        norms: ParamNorms,
        buffers: BufferCheck,
        options: WatchOptions,
        ranks: Ranks,
    ) -> None:
        self._owner = owner
        self._state = state
        self._inner = inner
        self._norms = norms
        self._buffers = buffers
        self._options = options
        self._ranks = ranks
        self.flagged = False  # this step's flag was read set (any rank's under torchrun)
        self.flagged_here = False  # under torchrun: this rank's own flag (`flagged` is any rank's)
        self.false_alarm = (
            False  # the replay found every tensor finite: only a float32 sum overflowed
        )
        self.snapshot: list[torch.Tensor] | None = None  # weights before a flagged step's update
        self.bad_weights: list[
            BadTensor
        ] = []  # the first NaN/Inf: the weights or buffers holding it
        self.replay_rows: list[ModuleStats] | None = None  # the replayed first NaN/Inf's statistics

    def end_step(self) -> None:
        """The step ended: its flag, its weights' copy and the weights found bad are spent."""
        self.snapshot = None
        self.flagged = False
        self.bad_weights = []

    def check(self, module_hooks: list[Any]) -> bool:
        """Read this step's NaN/Inf flag (once it is set, or after the first NaN/Inf, nothing more is read).

        `module_hooks`: the Collector's module hooks, registered (its own flag then counts) or none.
        """
        import torch

        state = self._state
        if (
            self._options.on_nonfinite == "log"
            or self._owner.nonfinite_step is not None
            or self.flagged
        ):
            return False
        device = self._norms.device
        # This rank's own outputs, gradients, loss and weights; the parameter gradients apart: under DDP
        # the all-reduce has spread one rank's NaN to every rank's.
        own = [
            f
            for f in [self._owner.collector.nonfinite_flag() if module_hooks else None]
            if f is not None
        ]
        if state.loss is not None:
            own.append(~torch.isfinite(state.loss))
        if state.out_bad is not None:
            own.append(state.out_bad)
        weights = [state.weight_bad] if state.weight_bad is not None else []
        grads = [state.grad_bad] if state.grad_bad is not None else []
        flags = own + weights + grads

        def any_of(parts: list[torch.Tensor]) -> torch.Tensor:
            if not parts:
                return torch.zeros((), dtype=torch.bool, device=device)
            return torch.stack([f.reshape(()).to(device) for f in parts]).any()

        if (
            self._ranks.many
        ):  # every rank reads the same answer, and all of them stop at the same step
            here, anywhere = any_of(own + weights), distributed.any_rank(any_of(flags))
            both = torch.stack([here.to(torch.int32).cpu(), anywhere.to(torch.int32).cpu()])
            self.flagged_here, self.flagged = (bool(v) for v in both.tolist())
            return self.flagged
        if not flags:
            return False
        self.flagged = self.flagged_here = read_flag(any_of(flags)) and self._confirm(
            any_of(own), any_of(weights), any_of(grads)
        )
        return self.flagged

    def _confirm(self, own: torch.Tensor, weights: torch.Tensor, grads: torch.Tensor) -> bool:
        """A set flag, read again in parts (only then): whether a tensor really holds NaN/Inf.

        A float32 norm also overflows for finite values beyond about 1.8e19: when only the norms flagged the
        step, the weights and gradients they came from are checked exactly (one read each, only on this path).
        """
        import torch

        out_bad, weight_bad, grad_bad = (
            bool(v) for v in torch.stack([own, weights, grads]).cpu().tolist()
        )
        if out_bad:
            return True
        if weight_bad:
            self.bad_weights = self._buffers.held(self._inner)
        if self.bad_weights or not grad_bad:
            return bool(self.bad_weights)
        return real_nonfinite_grad(self._norms.params, self._norms.grad_norms)

    def trace(
        self, batch: Batch | None, snapshot: list[torch.Tensor] | None
    ) -> NonfiniteOrigin | None:
        """Replay the step's first forward (`batch`, and a backward) on the weights `snapshot` (None: the live
        ones) through `stats`' exact replay and op tracer."""
        held = weight_origin(self.bad_weights)
        if batch is None:
            return held or NonfiniteOrigin(None, None, "backward", "loss", ())
        options = StatsOptions(
            backward=any(p.requires_grad for _, p in self._norms.params),
            pattern=self._options.pattern,
            train=self._inner.training,
            histogram=False,
        )
        state = self._state
        was, state.paused = state.paused, True
        try:
            found = replay(
                self._inner,
                batch,
                options,
                self._norms.device,
                self._norms.installed(snapshot),
            )
        finally:
            state.paused = was
        if found is None:
            return None
        origin, self.replay_rows = found
        if origin is None:
            # The model's outputs and their gradients are finite: an unused weight or the user's loss held it,
            # or nothing did (the fast reductions' float32 sums of squares overflowed on finite values).
            if held is None and not self._ranks.many and self._loss_finite():
                self.false_alarm = True
                return None
            return held or NonfiniteOrigin(None, None, "backward", "loss", ())
        return with_caller(origin, state.caller)

    def _loss_finite(self) -> bool:
        """Whether this step's logged loss is finite, or none was logged (one read, on the replay's path only)."""
        import torch

        loss = self._state.loss
        return loss is None or bool(torch.isfinite(loss).all())

    def write_batch(self, batch: Batch | None, snapshot: list[torch.Tensor] | None) -> None:
        """save_batch=: the offending forward's inputs and, beside them, the weights it started from."""
        save = self._options.save_batch
        assert save is not None
        if batch is None:
            return
        save_inputs(
            self._inner,
            batch,
            save,
            self._options.overwrite,
            # Under torchrun each rank holds its own shard: the inputs only.
            None if self._ranks.many else lambda: self._norms.installed(snapshot),
            self._owner.nonfinite_step or self._owner.steps,
        )

    def message(self, step: int, origin: NonfiniteOrigin | None) -> str:
        """The one line that reports the first NaN/Inf: where, what happened before it, the saved batch."""
        message = describe_nonfinite(step, origin)
        if self._owner.explanation is not None:
            message += f"; before it, {self._owner.explanation}"
        if self._options.save_batch is not None:
            message += f"; batch saved to {self._options.save_batch}"
        return message

    def act(self, detach: Callable[[], None]) -> None:
        """Do what on_nonfinite asks with the first NaN/Inf: raise (after `detach()`), warn, or breakpoint."""
        step, origin = self._owner.nonfinite_step, self._owner.nonfinite_origin
        assert step is not None
        message = self.message(step, origin)
        on_nonfinite = self._options.on_nonfinite
        if on_nonfinite == "raise":
            detach()
            raise NonFiniteError(step, origin, message)
        if on_nonfinite == "warn":
            # The user's line: their w.step(), or their opt.step() when optimizer= advances the steps.
            warnings.warn(message, NonFiniteWarning, stacklevel=user_stacklevel())
        elif on_nonfinite == "breakpoint":
            breakpoint()  # the user asked to stop here

    def explain(
        self, snapshot: list[torch.Tensor] | None, origin: NonfiniteOrigin | None
    ) -> str | None:
        """What the update history says happened before the first NaN/Inf (one read of the history)."""
        where = origin.module if origin is not None and origin.module else None
        return self._norms.explain(snapshot, self._owner.steps, where)
