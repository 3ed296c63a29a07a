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
    """Open a SOURCE as a lazy view of its tensors (and its nn.Module, when the source builds one).

    Nothing reads tensor data until `Source.read_tensor` or `Source.iter_tensors` asks; a checkpoint's pickle
    is checked against the weights-only allowlist before anything is unpickled.

    Args:
        spec: a path (a file of any supported format, a Hugging Face or DCP directory), an entry point
            (`file.py:NAME`, `package.module:NAME`), a live nn.Module, or None for the [tool.modinspect] default.
        weights: a checkpoint to load into the model `spec` builds (the CLI's `--weights`).
        meta: build an entry point's model on the meta device (no memory; shapes and names only).
        unsafe_pickle: let pickles call any global (runs the file's code: only for a file you trust).
        strict: with `weights`, fail on a missing, unexpected or mis-shaped key instead of loading what fits.
        base: the folder relative paths are read from (default: the current directory).
        config_weights: with `spec=None`, also load the weights [tool.modinspect] names (off for `load`).
        allow_globals: globals a pickle may call beyond the allowlist, as `module.name`.
        max_pickle_size: the largest pickle read, in bytes (default 256 MiB).
        announce: hears, before it happens, that an entry point named by [tool.modinspect] is imported (a
            cloned repository's pyproject.toml can name any code).
        model_weights: a Hugging Face directory's model: "header" (on the meta device, the weights read
            header-only), "init" (randomly initialised) or "pretrained" (from its weights).
        max_layers: a Hugging Face config asking for more layers is refused before anything is built
            (default 512).

    Returns:
        A Source (a context manager: `with` closes its files): `tensors`, `modules`, `module`, `read_tensor`.

    Raises:
        SourceNotFoundError, UnknownFormatError, CorruptFileError, UnsafePickleError, EntryPointError,
        UsageError: a ModinspectError whose message is the CLI's error line.

    Example:
        >>> with modinspect.open_source("sample_models/tiny_lm.safetensors") as src:
        ...     print(src.format, len(src.tensors), src.info("embed.weight").shape)
        safetensors 22 (100, 32)
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
