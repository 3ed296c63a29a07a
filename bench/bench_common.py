"""Shared by the benchmarks: their common options, inputs built in a child process, and each contender run in
its own process for its wall time and peak RSS.

Peak RSS is `ru_maxrss` from `os.wait4` on the child. Linux folds the parent's peak RSS into a child's
`ru_maxrss` (the child runs in the parent's pages until it calls exec), so a measuring process must stay
small: it builds its big inputs in a child process and never imports torch itself. `parent_peak_mib()`
tells how small it stayed: figures at or below it are that floor, not the contender.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_Key = TypeVar("_Key")


def bench_parser(
    doc: str, smoke_help: str | None = None, runs: int | None = None, make: bool = False
) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as the description, `--smoke`, `--runs` (default `runs`), and
    with `make` the hidden `--make DIR` that `make_in_child` passes."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--runs", type=int, default=runs)
    if make:
        parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)
    return parser


def make_in_child(script: str, folder: Path | str, smoke: bool, quiet: bool = False) -> None:
    """Run `script --make FOLDER [--smoke]`, which builds the benchmark's inputs in FOLDER (its stderr
    dropped when `quiet`). A forked child's peak RSS counts the parent's pages until exec, so the
    measuring parent must stay small: it builds nothing big itself."""
    subprocess.run(
        [sys.executable, script, "--make", str(folder), *(["--smoke"] if smoke else [])],
        check=True,
        stderr=subprocess.DEVNULL if quiet else None,
    )


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


def interleaved(
    contenders: Mapping[_Key, Sequence[str]],
    runs: int,
    warm: bool = False,
    ok_codes: tuple[int, ...] = (0,),
    capture: bool = False,
) -> dict[_Key, list[ProcessRun]]:
    """Every contender once per run, run by run (so a busy spell hits all of them), after one unrecorded
    round when `warm` (page cache, imports)."""
    if warm:
        for cmd in contenders.values():
            run_process(cmd, ok_codes, capture)
    results: dict[_Key, list[ProcessRun]] = {k: [] for k in contenders}
    for _ in range(runs):
        for key, cmd in contenders.items():
            results[key].append(run_process(cmd, ok_codes, capture))
    return results


def walls_and_rss(
    results: Mapping[_Key, Sequence[ProcessRun]],
) -> tuple[dict[_Key, list[float]], dict[_Key, list[float]]]:
    """Each contender's wall seconds and peak RSS MiB, run by run."""
    walls = {k: [r.wall for r in v] for k, v in results.items()}
    rss = {k: [r.rss_mib for r in v] for k, v in results.items()}
    return walls, rss


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
