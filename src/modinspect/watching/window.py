"""`watch`'s window as rows: a record's module statistics, and the run's totals over every record."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Protocol

from modinspect.reports import ModuleStats
from modinspect.run import wrappers
from modinspect.run.collector import RELU_FAMILY
from modinspect.run.reductions import NEAR_LIMIT, flags_for, grad_outliers

if TYPE_CHECKING:
    from torch import nn

    from modinspect.run.reductions import GradTotals, Running


class RunTotals(Protocol):
    """Per-module statistics over the whole run (record.py's `_Totals`)."""

    running: list[Running]
    grad: list[GradTotals]
    alive: list[list[bool] | None]
    units_ok: list[bool]
    steps: int


def rms_rows(rows: list[ModuleStats], steps: int) -> list[ModuleStats]:
    """A record's rows with gradient norms as the RMS over the window's steps."""
    scale = 1 / math.sqrt(steps) if steps else 1.0
    if scale == 1.0:  # one step (a sentinel-mode record): the rows as they are, no copy of each
        return list(rows)
    return [
        dataclasses.replace(r, grad_norm=r.grad_norm * scale if r.grad_norm is not None else None)
        for r in rows
    ]


def total_rows(t: RunTotals, names: list[str], mods: list[nn.Module]) -> list[ModuleStats]:
    """The run's totals as `stats` rows, flags included (gradient norms: the RMS over the steps seen)."""
    scale = 1 / math.sqrt(t.steps) if t.steps else 1.0
    types = [wrappers.type_name(m) for m in mods]
    norms = [math.sqrt(g.squares) * scale if g.seen else None for g in t.grad]
    exploding, vanishing = grad_outliers(
        names, types, norms, [g.near * NEAR_LIMIT >= 1.0 for g in t.grad]
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
            name=names[m],
            type=types[m],
            **r.report_fields(),  # the same fields as `stats`' rows: a new statistic needs no line here
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
        rows.append(dataclasses.replace(row, flags=flags_for(row, m in exploding, m in vanishing)))
    return rows
