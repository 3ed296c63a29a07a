"""Where the first NaN/Inf of a batch came from, read from the collector's record of calls and tensors.

The hooks note each call (`Call`: its module, whether its inputs held NaN/Inf) and each tensor that
requires grad (`TensorRec`: the calls that produced and consumed it). After the one transfer, the first
forward call whose output is bad while its inputs were not produced it; going backward, the first bad
gradient names the module that consumed its tensor. `attribution.py` then refines a module to an op
and a source line by replaying the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modinspect.reports import NonfiniteOrigin

if TYPE_CHECKING:
    import torch

    from modinspect.run.reductions import GradTotals, ParamGradTotals


@dataclass
class Call:
    """One forward call of a hooked module; `in_bad`: a device bool, its inputs held NaN/Inf."""

    module: int
    in_bad: torch.Tensor | None = None


@dataclass
class TensorRec:
    """One tensor (at one version) that requires grad: (call index, is primary output) pairs, consumer calls."""

    producers: list[tuple[int, bool]] = field(default_factory=list)
    consumers: list[int] = field(default_factory=list)


ForwardEvent = tuple[int, bool, bool]  # (module, input bad, output bad), in call order
GradEvent = tuple[int, "GradTotals"]  # (tensor index, its gradient's totals), in backward order


class OriginFinder:
    """The first NaN/Inf of a batch over its calls and tensors, named by module (`names`, `type_of`)."""

    def __init__(
        self,
        names: Sequence[str],
        type_of: Callable[[int], str],
        calls: Sequence[Call],
        tensors: Sequence[TensorRec],
    ) -> None:
        self.names = names
        self.type_of = type_of
        self.calls = calls
        self.tensors = tensors

    def _unique(self, modules: Iterable[int]) -> tuple[str, ...]:
        return tuple(self.names[m] for m in dict.fromkeys(modules))

    def forward(self, events: Sequence[ForwardEvent]) -> NonfiniteOrigin | None:
        first_bad = next((i for i, (_, _, out_bad) in enumerate(events) if out_bad), None)
        if first_bad is None:
            return None
        producer = next(
            (i for i, (_, in_bad, out_bad) in enumerate(events) if out_bad and not in_bad), None
        )
        if producer is None:
            passed = self._unique(m for m, _, out_bad in events if out_bad)
            return NonfiniteOrigin(None, None, "forward", "input", passed)
        m = events[producer][0]
        passed = self._unique(e[0] for e in events[producer + 1 :] if e[2] and e[0] != m)
        return NonfiniteOrigin(self.names[m], self.type_of(m), "forward", "produced", passed)

    def backward(
        self,
        events: Sequence[GradEvent],
        loss_bad: bool,
        param_grads: Sequence[ParamGradTotals],
    ) -> NonfiniteOrigin | None:
        if loss_bad:
            return NonfiniteOrigin(None, None, "backward", "loss", ())
        bad = [g.nan or g.inf for _, g in events]
        first = next((i for i, b in enumerate(bad) if b), None)
        if first is None:
            params = [m for m, pg in enumerate(param_grads) if pg.nan or pg.inf]
            if not params:
                return None
            m = params[0]
            return NonfiniteOrigin(self.names[m], self.type_of(m), "backward", "produced", ())
        calls, tensors = self.calls, self.tensors
        rec = tensors[events[first][0]]
        bad_before = {
            calls[c].module
            for (t, _), b in zip(events[:first], bad, strict=False)
            if b
            for c, _ in tensors[t].producers
        }
        candidates = [c for c in rec.consumers if calls[c].module not in bad_before]
        passed_mods = [
            calls[c].module
            for (t, _), b in zip(events[first:], bad[first:], strict=True)
            if b
            for c, _ in tensors[t].producers
        ]
        if candidates:
            c = max(candidates, key=lambda c: (self.names[calls[c].module].count("."), c))
            m = calls[c].module
        elif rec.producers:
            # Produced by an unhooked (functional) op: blame the module whose forward ran it.
            inner = self.names[calls[rec.producers[0][0]].module]
            parent = inner.rpartition(".")[0] if "." in inner else ""
            m = (
                self.names.index(parent)
                if parent in self.names
                else calls[rec.producers[0][0]].module
            )
        else:
            return NonfiniteOrigin(None, None, "backward", "loss", self._unique(passed_mods))
        return NonfiniteOrigin(
            self.names[m],
            self.type_of(m),
            "backward",
            "produced",
            self._unique(x for x in passed_mods if x != m),
        )
