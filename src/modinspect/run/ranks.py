"""Many processes (`torchrun`): wrappers seen through, and each rank's partial statistics merged exactly.

Each rank hooks its own replica (DDP) or shard (FSDP2's `fully_shard`) and reduces what it sees. At each
logged step (`watch`) or at the end of the run (`stats`), one `all_gather_object` brings every rank's
host-side totals to every rank, and they are merged exactly:

- each rank's records travel as plain dicts (`dataclasses.asdict`) and are merged by the records' own
  `merge()`, the same that merges calls and batches: `Moments` (count, mean and M2 by Chan's parallel
  merge, min and max by min and max, NaN/Inf/zero counts and sums of |x| by sums), `Units` (dead units by
  OR: a unit is dead only if it is zero on every rank), `GradTotals`;
- gradient norms by the sum of squares. DDP and FSDP average gradients over the ranks, so the loss they
  optimise is the mean of the ranks' losses and the gradient of a module's output on a rank is the local
  one over the world size: the merged norm is sqrt(Σ‖g_r‖²) / world, the norm one process would see on
  the whole batch with the mean loss.

Parameters are merged with one `all_reduce` of squares: a sharded parameter (an FSDP2 DTensor) sums its
shards' squares, a replicated one (DDP) counts once. Histograms stay those of rank 0's shard: their bins
span each rank's own [min, max], which a merge cannot re-bin exactly.

Module and parameter names are those of the model the user wrote: DDP's `module.`, torch.compile's
`_orig_mod.`, FSDP1's `_fsdp_wrapped_module.` and activation checkpointing's `_checkpoint_wrapped_module.`
are taken out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modinspect.run.reductions import GradTotals, Moments, Running, Units

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modinspect.reports import NonfiniteOrigin
    from modinspect.run.collector import Collector

__all__ = ["Ranks", "ranks"]


@dataclass(frozen=True)
class Ranks:
    """This process's place: rank 0 of 1 when torch.distributed is not initialised."""

    rank: int = 0
    world: int = 1

    @property
    def many(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Rank 0 writes logs and prints; the others only take part in the merges."""
        return self.rank == 0


def ranks() -> Ranks:
    import torch

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(int(dist.get_rank()), int(dist.get_world_size()))


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (FSDP2's sharded parameters and gradients); any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) and type(t).__name__ == "DTensor" else t


def sharded(t: Any) -> bool:
    """A DTensor split across ranks (a Shard placement): its squares add up over the ranks."""
    if type(t).__name__ != "DTensor":
        return False
    return any(type(p).__name__ in ("Shard", "_StridedShard") for p in t.placements)


def fsdp1_sharded(model: nn.Module) -> bool:
    """The model holds FSDP1 (FullyShardedDataParallel) units that shard: each rank's parameters are its shard.

    Not exercised by the test suite: FSDP1 needs an accelerator (FSDP2's fully_shard is tested on the CPU).
    """
    for m in model.modules():
        if type(m).__name__ == "FullyShardedDataParallel":
            strategy = getattr(m, "sharding_strategy", None)
            if getattr(strategy, "name", "") != "NO_SHARD":
                return True
    return False


def collective_device(fallback: str) -> str:
    """Where a collective's tensors must live: the current CUDA device under NCCL, else the CPU."""
    import torch

    backend = str(torch.distributed.get_backend()).lower()
    if "nccl" in backend:
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu" if "gloo" in backend or not fallback.startswith("cuda") else fallback


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool, True when it is True on any rank (one all_reduce of one number)."""
    import torch

    dist = torch.distributed
    device = collective_device(str(flag.device))
    value = flag.reshape(()).to(device=device, dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value > 0


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over the ranks (one all_reduce), on the device the collective needs, then back."""
    import torch

    dist = torch.distributed
    device = collective_device(str(values.device))
    out = values.to(device=device, dtype=torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (plain Python values of our own making), in rank order, on every rank."""
    import torch

    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- the merge (pure Python)
ModuleState = dict[
    str, Any
]  # {"calls", "moments", "units", "grad"}: each record as `dataclasses.asdict`


def collector_state(c: Collector) -> list[ModuleState]:
    """Per module, what a merge needs from a Collector's host-side totals: its records as plain dicts."""
    return [
        {
            "calls": r.calls,
            "moments": dataclasses.asdict(r.moments()),
            "units": dataclasses.asdict(Units(list(r.alive), c.units_ok[m])),
            "grad": dataclasses.asdict(c.grad[m]),
        }
        for m, r in enumerate(c.running)
    ]


def merge_states(
    states: Sequence[list[ModuleState]], grad_scale: float
) -> list[tuple[Running, bool, GradTotals]]:
    """The ranks' per-module states merged: (Running, units_ok, GradTotals) per module.

    Every record is merged by its own `merge()`; calls are per step, the same on every rank (their max).
    Output-gradient squares are summed times `grad_scale`: 1 / world² when each rank's loss is a mean and
    the ranks' gradients are averaged (DDP, FSDP), 1 when the losses add up (`stats --loss sum`).
    """
    merged = []
    for m in range(len(states[0])):
        total = Running()
        units = Units()
        grad = GradTotals()
        for state in states:
            s = state[m]
            total.calls = max(total.calls, s["calls"])
            total.merge(Moments(**s["moments"]))
            units.merge(Units(**s["units"]))
            grad.merge(GradTotals(**s["grad"]), grad_scale)
        total.alive = units.alive
        merged.append((total, units.ok, grad))
    return merged


def merge_collector(c: Collector, r: Ranks, grad_scale: float | None = None) -> None:
    """Replace `c`'s host totals by the merge over every rank's (a collective: every rank must call it).

    `grad_scale` defaults to 1 / world² (mean losses, averaged gradients: see merge_states).
    """
    states = gather(collector_state(c))
    scale = 1.0 / (r.world * r.world) if grad_scale is None else grad_scale
    for m, (running, ok, grad) in enumerate(merge_states(states, scale)):
        c.running[m] = running
        c.units_ok[m] = ok
        c.grad[m] = grad


def pick_origin(origins: Sequence[NonfiniteOrigin | None]) -> NonfiniteOrigin | None:
    """The first NaN/Inf over the ranks: the lowest rank that names a module, else the lowest rank with any."""
    import dataclasses

    found = [(i, o) for i, o in enumerate(origins) if o is not None]
    if not found:
        return None
    rank, origin = next(((i, o) for i, o in found if o.module is not None), found[0])
    return dataclasses.replace(origin, rank=rank)


def pick_origins(
    pairs: Sequence[tuple[NonfiniteOrigin | None, NonfiniteOrigin | None]],
) -> tuple[NonfiniteOrigin | None, NonfiniteOrigin | None]:
    """`stats`' (origin, backward origin) pairs of every rank: the pair of the rank pick_origin chooses."""
    import dataclasses

    chosen = pick_origin([origin for origin, _ in pairs])
    if chosen is None:
        return None, None
    backward = pairs[chosen.rank or 0][1]
    return chosen, dataclasses.replace(backward, rank=chosen.rank) if backward is not None else None
