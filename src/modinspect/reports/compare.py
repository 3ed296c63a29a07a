"""Two watch logs side by side (`modinspect report A.jsonl B.jsonl`): both runs, and each module's last values."""

from __future__ import annotations

from dataclasses import dataclass, field

from modinspect.reports import RunReport, short_repr


@dataclass(frozen=True)
class ModulePair:
    """One module in run A and run B: its last logged std and ‖∇out‖ in each (None: absent or not finite).

    `bad_a`/`bad_b`: the module's output or gradient held a NaN/Inf at that run's last logged step.
    """

    name: str
    type: str
    in_a: bool
    in_b: bool
    std_a: float | None
    std_b: float | None
    grad_norm_a: float | None
    grad_norm_b: float | None
    bad_a: bool
    bad_b: bool


@dataclass(frozen=True)
class RunComparison:
    """Runs A and B as `read_run_log` reads them, and their modules paired by name (A's order, then B's own)."""

    a: RunReport = field(repr=False)
    b: RunReport = field(repr=False)
    modules: tuple[ModulePair, ...] = field(repr=False)

    __repr__ = short_repr
