"""The errors a user can cause. Each carries the one line the CLI prints before exiting with 2."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modinspect.reports import NonfiniteOrigin


class ModinspectError(Exception):
    """A user-facing error: bad input, not a bug. `str(err)` is the line shown on stderr."""


class SourceNotFoundError(ModinspectError):
    """The SOURCE path does not exist or cannot be read."""


class UnknownFormatError(ModinspectError):
    """The SOURCE exists but is not a format modinspect reads."""


class CorruptFileError(ModinspectError):
    """The file claims a known format but breaks its rules (truncated, bad offsets, bad header)."""


class UnsafePickleError(ModinspectError):
    """The checkpoint needs globals outside the weights-only allowlist to unpickle."""

    def __init__(self, path: str, globals_: list[str]) -> None:
        self.path = path
        self.globals = sorted(set(globals_))
        shown = ", ".join(f"'{g}'" for g in self.globals[:6])
        more = f" and {len(self.globals) - 6} more" if len(self.globals) > 6 else ""
        super().__init__(
            f"{path} needs {shown}{more} to unpickle, which could run arbitrary code; "
            "pass --unsafe-pickle only if you trust the file"
        )


class EntryPointError(ModinspectError):
    """A `file.py:NAME` / `package.module:NAME` entry point could not produce an nn.Module."""


class ConfigError(ModinspectError):
    """The [tool.modinspect] table is missing or malformed."""


class WeightsMismatchError(ModinspectError):
    """--weights did not match the model under strict loading."""


class UsageError(ModinspectError):
    """Options that do not make sense together, or a SOURCE of the wrong kind for the command."""


class ModelTooLargeError(UsageError):
    """A config.json asks for more layers than --max-layers allows to build (a refusal, not a fallback)."""


class NonFiniteError(ModinspectError):
    """`watch(on_nonfinite="raise")` saw the first NaN/Inf: `step` and `origin` (a NonfiniteOrigin, or None) say where."""

    def __init__(self, step: int, origin: NonfiniteOrigin | None, message: str) -> None:
        self.step = step
        self.origin = origin
        super().__init__(message)
