"""Open any SOURCE for the commands: a checkpoint, an entry point, a live module or the [tool.modinspect]
table, with `--weights` loaded into its model. Above analysis because loading weights plans the load
(`analysis.loading`) and runs the model's own `load_state_dict`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from modinspect.errors import UsageError
from modinspect.sources import OpenOptions, Source, model_of, open_path
from modinspect.sources.entrypoint import looks_like_entry_point, open_entry_point
from modinspect.sources.pickle.check import DEFAULT_MAX_PICKLE

if TYPE_CHECKING:
    from torch import nn

__all__ = ["open_source"]


def _open_module(module: nn.Module, weights: str | None, strict: bool) -> Source:
    """A live nn.Module (from a notebook or a training script) as a Source; its tensors stay its own."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise UsageError(
            f"open_source takes a path, an entry point or an nn.Module, not a {type(module).__name__}"
        )
    from modinspect.sources.module import ModuleSource

    source = ModuleSource(module, type(module).__name__, "module")
    if weights is not None:
        from modinspect.run.weights import apply_weights

        with open_path(Path(weights), weights, OpenOptions()) as checkpoint:
            apply_weights(source, checkpoint, strict=strict)
    return source


def open_source(
    spec: str | Path | nn.Module | None,
    *,
    weights: str | None = None,
    meta: bool = False,
    unsafe_pickle: bool = False,
    strict: bool = True,
    base: Path | None = None,
    config_weights: bool = True,
    allow_globals: tuple[str, ...] = (),
    max_pickle_size: int | None = None,
    announce: Callable[[str], None] | None = None,
    model_weights: str = "header",
    max_layers: int | None = None,
) -> Source:
    """Open SOURCE `spec`; None means the [tool.modinspect] default. Paths are relative to `base` (cwd).

    With `config_weights=False` the default model comes without the table's `weights` (for `load`).
    `announce(message)` hears, before it happens, that an entry point named by [tool.modinspect] is
    imported: a cloned repository's pyproject.toml can name any code.
    A Hugging Face directory (config.json) builds its model on the meta device with the weights header-only
    (`model_weights="header"`), or for real: randomly initialised ("init") or from its weights ("pretrained");
    a config asking for more than `max_layers` layers (default 512) is refused before anything is built.
    """
    if spec is not None and not isinstance(spec, str | Path):
        return _open_module(spec, weights, strict)
    if isinstance(spec, Path):
        spec = str(spec)
    options = OpenOptions(
        unsafe_pickle=unsafe_pickle,
        allow_globals=frozenset(allow_globals),
        max_pickle_bytes=max_pickle_size or DEFAULT_MAX_PICKLE,
        model_weights=model_weights,
    )
    if max_layers is not None:
        options = replace(options, max_layers=max_layers)
    base = base or Path.cwd()
    weights_base = base  # a --weights given by the caller is relative to base, like `spec`
    if spec is None:
        from modinspect.config import load_config

        config = load_config(base)
        spec, base = config.model, config.root
        if announce is not None and looks_like_entry_point(spec):
            announce(f"importing {spec}, the model [tool.modinspect] names in {config.path}")
        if weights is None and config.weights is not None and config_weights:
            weights, weights_base = config.weights, config.root
    if looks_like_entry_point(spec):
        source: Source = open_entry_point(spec, base, meta=meta)
    else:
        path = Path(spec)
        source = open_path(path if path.is_absolute() else base / path, spec, options)
    _load_pending(source)
    if weights is not None:
        model_of(source, "--weights")
        from modinspect.run.weights import apply_weights

        wpath = Path(weights)
        checkpoint = open_path(
            wpath if wpath.is_absolute() else weights_base / wpath, weights, options
        )
        source.warnings.extend(
            checkpoint.warnings
        )  # --unsafe-pickle ran the checkpoint's code: say so
        source.would_call.extend(n for n in checkpoint.would_call if n not in source.would_call)
        with checkpoint:
            apply_weights(source, checkpoint, strict=strict)
    return source


def _load_pending(source: Source) -> None:
    """A Hugging Face directory whose pickled weights from_pretrained would torch.load: its reader builds the
    model and leaves the weights, opened through the gate, for this layer to load."""
    from modinspect.sources.module import ModuleSource

    if not isinstance(source, ModuleSource) or source.pending_weights is None:
        return
    from modinspect.run.weights import apply_weights

    pending, source.pending_weights = source.pending_weights, None
    with pending:
        apply_weights(source, pending, strict=False)
