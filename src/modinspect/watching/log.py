"""The watch log, schema `modinspect.watch/1`: its records as frozen dataclasses, and the writer.

A log is JSONL: a header line, then one `step` record per logged step. `modinspect.watch` writes it and
`modinspect report` reads it (`modinspect.watching.runlog`). JSON stays strict: a NaN or Inf statistic
is written as null, and the record's `nan`/`inf` counts say why. No torch here: a record holds plain
Python numbers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from modinspect.errors import UsageError

if TYPE_CHECKING:
    from modinspect.reports import ModuleStats

SCHEMA = "modinspect.watch/1"


@dataclass(frozen=True)
class LogHeader:
    """The first line: which model, how often, where and on how many ranks."""

    model: str
    every: int
    device: str
    world_size: int = 1
    started: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Histogram:
    """`counts[i]` values fell in [edges[i], edges[i+1]); len(edges) == len(counts) + 1."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class ModuleRecord:
    """One module's output statistics at one logged step (over the finite values; NaN/Inf counted apart)."""

    name: str
    type: str
    calls: int
    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    zero_fraction: float | None
    nan: int
    inf: int
    dead_fraction: float | None  # ReLU-family only
    grad_norm: float | None  # of the gradient w.r.t. the output; None without backward
    grad_nan: int
    grad_inf: int
    histogram: Histogram | None = None


@dataclass(frozen=True)
class ParamRecord:
    """One parameter tensor at one logged step: ‖w‖, ‖∇w‖, ‖Δw‖ of the logged step's update, ‖Δw‖/‖w before‖."""

    name: str
    norm: float | None  # None (null in the log) when not finite
    grad_norm: float | None
    update_norm: float | None
    update_ratio: float | None


@dataclass(frozen=True)
class NonfiniteRecord:
    """Where the first NaN/Inf of this step came from, as `modinspect stats` finds it."""

    module: str | None  # None when the model's input or the loss already held it
    type: str | None
    phase: str  # forward | backward
    op: str | None
    source: str | None  # file.py:LINE
    code: str | None  # the source line
    cause: str  # produced | input | loss | weight | overflow | sentinel (seen between logged steps)
    rank: int | None = None  # under torchrun: the rank whose shard held it; None on one process
    caller: str | None = (
        None  # file:line of the user's own code that called the model, when `source` is not it
    )
    explanation: str | None = (
        None  # "step 149 updated `wte.weight` by 3.2e+33× its norm (lr 1e+30 in group 0); ..."
    )


@dataclass(frozen=True)
class GroupRecord:
    """One optimizer param group's scalar hyperparameters (lr, momentum, weight_decay...), sorted by name."""

    values: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class StepRecord:
    step: int
    time: float
    loss: float | None
    modules: tuple[ModuleRecord, ...]
    params: tuple[ParamRecord, ...] = ()
    nonfinite: NonfiniteRecord | None = None
    optimizer: tuple[
        GroupRecord, ...
    ] = ()  # the optimizer's param groups at this step, when it is known


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def header_document(header: LogHeader) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": "header",
        "model": header.model,
        "every": header.every,
        "started": header.started,
        "device": header.device,
        "world_size": header.world_size,
    }


def open_log(path: Path, header: LogHeader, overwrite: bool) -> LogWriter:
    """A LogWriter on `path` (its folder made), refusing an existing file unless `overwrite`."""
    if path.exists() and not path.is_dir() and not overwrite:
        raise UsageError(f"log {path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return LogWriter(path, header, force=overwrite)


def step_document(record: StepRecord) -> dict[str, Any]:
    """A step record as its JSON object, non-finite floats as null."""
    document: dict[str, Any] = {
        "kind": "step",
        "step": record.step,
        "time": record.time,
        "loss": _finite(record.loss),
        "modules": [
            {
                "name": m.name,
                "type": m.type,
                "calls": m.calls,
                "count": m.count,
                "mean": _finite(m.mean),
                "std": _finite(m.std),
                "min": _finite(m.min),
                "max": _finite(m.max),
                "zero_fraction": _finite(m.zero_fraction),
                "nan": m.nan,
                "inf": m.inf,
                "dead_fraction": _finite(m.dead_fraction),
                "grad_norm": _finite(m.grad_norm),
                "grad_nan": m.grad_nan,
                "grad_inf": m.grad_inf,
                "histogram": None
                if m.histogram is None
                else {
                    "edges": [float(e) for e in m.histogram.edges],
                    "counts": list(m.histogram.counts),
                },
            }
            for m in record.modules
        ],
        "params": [
            {
                "name": p.name,
                "norm": _finite(p.norm),
                "grad_norm": _finite(p.grad_norm),
                "update_norm": _finite(p.update_norm),
                "update_ratio": _finite(p.update_ratio),
            }
            for p in record.params
        ],
        "nonfinite": None
        if record.nonfinite is None
        else {
            "module": record.nonfinite.module,
            "type": record.nonfinite.type,
            "phase": record.nonfinite.phase,
            "op": record.nonfinite.op,
            "source": record.nonfinite.source,
            "code": record.nonfinite.code,
            "cause": record.nonfinite.cause,
            "rank": record.nonfinite.rank,
        },
    }
    # Optional keys (schema /1 readers ignore them): present only when known.
    if record.nonfinite is not None and record.nonfinite.caller is not None:
        document["nonfinite"]["caller"] = record.nonfinite.caller
    if record.nonfinite is not None and record.nonfinite.explanation is not None:
        document["nonfinite"]["explanation"] = record.nonfinite.explanation
    if record.optimizer:
        document["optimizer"] = [
            {key: _finite(value) for key, value in g.values} for g in record.optimizer
        ]
    return document


def write_record(stream: IO[str], record: LogHeader | StepRecord) -> None:
    """Append one record as one line and flush, so a reader (or a crash) never sees half a record but the last."""
    document = header_document(record) if isinstance(record, LogHeader) else step_document(record)
    stream.write(
        json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
    )
    stream.flush()


class LogWriter:
    """A new watch log at `path`: the header on opening, then `write(step_record)` appends one line each.

    Refuses an existing file unless `force` (then starts it afresh). Use as a context manager::

        with LogWriter("runs/stats.jsonl", LogHeader(model="Net", every=100, device="cpu")) as log:
            log.write(StepRecord(step=0, time=time.time(), loss=2.3, modules=(...)))
    """

    def __init__(self, path: str | Path, header: LogHeader, force: bool = False) -> None:
        from modinspect.files import check_writable

        self.path = Path(path)
        check_writable(self.path, force)
        try:
            # "x" closes the race between the check above and the open: a file that appeared meanwhile is refused.
            self._stream: IO[str] = self.path.open("w" if force else "x", encoding="utf-8")
        except FileExistsError:
            raise UsageError(f"{self.path} exists; pass --force to overwrite it") from None
        write_record(self._stream, header)

    def write(self, record: StepRecord) -> None:
        write_record(self._stream, record)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def module_record(r: ModuleStats) -> ModuleRecord:
    """The log's record of one module's statistics."""
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
