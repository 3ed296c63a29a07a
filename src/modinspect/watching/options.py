"""`watch`'s options, validated once: every user error is one UsageError line before any hook is registered."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modinspect.errors import UsageError
from modinspect.run import wrappers

if TYPE_CHECKING:
    from torch import nn

ON_NONFINITE = ("warn", "raise", "breakpoint", "log")
MODES = ("sentinel", "window")


@dataclass(frozen=True)
class WatchOptions:
    """What `watch(...)` was asked to do, checked."""

    every: int  # steps per log record
    mode: str  # one of MODES
    on_nonfinite: str  # one of ON_NONFINITE
    pattern: str | None  # the `modules=` glob
    names: tuple[
        str, ...
    ]  # the hooked modules' names, as the user wrote the model (wrappers left out)
    sample: float | None
    histogram: bool
    save_batch: Path | None
    overwrite: bool
    training_only: bool


def watch_options(
    model: nn.Module,
    *,
    every: int,
    modules: str | None,
    sample: float | None,
    on_nonfinite: str,
    save_batch: str | Path | None,
    histogram: bool,
    overwrite: bool,
    training_only: bool,
    mode: str,
) -> tuple[WatchOptions, list[nn.Module]]:
    """The checked options and the modules to hook, or a UsageError naming the first bad argument."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        raise UsageError("TorchScript modules take no Python hooks; watch the Python model instead")
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"watch needs a torch.nn.Module, not {type(model).__name__}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"every must be a positive number of steps, not {every!r}")
    if on_nonfinite not in ON_NONFINITE:
        raise UsageError(
            f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}, not {on_nonfinite!r}"
        )
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if sample is not None and not 0 < sample <= 1:
        raise UsageError(f"sample must be a fraction in (0, 1], not {sample!r}")
    # Names as the user wrote the model: through DDP / FSDP / torch.compile / checkpoint wrappers.
    named = [
        (n, m)
        for n, m in wrappers.named_modules(model)
        if modules is None or fnmatch.fnmatchcase(n, modules) or n == modules
    ]
    if not named:
        raise UsageError(f"modules={modules!r} matches no module")
    batch_path = Path(save_batch) if save_batch is not None else None
    if batch_path is not None:
        from modinspect.files import check_writable

        if batch_path.exists() and not batch_path.is_dir() and not overwrite:
            # A library call: the hint is the keyword, not the CLI's --force.
            raise UsageError(f"save_batch {batch_path} exists; pass overwrite=True to replace it")
        check_writable(batch_path, overwrite)
    options = WatchOptions(
        every=every,
        mode=mode,
        on_nonfinite=on_nonfinite,
        pattern=modules,
        names=tuple(n for n, _ in named),
        sample=sample,
        histogram=histogram,
        save_batch=batch_path,
        overwrite=overwrite,
        training_only=training_only,
    )
    return options, [m for _, m in named]
