"""doctor's checks on a checkpoint read without the model's code: pure functions over a Source's tensors.

Tensors are read one at a time and reduced to a few numbers (a fingerprint for the tied-copy check), so
memory stays at one tensor whatever the checkpoint's size.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modinspect import dtypes
from modinspect.reports.doctor import CATALOG, Finding, Location, Severity

if TYPE_CHECKING:
    import torch

    from modinspect.sources.base import Source

FP16_MAX = 65504.0
# Quantized layouts keep a float scale beside an integer or float8 weight on purpose.
QUANT_NAME = re.compile(r"(scale|absmax|quant|zeros|g_idx|zero_point)", re.IGNORECASE)
MIN_TIED_NUMEL = (
    64  # equal small tensors (norm weights of ones) are equal by construction, not copies
)


@dataclass(frozen=True)
class _Seen:
    name: str
    storage: str | None
    fingerprint: tuple[object, ...]


def _finding(
    check: str, severity: Severity, name: str, message: str, attribute: bool = True
) -> Finding:
    module, _, attr = name.rpartition(".")
    where = Location(module, attr) if attribute else Location(name)
    return Finding(check, severity, where, message, CATALOG[check].fix)


def checkpoint_findings(source: Source) -> tuple[list[Finding], list[str]]:
    """The value checks on every stored tensor: NaN/Inf, constant matrices, BatchNorm statistics, tied copies,
    mixed dtypes in one module, float16 near overflow."""
    import torch

    findings: list[Finding] = []
    notes: list[str] = []
    seen: list[_Seen] = []
    bn_values: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for info in source.tensors:
        name = info.name
        leaf = name.rpartition(".")[2]
        if leaf in ("running_mean", "running_var", "num_batches_tracked"):
            bn_values[name.rpartition(".")[0]][leaf] = source.read_tensor(name)
            if leaf == "num_batches_tracked":
                continue
        t = source.read_tensor(name)
        if not t.is_floating_point() or t.numel() == 0:
            continue
        lo, hi = (float(v) for v in torch.aminmax(t.detach().reshape(-1)))
        findings += _value_findings(name, t, lo, hi)
        if (
            sum(d > 1 for d in t.shape) >= 2
            and t.numel() >= MIN_TIED_NUMEL
            and math.isfinite(lo + hi)
        ):
            seen.append(_Seen(name, info.storage, _fingerprint(t, lo, hi)))
    findings += _batchnorm_findings(bn_values)
    findings += _tied_findings(source, seen)
    findings += _dtype_findings(source)
    return findings, notes


def _value_findings(name: str, t: torch.Tensor, lo: float, hi: float) -> list[Finding]:
    """NaN/Inf, a constant matrix, float16 near its largest value: from the tensor's min and max (one pass)."""
    import torch

    out = []
    if not (math.isfinite(lo) and math.isfinite(hi)):
        x = t.detach()
        nans = int(torch.isnan(x).sum())
        bad = int((~torch.isfinite(x)).sum())
        out.append(
            _finding(
                "nonfinite-weights",
                "error",
                name,
                f"{name} holds {nans:,} NaN and {bad - nans:,} Inf value(s) of {x.numel():,}",
            )
        )
        return out
    if lo == hi and sum(d > 1 for d in t.shape) >= 2 and not QUANT_NAME.search(name):
        out.append(
            _finding(
                "constant-tensor",
                "warning",
                name,
                f"{name} {tuple(t.shape)} is {lo:g} everywhere: every output unit of the layer computes "
                "the same thing",
            )
        )
    peak = max(abs(lo), abs(hi))
    if t.dtype == torch.float16 and peak >= FP16_MAX / 2:
        out.append(
            _finding(
                "fp16-near-overflow",
                "warning",
                name,
                f"{name} (float16) reaches {peak:,.0f}, within a factor 2 of float16's largest "
                "value 65,504: doubling it gives Inf",
            )
        )
    return out


def _batchnorm_findings(groups: dict[str, dict[str, torch.Tensor]]) -> list[Finding]:
    out = []
    for module, stats in groups.items():
        var, mean, count = (
            stats.get("running_var"),
            stats.get("running_mean"),
            stats.get("num_batches_tracked"),
        )
        if var is None or mean is None:
            continue
        prefix = f"{module}." if module else ""
        low = int((var <= 0).sum())
        if low:
            out.append(
                _finding(
                    "batchnorm-stats-untrained",
                    "error",
                    prefix + "running_var",
                    f"{prefix}running_var has {low} value(s) <= 0: eval mode divides by the square root "
                    "of a non-positive variance (NaN)",
                )
            )
        elif (
            count is not None
            and count.numel() == 1
            and int(count) == 0
            and not bool(mean.any())
            and bool((var == 1).all())
        ):
            out.append(
                _finding(
                    "batchnorm-stats-untrained",
                    "warning",
                    prefix + "num_batches_tracked",
                    f"{prefix}num_batches_tracked is 0 with running mean 0 and variance 1: the "
                    "statistics were never updated, so eval mode normalises nothing",
                )
            )
    return out


def _fingerprint(t: torch.Tensor, lo: float, hi: float) -> tuple[object, ...]:
    """Equal tensors have equal fingerprints (shape, dtype, sum, min, max, first and last element)."""
    import torch

    flat = t.detach().reshape(-1)
    return (
        tuple(t.shape),
        str(t.dtype),
        float(torch.sum(flat, dtype=torch.float64)),
        lo,
        hi,
        float(flat[0]),
        float(flat[-1]),
    )


def _tied_findings(source: Source, seen: list[_Seen]) -> list[Finding]:
    import torch

    groups: dict[tuple[object, ...], list[_Seen]] = defaultdict(list)
    for s in seen:
        groups[s.fingerprint].append(s)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        first = members[0]
        for other in members[1:]:
            if first.storage is not None and other.storage == first.storage:
                continue  # one storage: the tie is kept
            if torch.equal(source.read_tensor(first.name), source.read_tensor(other.name)):
                out.append(
                    _finding(
                        "tied-weights-stored-twice",
                        "info",
                        other.name,
                        f"{other.name} is an equal copy of {first.name} in its own storage: tied "
                        "weights saved twice",
                    )
                )
    return out


def _dtype_findings(source: Source) -> list[Finding]:
    floating = dtypes.COMPUTE_FLOATS
    by_module: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for info in source.tensors:
        if info.dtype in floating and not QUANT_NAME.search(info.name):
            by_module[info.name.rpartition(".")[0]][info.dtype].append(info.name.rpartition(".")[2])
    out = []
    for module, found in by_module.items():
        if len(found) > 1:
            listed = ", ".join(
                f"{', '.join(names)} {dtype}" for dtype, names in sorted(found.items())
            )
            out.append(
                _finding(
                    "mixed-dtypes-in-module",
                    "warning",
                    module,
                    f"{module or '<root>'} stores its tensors in {len(found)} dtypes: {listed}",
                    attribute=False,
                )
            )
    return out
