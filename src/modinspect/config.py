"""Discovery of the `[tool.modinspect]` table in the nearest pyproject.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modinspect.errors import ConfigError

KNOWN_KEYS = {"model", "weights", "input", "input_shape", "input_dtype", "device", "dtype"}


@dataclass(frozen=True)
class ProjectConfig:
    """The [tool.modinspect] table, with paths resolved against the pyproject's folder."""

    path: Path
    model: str
    weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent


def find_pyproject(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path | None = None) -> ProjectConfig:
    """Read [tool.modinspect] from the nearest pyproject.toml at or above `start` (default: cwd)."""
    start = (start or Path.cwd()).resolve()
    pyproject = find_pyproject(start)
    if pyproject is None:
        raise ConfigError(
            f"no SOURCE given and no pyproject.toml found in {start} or above; "
            'pass a SOURCE or add a [tool.modinspect] table with model = "file.py:NAME"'
        )
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{pyproject} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {pyproject}: {exc.strerror or exc}") from None
    tool = data.get("tool", {})
    table = tool.get("modinspect") if isinstance(tool, dict) else None
    if table is None:
        raise ConfigError(
            f"no SOURCE given and {pyproject} has no [tool.modinspect] table; "
            'pass a SOURCE or add one with model = "file.py:NAME"'
        )
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.modinspect] in {pyproject} must be a table")
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"[tool.modinspect] in {pyproject} has unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(KNOWN_KEYS))}"
        )
    model = table.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(
            f'[tool.modinspect] in {pyproject} needs model = "file.py:NAME" (a string)'
        )
    weights = table.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise ConfigError(f"[tool.modinspect] weights in {pyproject} must be a string")
    extra = {k: v for k, v in table.items() if k not in ("model", "weights")}
    return ProjectConfig(path=pyproject, model=model, weights=weights, extra=extra)
