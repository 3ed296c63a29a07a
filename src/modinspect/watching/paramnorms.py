"""`watch`'s parameter norms: the weights, their gradients' norms, the update of the logged step, the history.

Everything is a multi-tensor norm on the device (one read of each tensor) until a record or the first
NaN/Inf reads it; a float32 norm that overflows is recomputed in float64 from the tensor, only then.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import modinspect.run.ranks as distributed
from modinspect.reports import ParamStats
from modinspect.watching.sentinel import (
    FP32_NORM_LIMIT,
    UpdateHistory,
    explain,
    learning_rates,
    tensor_norms,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


class ParamNorms:
    """The floating parameters of a watched model and what is known of their norms."""

    def __init__(
        self, params: list[tuple[str, nn.Parameter]], ranks: Any, fsdp1_sharded: bool
    ) -> None:
        import torch

        self.params = params
        self.ranks = ranks
        # FSDP1's parameters are plain tensors holding this rank's shard (not DTensors): their squares add up.
        self.fsdp1_sharded = fsdp1_sharded
        self.device = str(distributed.local(params[0][1]).device) if params else "cpu"
        self.acc = torch.float32 if self.device.startswith("mps") else torch.float64
        self.update_from: list[torch.Tensor] | None = (
            None  # weights at the start of the logged step
        )
        self._kept: list[torch.Tensor] | None = (
            None  # `update_from`'s buffers, reused at each logged step
        )
        self._kept_versions: list[int] = []  # each weight's version counter when it was copied
        # The sentinel's norms of the weights the logged step started from (None: not weighed, or changed).
        self._start_norms: list[torch.Tensor | None] | None = None
        self.grad_norms: dict[int, torch.Tensor] = {}  # this step's gradients' norms, by parameter
        self.history = UpdateHistory([n for n, _ in params])
        self.step_lrs: tuple[float | None, ...] = ()  # the lr the current step's update will use

    def live(self) -> list[torch.Tensor]:
        """This rank's local weights, detached (no copy)."""
        return [distributed.local(p.detach()) for _, p in self.params]

    def copy(self) -> list[torch.Tensor]:
        return [distributed.local(p.detach()).clone() for _, p in self.params]

    def keep_start(self) -> None:
        """`update_from`: the weights now (the logged step's start), copied into buffers kept between logged steps.

        One `_foreach_copy_` (per dtype and device, inside torch) instead of a fresh clone of every weight at
        each logged step; the buffers are allocated again only when a weight changed shape, dtype or device.
        """
        import torch

        live = self.live()
        kept = self._kept
        if kept is None or any(
            k.shape != w.shape or k.dtype != w.dtype or k.device != w.device
            for k, w in zip(kept, live, strict=True)
        ):
            kept = [w.clone() for w in live]
        elif live:
            with torch.no_grad():
                torch._foreach_copy_(kept, live)
        self._kept = self.update_from = kept
        self._kept_versions = [p._version for _, p in self.params]
        self._start_norms = None

    def release(self) -> None:
        """Drop the update's starting weights and the buffers that hold them (detach)."""
        self._kept = self.update_from = None
        self._start_norms = None

    def push(self, step: int, norms: list[torch.Tensor], optimizer: Any) -> None:
        """The weights' norms after `step`'s update, with the lr that update used; then the next step's lr.

        The first norms weighed after `keep_start` are also ‖w before‖ of the logged step's update, for each
        weight whose version counter shows no in-place write since it was copied (the optimizer's update
        is one): the record then reads only the weights and their copy, not the copy a second time.
        """
        if norms:
            self.history.push(step, norms, self.step_lrs)
            if (
                self._start_norms is None
                and self._kept is not None
                and len(norms) == len(self.params)
            ):
                self._start_norms = [
                    n if p._version == v else None
                    for n, (_, p), v in zip(norms, self.params, self._kept_versions, strict=True)
                ]
        self.step_lrs = learning_rates(optimizer)

    def explain(
        self, snapshot: list[torch.Tensor] | None, bad_step: int, where: str | None
    ) -> str | None:
        """What the update history says happened before the first NaN/Inf (one read of the history)."""
        # The weights before this step's update: the snapshot when the optimizer already stepped, else the live ones.
        weights = snapshot if snapshot is not None else self.live()
        try:
            # The history's last row holds the weights this step started from: its own update is not in it.
            return explain(self.history.read(weights), bad_step, where)
        except Exception:
            return None

    def vector(self, loss: torch.Tensor | None) -> torch.Tensor:
        """[loss, then per parameter ‖w‖, ‖∇w‖ (-1: none), ‖Δw‖ and ‖w before‖ (-1, -1: no update known)].

        Multi-tensor float32 norms (one read of each tensor); one that overflows float32 is recomputed in
        float64 on the host side (`exact_overflows`), so weights of 1e30 give 1e30, not null.
        """
        import torch

        ws = [p.detach() for _, p in self.params]
        count = len(ws)
        before_all = self.update_from
        with torch.no_grad():
            # [‖w‖, ‖∇w‖, ‖Δw‖, ‖w before‖] per parameter, -1 where unknown: filled column by column.
            table = torch.full((count, 4), -1.0, dtype=self.acc, device=self.device)
            moved = [
                i
                for i, w in enumerate(ws)
                if before_all is not None and before_all[i].shape == w.shape
            ]
            still = sorted(set(range(count)) - set(moved))
            if still:
                table[still, 0] = torch.stack(
                    [n.to(self.device, self.acc) for n in tensor_norms([ws[i] for i in still])]
                )
            graded = sorted(self.grad_norms)
            if graded:
                table[graded, 1] = torch.stack(
                    [self.grad_norms[i].to(self.device, self.acc) for i in graded]
                )
            known = self._start_norms or [None] * count
            for weighed in (True, False):
                # ‖w before‖ already weighed by the sentinel (the weight unchanged since its copy), or not.
                rows = [i for i in moved if (known[i] is not None) == weighed]
                if not rows:
                    continue
                assert before_all is not None
                # ‖w‖, ‖Δw‖ (and ‖w before‖) in one pass: each weight and its copy are read once.
                after, starts, updates = update_norms(
                    [ws[i] for i in rows], [before_all[i] for i in rows], with_before=not weighed
                )
                if weighed:
                    starts = [known[i] for i in rows]  # type: ignore[misc]
                table[rows, 0] = torch.stack([n.to(self.device, self.acc) for n in after])
                table[rows, 2] = torch.stack([n.to(self.device, self.acc) for n in updates])
                table[rows, 3] = torch.stack([n.to(self.device, self.acc) for n in starts])
            first = (
                loss.reshape(1).to(self.device, self.acc)
                if loss is not None
                else torch.zeros(1, dtype=self.acc, device=self.device)
            )
            return torch.cat([first, table.reshape(-1)])

    def exact_overflows(self, values: list[float]) -> list[float]:
        """The float64 norms of the finite tensors whose float32 norm overflowed (a read each, only then)."""
        import torch

        out = list(values)
        for i, (_, p) in enumerate(self.params):
            w = p.detach()
            before = self.update_from[i] if self.update_from is not None else None
            for k, tensor in ((0, w), (2, w), (3, before)):
                value = out[4 * i + k]
                if tensor is None or value == -1 or math.isnan(value) or value <= FP32_NORM_LIMIT:
                    continue
                if k == 2 and before is not None and before.shape == w.shape:
                    tensor = w.to(torch.float64) - before.to(torch.float64)
                if bool(torch.isfinite(tensor).all()):
                    out[4 * i + k] = float(torch.linalg.vector_norm(tensor, dtype=torch.float64))
        return out

    def vector_ranks(self, loss: torch.Tensor | None) -> torch.Tensor:
        """Under torchrun: the loss and squared parameter norms, summed over the ranks in one all_reduce.

        Per parameter [‖w‖², ‖∇w‖², ‖Δw‖², ‖w before‖², has ∇w, has Δw]. A sharded parameter (FSDP2)
        adds up its shards' squares; a replicated one (DDP) enters over the world size on every rank.
        """
        import torch

        world = self.ranks.world
        values: list[torch.Tensor] = [
            loss / world
            if loss is not None
            else torch.zeros((), dtype=self.acc, device=self.device)
        ]
        zero = torch.zeros((), dtype=self.acc, device=self.device)
        with torch.no_grad():
            for i, (_, p) in enumerate(self.params):
                w = distributed.local(p.detach()).to(self.acc)
                share = 1.0 if self.fsdp1_sharded or distributed.sharded(p) else 1.0 / world
                g = self.grad_norms.get(i)
                before = self.update_from[i] if self.update_from is not None else None
                has_update = before is not None and before.shape == w.shape
                values += [
                    w.square().sum() * share,
                    g.to(self.acc).square() * share if g is not None else zero,
                    (w - before.to(self.acc)).square().sum() * share if has_update else zero,  # type: ignore[union-attr]
                    before.to(self.acc).square().sum() * share if has_update else zero,  # type: ignore[union-attr]
                    zero + (share if g is not None else 0.0),
                    zero + (share if has_update else 0.0),
                ]
        return distributed.sum_over_ranks(torch.stack([v.to(self.device) for v in values]))

    def stats(self, values: list[float]) -> list[ParamStats]:
        """Per parameter, from [‖w‖, ‖∇w‖, ‖Δw‖, ‖w before‖] on the host: the record's named norms."""
        out = []
        for i, (name, _) in enumerate(self.params):
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

    @contextlib.contextmanager
    def installed(self, snapshot: list[torch.Tensor] | None) -> Iterator[None]:
        """The weights of `snapshot` in place for the block (none given: the live ones), then the live ones back."""
        import torch

        if snapshot is None:
            yield
            return
        current = self.copy()
        with torch.no_grad():
            for (_, p), s in zip(self.params, snapshot, strict=True):
                distributed.local(p).copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), s in zip(self.params, current, strict=True):
                    distributed.local(p).copy_(s)


UPDATE_CHUNK = 1 << 20  # elements: a weight larger than this is read in chunks of it


def update_norms(
    after: list[torch.Tensor], before: list[torch.Tensor], with_before: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(‖a‖, ‖b‖, ‖a − b‖) of each pair, as `tensor_norms` gives them, reading each tensor once.

    `with_before=False` leaves ‖b‖ out (an empty list): b is then read only by the subtraction.

    The small tensors' differences are one `_foreach_sub`, and their norms one multi-tensor norm. A tensor over
    UPDATE_CHUNK elements goes chunk by chunk: the chunk's difference into one scratch buffer, then the
    chunk's norms, so no temporary the size of the weights is allocated (fresh memory the size of GPT-2's
    weights cost each logged step its page faults, about 0.1 s on the CPU).
    """
    import torch

    width = 3 if with_before else 2  # per pair: ‖a‖, ‖a − b‖[, ‖b‖]
    out: list[list[torch.Tensor]] = [[] for _ in after]
    small = [i for i, a in enumerate(after) if a.numel() <= UPDATE_CHUNK]
    if small:
        pairs_a = [after[i] for i in small]
        pairs_b = [before[i] for i in small]
        deltas = list(torch._foreach_sub(pairs_a, pairs_b))
        norms = tensor_norms(pairs_a + deltas + (pairs_b if with_before else []))
        for j, i in enumerate(small):
            out[i] = norms[j :: len(small)]
    scratch: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
    for i, (a, b) in enumerate(zip(after, before, strict=True)):
        if out[i]:
            continue
        flat_a, flat_b = a.reshape(-1), b.reshape(-1)
        key = (flat_a.dtype, flat_a.device)
        buf = scratch.get(key)
        if buf is None:
            buf = scratch[key] = torch.empty(UPDATE_CHUNK, dtype=flat_a.dtype, device=flat_a.device)
        half = flat_a.dtype in (torch.float16, torch.bfloat16)
        parts: list[torch.Tensor] = []
        for start in range(0, flat_a.numel(), UPDATE_CHUNK):
            end = min(start + UPDATE_CHUNK, flat_a.numel())
            chunk_a, chunk_b, part = flat_a[start:end], flat_b[start:end], buf[: end - start]
            torch.sub(chunk_a, chunk_b, out=part)
            chunks = [chunk_a, part, chunk_b][:width]
            parts += torch._foreach_norm(chunks, 2, dtype=torch.float32 if half else None)
        # Rows are chunks, columns the norms: the chunks' norms combine as a norm of norms.
        out[i] = list(torch.linalg.vector_norm(torch.stack(parts).view(-1, width), dim=0).unbind())
    return (
        [o[0] for o in out],
        [o[2] for o in out] if with_before else [],
        [o[1] for o in out],
    )


def from_squares(values: list[float]) -> list[float]:
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


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
