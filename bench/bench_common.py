"""Shared by the benchmarks: run one contender in its own process, read its wall time and peak RSS.

Peak RSS is `ru_maxrss` from `os.wait4` on the child. Linux folds the parent's peak RSS into a child's
`ru_maxrss` (the child runs in the parent's pages until it calls exec), so a measuring process must stay
small: it builds its big inputs in a child process and never imports torch itself. `parent_peak_mib()`
tells how small it stayed: figures at or below it are that floor, not the contender.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRun:
    """One finished contender process."""

    wall: float
    rss_mib: float
    stdout: str


def run_process(
    cmd: Sequence[str], ok_codes: tuple[int, ...] = (0,), capture: bool = False
) -> ProcessRun:
    """Run `cmd` to the end: wall seconds, peak RSS in MiB, and its stdout when `capture`."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), stdout=out if capture else subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
        if proc.returncode not in ok_codes:
            err.seek(0)
            raise RuntimeError(
                f"{list(cmd)} exited with {proc.returncode}: {err.read().decode(errors='replace')}"
            )
        out.seek(0)
        text = out.read().decode() if capture else ""
    return ProcessRun(wall=wall, rss_mib=usage.ru_maxrss / 1024, stdout=text)


def modinspect_command() -> list[str]:
    """The console script users run, next to this interpreter; `python -m modinspect` when there is none."""
    script = Path(sys.executable).with_name("modinspect")
    return [str(script)] if script.exists() else [sys.executable, "-m", "modinspect"]


def paired_ratio(values: Sequence[float], bases: Sequence[float]) -> float:
    """Median of per-run ratios: run i of each contender ran back to back, so the ratio holds on a busy machine."""
    return statistics.median(v / b for v, b in zip(values, bases, strict=True))


def spread(values: Sequence[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def parent_peak_mib() -> float:
    """This process's own peak RSS (VmHWM), the floor under every child's ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
