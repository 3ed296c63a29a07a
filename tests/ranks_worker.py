"""Launched by tests/test_ranks.py under `torchrun --nproc-per-node 2` (gloo, CPU); importable for the
single-process reference run of the same training loop.

`python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ranks_worker.py OUT_DIR` runs, on
each rank: DDP training watched, FSDP2 (fully_shard) training watched, and DDP training with a NaN planted
on rank 1 at step 3, stopped there (on_nonfinite="raise") and only logged (on_nonfinite="log"). Rank 0 writes the logs; each rank writes what it saw to OUT_DIR/rank{R}.json.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import modinspect

BATCH = 8
STEPS = 4
EVERY = 2
BAD_STEP = 3  # the 1-based step whose forward rank 1 poisons
BAD_RANK = 1


class Poison(nn.Module):
    """Identity until armed; armed, log(x - 10) of a LayerNorm output (all below 10) is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            return torch.log(x - 10)  # fault: poison
        return x


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 16), Poison(), nn.Linear(16, 3)
    )


def poison_of(model: nn.Sequential) -> Poison:
    """The Poison layer of a `build()` model."""
    layer = model[4]
    assert isinstance(layer, Poison)
    return layer


class Root(nn.Module):
    """sqrt of the input: NaN where an input is negative (rank 1's half of the stats batch, below)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)  # fault: root


def build_root() -> nn.Sequential:
    """For `torchrun … modinspect stats`: the NaN comes from one rank's slice of the batch only."""
    torch.manual_seed(0)
    return nn.Sequential(Root(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same global batches everywhere; rank r takes rows [r*B/W, (r+1)*B/W) of each."""
    g = torch.Generator().manual_seed(1)
    out = []
    share = BATCH // world
    for _ in range(STEPS):
        x, y = torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)
        out.append((x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]))
    return out


def train(
    model: nn.Module,
    rank: int,
    world: int,
    log: Path | None,
    poison: Poison | None = None,
    **watch: Any,
) -> dict[str, Any]:
    """The loop users write: forward, loss, backward, optimizer step, w.step(loss)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: dict[str, Any] = {"error": None, "nonfinite_step": None, "steps": 0}
    with modinspect.watch(model, every=EVERY, log=log, **watch) as w:
        for step, (x, y) in enumerate(batches(rank, world), start=1):
            if poison is not None:
                poison.armed = step == BAD_STEP and rank == BAD_RANK
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            try:
                w.step(loss)
            except modinspect.NonFiniteError as exc:
                seen["error"] = str(exc)
                break
            seen["steps"] = step
    seen["nonfinite_step"] = w.nonfinite_step
    return seen


def main(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    seen: dict[str, Any] = {"rank": rank, "world": world}
    warnings.simplefilter("ignore")

    ddp = DistributedDataParallel(build())
    seen["ddp"] = train(ddp, rank, world, out / "ddp.jsonl")

    model = build()
    fully_shard(model)
    seen["fsdp"] = train(model, rank, world, out / "fsdp.jsonl")

    plain = build()
    bad = DistributedDataParallel(plain)
    # The NaN runs in mode="window": every step's statistics, merged over the ranks (DDP and FSDP2 above run
    # the default mode="sentinel": the logged steps' statistics, and the sentinel's collectives in between).
    seen["nan"] = train(
        bad,
        rank,
        world,
        out / "nan.jsonl",
        poison=poison_of(plain),
        on_nonfinite="raise",
        save_batch=out / "bad_batch.pt",
        mode="window",
    )

    quiet = build()
    seen["nan_log"] = train(
        DistributedDataParallel(quiet),
        rank,
        world,
        out / "nan_log.jsonl",
        poison=poison_of(quiet),
        on_nonfinite="log",
        mode="window",
    )

    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    # Both ranks finish their collectives before either tears gloo down: a rank that exited while its peer
    # still had a pending operation aborted with "terminate called without an active exception" (seen once in
    # a fresh-clone CI run under load).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
