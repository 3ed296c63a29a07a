"""A watch log (`modinspect.watch/1` JSONL) -> RunReport: per-module series, the first bad step, gradient flow.

Pure: reads the file, validates every record against the schema (modinspect.watching.log) and raises a
ModinspectError naming the line at the first breach. A partial last line, as a run still writing leaves
it, is skipped with a note.

Bounded: only a regular file is read (a pipe or a device could block or never end), line by line, no
line longer than MAX_LINE_BYTES and no more than `max_bytes` in all (MAX_LOG_BYTES unless the caller
raises it: `report --max-log-size`); a histogram holds at most MAX_BINS bins.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from modinspect.errors import CorruptFileError, SourceNotFoundError, UnknownFormatError
from modinspect.reports import (
    LOG_SCALE_SPAN,
    UPDATE_RATIO_BAND,
    BadStep,
    ModuleSeries,
    ParamSeries,
    RunHeader,
    RunReport,
    SeriesScale,
    StepHistogram,
)
from modinspect.watching.log import (
    SCHEMA,
    GroupRecord,
    Histogram,
    ModuleRecord,
    NonfiniteRecord,
    ParamRecord,
    StepRecord,
)


class _Bad(Exception):
    """A record breaks the schema; the message says how (the reader adds the file and line)."""


def _reject_constant(name: str) -> float:
    raise _Bad(f"holds the literal {name}; the schema writes non-finite values as null")


def _field(obj: dict[str, Any], key: str, kinds: tuple[type, ...], nullable: bool = False) -> Any:
    if key not in obj:
        raise _Bad(f"lacks {key!r}")
    value = obj[key]
    if value is None and nullable:
        return None
    # bool is an int to Python, never to the schema.
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "/".join("number" if k is float else k.__name__ for k in kinds) + (
            " or null" if nullable else ""
        )
        raise _Bad(f"has {key!r} = {_short(value)}, not {want}")
    if float in kinds:
        return _finite(value, key)  # type: ignore[arg-type]
    if isinstance(value, int) and value > MAX_INT:
        raise _Bad(f"has {key!r} = {_short(value)} above the schema's largest integer 2**63 - 1")
    return value


MAX_INT = 2**63 - 1  # counts and steps are int64 where the log is written


def _short(value: Any) -> str:
    """A value as the error line shows it: its JSON cut to 40 characters, or the kind of a container."""
    if isinstance(
        value, list | dict
    ):  # never re-encoded: it may nest as deep as the parser allowed
        return "a list" if isinstance(value, list) else "an object"
    text = str(value) if type(value) is int else json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _finite(value: int | float, key: str) -> float:
    """A JSON number as a finite float: the schema writes NaN/Inf as null, so 1e400 (inf to Python) breaks it."""
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        shown = (
            "a number" if isinstance(value, float) else _short(value)
        )  # 1e400 arrives as inf: say what it was
        raise _Bad(
            f"has {key!r} = {shown} beyond float64's range (the schema writes non-finite values as null)"
        )
    return number


def _num(obj: dict[str, Any], key: str, nullable: bool = True) -> float | None:
    return _field(obj, key, (int, float), nullable)  # type: ignore[no-any-return]


def _int(obj: dict[str, Any], key: str) -> int:
    value: int = _field(obj, key, (int,))
    if value < 0:
        raise _Bad(f"has {key!r} = {_short(value)}, below 0")
    return value


def _str(obj: dict[str, Any], key: str, nullable: bool = False) -> Any:
    return _field(obj, key, (str,), nullable)


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise _Bad(
            f"lacks the list {key!r}" if key not in obj else f"has {key!r} that is not a list"
        )
    return value


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"has {what} that is not an object")
    return value


def _histogram(value: Any) -> Histogram | None:
    if value is None:
        return None
    obj = _dict(value, "a histogram")
    edges, counts = _list(obj, "edges"), _list(obj, "counts")
    if len(counts) > MAX_BINS:
        raise _Bad(
            f"has a histogram of {len(counts):,} bins, more than the {MAX_BINS:,} this reader takes "
            "(modinspect.watch writes 16)"
        )
    if len(edges) != len(counts) + 1:
        raise _Bad(
            f"has a histogram with {len(edges)} edges for {len(counts)} counts (needs one more edge)"
        )
    # Whole-list type checks (type(), not isinstance: bool is no number here) keep long logs fast.
    if not set(map(type, edges)) <= {int, float}:
        raise _Bad("has a histogram whose edges are not all numbers")
    if not set(map(type, counts)) <= {int} or (counts and min(counts) < 0):
        raise _Bad("has a histogram whose counts are not all integers ≥ 0")
    if counts and max(counts) > MAX_INT:
        raise _Bad("has a histogram count above the schema's largest integer 2**63 - 1")
    try:
        floats = tuple(map(float, edges))
    except OverflowError:
        floats = (math.inf,)
    if not all(map(math.isfinite, floats)):
        raise _Bad("has a histogram edge beyond float64's range")
    return Histogram(edges=floats, counts=tuple(counts))


def _module(value: Any) -> ModuleRecord:
    obj = _dict(value, "a module entry")
    name = _str(obj, "name")
    try:
        return ModuleRecord(
            name=name,
            type=_str(obj, "type"),
            calls=_int(obj, "calls"),
            count=_int(obj, "count"),
            mean=_num(obj, "mean"),
            std=_num(obj, "std"),
            min=_num(obj, "min"),
            max=_num(obj, "max"),
            zero_fraction=_num(obj, "zero_fraction"),
            nan=_int(obj, "nan"),
            inf=_int(obj, "inf"),
            dead_fraction=_num(obj, "dead_fraction"),
            grad_norm=_num(obj, "grad_norm"),
            grad_nan=_int(obj, "grad_nan"),
            grad_inf=_int(obj, "grad_inf"),
            histogram=_histogram(obj.get("histogram")),
        )
    except _Bad as exc:
        raise _Bad(f"module {name!r} {exc}") from None


def _param(value: Any) -> ParamRecord:
    obj = _dict(value, "a params entry")
    name = _str(obj, "name")
    try:
        return ParamRecord(
            name=name,
            norm=_num(obj, "norm"),
            grad_norm=_num(obj, "grad_norm"),
            update_norm=_num(obj, "update_norm"),
            update_ratio=_num(obj, "update_ratio"),
        )
    except _Bad as exc:
        raise _Bad(f"parameter {name!r} {exc}") from None


def _nonfinite(value: Any) -> NonfiniteRecord | None:
    if value is None:
        return None
    obj = _dict(value, "'nonfinite'")
    phase = _str(obj, "phase")
    if phase not in ("forward", "backward"):
        raise _Bad(f"has a nonfinite phase {phase!r}, not forward or backward")
    return NonfiniteRecord(
        module=_str(obj, "module", True),
        type=_str(obj, "type", True),
        phase=phase,
        op=_str(obj, "op", True),
        source=_str(obj, "source", True),
        code=_str(obj, "code", True),
        cause=_str(obj, "cause"),
        rank=_rank(obj),
        # Optional: what watch saw in the updates before it ("step 33 updated `2.bias` by 4.3e+04× its norm")
        explanation=_str(obj, "explanation", True) if "explanation" in obj else None,
    )


def _rank(obj: dict[str, Any]) -> int | None:
    """Optional (logs of one process may lack it): the rank whose shard held the first NaN/Inf."""
    if obj.get("rank") is None:
        return None
    return _int(obj, "rank")


def _step(obj: dict[str, Any]) -> StepRecord:
    return StepRecord(
        step=_int(obj, "step"),
        time=_num(obj, "time", nullable=False) or 0.0,
        loss=_num(obj, "loss"),
        modules=tuple(_module(m) for m in _list(obj, "modules")),
        params=tuple(_param(p) for p in _list(obj, "params")),
        nonfinite=_nonfinite(obj.get("nonfinite")),
        optimizer=_optimizer(obj.get("optimizer")),
    )


def _optimizer(value: Any) -> tuple[GroupRecord, ...]:
    """The optional 'optimizer' list (one object per param group): only the first group's lr is kept."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("has 'optimizer' that is not a list")
    if not value:
        return ()
    group = _dict(value[0], "an optimizer group")
    if "lr" not in group:
        return ()
    try:
        return (GroupRecord(values=(("lr", _num(group, "lr")),)),)  # type: ignore[arg-type]
    except _Bad as exc:
        raise _Bad(f"optimizer group 0 {exc}") from None


def _header(obj: dict[str, Any]) -> RunHeader:
    every = _int(obj, "every")
    world = _int(obj, "world_size")
    if every < 1 or world < 1:
        raise _Bad("has 'every' or 'world_size' below 1")
    return RunHeader(
        schema=SCHEMA,
        model=_str(obj, "model"),
        every=every,
        started=_num(obj, "started", nullable=False) or 0.0,
        device=_str(obj, "device"),
        world_size=world,
    )


class _TooDeep(ValueError):
    """JSON nested deeper than the parser's recursion allows (a schema record nests 4 levels)."""


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise _TooDeep("arrays or objects nested too deep") from None


@dataclass
class _Lines:
    header: RunHeader
    steps: list[StepRecord]
    truncated: bool
    skipped_kinds: dict[str, int]


MAX_LINE_BYTES = 16 * 2**20  # a step of 10,000 modules with histograms is about 3 MB
MAX_LOG_BYTES = 128 * 2**20  # parsed, a log takes about 4 bytes of memory per byte
MAX_BINS = 1024  # modinspect.watch writes 16


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n % 2**20 == 0 else f"{n / 2**20:.1f} MiB"


def _read(path: Path, max_bytes: int) -> _Lines:
    label = str(path)
    if not path.exists():
        raise SourceNotFoundError(f"{label} does not exist")
    if path.is_dir():
        raise UnknownFormatError(
            f"{label} is a directory, not a modinspect watch log (a .jsonl file)"
        )
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer; fstat then says what was opened.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SourceNotFoundError(f"cannot read {label}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnknownFormatError(
                f"{label} is not a regular file (a pipe, socket or device): report reads a "
                "watch log file"
            )
        if info.st_size > max_bytes:
            raise CorruptFileError(_too_big(label, max_bytes, info.st_size))
        os.set_blocking(fd, True)
        try:
            return _read_lines(label, _bounded_lines(label, f, max_bytes))
        except OSError as exc:
            raise SourceNotFoundError(f"cannot read {label}: {exc.strerror}") from None


def _too_big(label: str, max_bytes: int, size: int | None = None) -> str:
    holds = f"is {_mib(size)}, more than" if size is not None else "grew past"
    return (
        f"{label} {holds} --max-log-size ({_mib(max_bytes)}) allows; pass a larger --max-log-size "
        "(e.g. 1G) to read it: parsed, a log takes about 4 times its size in memory"
    )


def _bounded_lines(label: str, f: BinaryIO, max_bytes: int) -> Iterator[bytes]:
    """The lines of `f`, streamed: none longer than MAX_LINE_BYTES, `max_bytes` in all (a run may still be writing)."""
    total = 0
    number = 0
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise CorruptFileError(
                f"{label} line {number} is longer than {_mib(MAX_LINE_BYTES)}, the most a watch "
                "log line may hold (a step of 10,000 modules takes about 3 MB)"
            )
        total += len(line)
        if total > max_bytes:
            raise CorruptFileError(_too_big(label, max_bytes))
        yield line


def _read_lines(label: str, lines: Iterable[bytes]) -> _Lines:
    header: RunHeader | None = None
    steps: list[StepRecord] = []
    skipped: dict[str, int] = {}
    truncated = False
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if header is None:
            header = _read_header(label, raw)
            continue
        try:
            obj = _dict(_parse(raw), "a line")
            kind = obj.get("kind")
            if kind == "header":
                raise CorruptFileError(
                    f"{label} line {number} is a second header: two runs in one log?"
                )
            if kind != "step":
                # Later producers may add record kinds; this reader knows steps only.
                skipped[str(kind)] = skipped.get(str(kind), 0) + 1
                continue
            record = _step(obj)
        except (ValueError, _Bad) as exc:
            if not raw.endswith(b"\n"):
                # The last line, without its newline: the writer flushes whole lines, so a run still writing.
                truncated = True
                break
            if isinstance(exc, _Bad):
                raise CorruptFileError(f"{label} line {number}: the step record {exc}") from None
            raise CorruptFileError(f"{label} line {number} is not JSON ({_reason(exc)})") from None
        if steps and record.step <= steps[-1].step:
            raise CorruptFileError(
                f"{label} line {number}: step {record.step} does not follow step {steps[-1].step}"
            )
        steps.append(record)
    if header is None:
        raise UnknownFormatError(f"{label} is empty, not a modinspect watch log")
    if not steps:
        raise UnknownFormatError(f"{label} has a header but no step records yet")
    return _Lines(header=header, steps=steps, truncated=truncated, skipped_kinds=skipped)


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return str(exc).partition(";")[
        0
    ]  # _TooDeep, or "Exceeds the limit (4300 digits) for integer string conversion"


def _read_header(label: str, line: bytes) -> RunHeader:
    not_a_log = f"{label} is not a modinspect watch log (its first line is not a {SCHEMA} header)"
    try:
        obj = _parse(line)
    except (ValueError, _Bad):
        raise UnknownFormatError(not_a_log) from None
    if (
        not isinstance(obj, dict)
        or obj.get("kind") != "header"
        or not isinstance(obj.get("schema"), str)
    ):
        raise UnknownFormatError(not_a_log)
    schema = obj["schema"]
    if schema != SCHEMA:
        if schema.startswith("modinspect.watch/"):
            raise UnknownFormatError(
                f"{label} is a {schema} log; this modinspect reads {SCHEMA}: upgrade it"
            )
        raise UnknownFormatError(not_a_log)
    try:
        return _header(obj)
    except _Bad as exc:
        raise CorruptFileError(f"{label} line 1: the header {exc}") from None


def _origin(record: StepRecord) -> BadStep | None:
    affected = tuple(m.name for m in record.modules if m.nan or m.inf or m.grad_nan or m.grad_inf)
    nf = record.nonfinite
    if nf is not None:
        return BadStep(
            step=record.step,
            module=nf.module,
            type=nf.type,
            phase=nf.phase,
            op=nf.op,
            source=nf.source,
            code=nf.code,
            cause=nf.cause,
            recorded=True,
            affected=affected,
            rank=nf.rank,
            explanation=nf.explanation,
        )
    forward = [m for m in record.modules if m.nan or m.inf]
    backward = [m for m in record.modules if m.grad_nan or m.grad_inf]
    if not forward and not backward:
        return None
    first, phase = (forward[0], "forward") if forward else (backward[-1], "backward")
    return BadStep(
        step=record.step,
        module=first.name,
        type=first.type,
        phase=phase,
        op=None,
        source=None,
        code=None,
        cause="produced",
        recorded=False,
        affected=affected,
    )


def _series(
    name: str, type_: str, steps: list[StepRecord], at: list[dict[str, ModuleRecord]]
) -> ModuleSeries:
    records = [index.get(name) for index in at]
    grads = [r.grad_norm for r in records if r is not None and r.grad_norm is not None]
    first_bad = next(
        (
            s.step
            for s, r in zip(steps, records, strict=True)
            if r is not None and (r.nan or r.inf or r.grad_nan or r.grad_inf)
        ),
        None,
    )
    return ModuleSeries(
        name=name,
        type=type_,
        logged=tuple(r is not None for r in records),
        std=tuple(None if r is None else r.std for r in records),
        mean=tuple(None if r is None else r.mean for r in records),
        grad_norm=tuple(None if r is None else r.grad_norm for r in records),
        dead_fraction=tuple(None if r is None else r.dead_fraction for r in records),
        nonfinite=tuple(r is not None and bool(r.nan or r.inf) for r in records),
        grad_nonfinite=tuple(r is not None and bool(r.grad_nan or r.grad_inf) for r in records),
        histograms=tuple(
            StepHistogram(step=s.step, edges=r.histogram.edges, counts=r.histogram.counts)
            for s, r in zip(steps, records, strict=True)
            if r is not None and r.histogram is not None
        ),
        first_bad_step=first_bad,
        grad_norm_mean=_mean(grads) if grads else None,
        grad_norm_max=max(grads) if grads else None,
        std_overflow=tuple(
            r is not None and r.std is None and not (r.nan or r.inf) and r.count > 1
            for r in records
        ),
        grad_nan=tuple(r is not None and r.grad_nan > 0 for r in records),
        grad_overflow=tuple(
            r is not None and r.grad_norm is None and not (r.grad_nan or r.grad_inf) and bool(grads)
            for r in records
        ),
        std_scale=series_scale(r.std for r in records if r is not None),
        grad_norm_scale=series_scale(r.grad_norm for r in records if r is not None),
        dead_fraction_scale=series_scale(
            (r.dead_fraction for r in records if r is not None), may_log=False
        ),
    )


def series_scale(values: Iterable[float | None], may_log: bool = True) -> SeriesScale | None:
    """The min and max of a series' finite values (None without one), and whether to draw it on a log scale.

    Log (with `may_log`) where its positive values span LOG_SCALE_SPAN× or more: 1e-4 → 1e3, 1 → 1e30.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    positive = [v for v in finite if v > 0]
    # max / min overflows to inf for 1e300 / 1e-300, which is as it should be: ≥ the span
    log = may_log and len(positive) > 1 and max(positive) / min(positive) >= LOG_SCALE_SPAN
    return SeriesScale(min=min(finite), max=max(finite), log=log)


def _mean(values: list[float]) -> float:
    """The mean of finite values, finite whatever their size: each is divided first (1e308 + 1e308 overflows)."""
    n = len(values)
    try:
        return math.fsum(v / n for v in values)
    except OverflowError:  # only where rounding carries the sum past float64's largest value
        return max(values)


def _flag_gradient_flow(series: list[ModuleSeries]) -> tuple[ModuleSeries, ...]:
    """Flag modules whose mean gradient norm is 1000× above or below the median module's, as `stats` does."""
    means = sorted(s.grad_norm_mean for s in series if s.grad_norm_mean is not None)
    if len(means) < 3:
        return tuple(series)
    median = means[len(means) // 2]
    flagged = []
    for s in series:
        flag: tuple[str, ...] = ()
        if s.grad_norm_mean is not None and median > 0:
            if s.grad_norm_mean > 1000 * median:
                flag = ("exploding-grad",)
            elif s.grad_norm_mean < median / 1000:
                flag = ("vanishing-grad",)
        flagged.append(replace(s, flags=flag) if flag else s)
    return tuple(flagged)


def _params(steps: list[StepRecord]) -> tuple[ParamSeries, ...]:
    names = list(dict.fromkeys(p.name for s in steps for p in s.params))
    at = [{p.name: p for p in s.params} for s in steps]
    return tuple(_param_series(n, steps, [index.get(n) for index in at]) for n in names)


def _param_series(
    name: str,
    steps: list[StepRecord],
    records: list[ParamRecord | None],
) -> ParamSeries:
    """One parameter tensor's series, its update ratio's scale and the first steps it left the band."""
    ratio = tuple(None if r is None else r.update_ratio for r in records)
    seen = [i for i, r in enumerate(records) if r is not None]
    first = seen[0] if seen else len(records)
    low, high = UPDATE_RATIO_BAND
    # 0 is no update at all (a frozen tensor, a skipped step), not a slow one
    slow = [s.step for s, v in zip(steps, ratio, strict=True) if v is not None and 0 < v < low]
    fast = [s.step for s, v in zip(steps, ratio, strict=True) if v is not None and v > high]
    return ParamSeries(
        name=name,
        norm=tuple(None if r is None else r.norm for r in records),
        grad_norm=tuple(None if r is None else r.grad_norm for r in records),
        update_norm=tuple(None if r is None else r.update_norm for r in records),
        update_ratio=ratio,
        # After its first record an update is known: a null ‖w‖ or ‖Δw‖ is a non-finite one.
        update_nonfinite=tuple(
            r is not None and i > first and (r.norm is None or r.update_norm is None)
            for i, r in enumerate(records)
        ),
        update_ratio_scale=series_scale(ratio),
        too_slow_at=slow[0] if slow else None,
        too_fast_at=fast[0] if fast else None,
    )


def read_run_log(path: str | Path, max_bytes: int = MAX_LOG_BYTES) -> RunReport:
    """Read and validate a watch log: the per-module series over its steps, the first bad step, gradient flow.

    Args:
        path: the log `modinspect.watch(..., log=PATH)` wrote (JSON lines, schema `modinspect.watch/1`).
        max_bytes: the largest log read (128 MiB by default).

    Returns:
        A RunReport: the logged steps, the loss, each module's and parameter's series aligned with the
        steps, and `first_bad`, the first step with a NaN/Inf.

    Raises:
        CorruptFileError, UnknownFormatError: a log larger than `max_bytes`, a line longer than 16 MiB, a
            file that is not a regular file, or one that is not a watch log, named with the limit.

    Example:
        >>> import pathlib, tempfile
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "stats.jsonl"
        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> with modinspect.watch(model, every=2, log=log) as w:
        ...     for _ in range(4):
        ...         loss = model(torch.randn(8, 4)).pow(2).mean()
        ...         loss.backward()
        ...         optimizer.step()
        ...         optimizer.zero_grad()
        ...         w.step(loss)
        >>> run = modinspect.read_run_log(log)
        >>> run.steps, [m.type for m in run.modules], run.first_bad
        ((2, 4), ['Linear'], None)
    """
    path = Path(path)
    lines = _read(path, max_bytes)
    steps = lines.steps
    at = [{m.name: m for m in s.modules} for s in steps]
    types: dict[str, str] = {}
    for s in steps:  # the order modules were first logged in: execution order, new ones after
        for m in s.modules:
            types.setdefault(m.name, m.type)
    first_bad = next((o for o in map(_origin, steps) if o is not None), None)
    modules = _flag_gradient_flow(
        [_series(name, type_, steps, at) for name, type_ in types.items()]
    )
    notes: list[str] = []
    if lines.truncated:
        notes.append(
            f"the last line of {path} is incomplete (a run still writing?); it was skipped"
        )
    for kind, n in lines.skipped_kinds.items():
        notes.append(f"skipped {n} record(s) of kind {kind!r}, which this modinspect does not know")
    return RunReport(
        path=str(path),
        header=lines.header,
        steps=tuple(s.step for s in steps),
        times=tuple(s.time for s in steps),
        loss=tuple(s.loss for s in steps),
        lr=_lr(steps),
        modules=modules,
        params=_params(steps),
        first_bad=first_bad,
        truncated=lines.truncated,
        notes=tuple(notes),
    )


def _lr(steps: list[StepRecord]) -> tuple[float | None, ...]:
    """The first param group's learning rate at each step; () when no step logged one."""
    lr = tuple(dict(s.optimizer[0].values).get("lr") if s.optimizer else None for s in steps)
    return lr if any(s.optimizer for s in steps) else ()


def histogram_steps(report: RunReport, requested: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The steps to show histograms at: `requested` (each must be logged), or the first, middle and last."""
    from modinspect.errors import UsageError

    if requested is None:
        steps = report.steps
        return tuple(dict.fromkeys((steps[0], steps[len(steps) // 2], steps[-1])))
    logged = set(report.steps)
    missing = [s for s in requested if s not in logged]
    if missing:
        shown = ", ".join(str(s) for s in report.steps[:3]) + (
            f" … {report.steps[-1]}" if len(report.steps) > 3 else ""
        )
        raise UsageError(
            f"--steps {missing[0]}: {report.path} has no record at step {missing[0]} "
            f"(logged steps: {shown}, every {report.header.every})"
        )
    return tuple(dict.fromkeys(requested))
