"""Open any SOURCE as a lazy view of its tensors (and its nn.Module, when it has one).

    open_source("model.safetensors")          # header only
    open_source("ckpt.pt")                    # pickle only, through the weights-only gate
    open_source("hf_dir/")                    # sharded index or single file
    open_source("models.py:build", weights="ckpt.pt")
    open_source(None)                         # [tool.modinspect] of the nearest pyproject.toml
"""

from __future__ import annotations

from pathlib import Path

from modinspect.errors import UsageError
from modinspect.sources.base import ModuleInfo, Source, TensorInfo
from modinspect.sources.detect import OpenOptions, open_path
from modinspect.sources.entrypoint import looks_like_entry_point, open_entry_point

__all__ = ["ModuleInfo", "Source", "TensorInfo", "open_source"]


def open_source(
    spec: str | None,
    *,
    weights: str | None = None,
    meta: bool = False,
    unsafe_pickle: bool = False,
    strict: bool = True,
    base: Path | None = None,
    config_weights: bool = True,
    model_weights: str = "header",
) -> Source:
    """Open SOURCE `spec`; None means the [tool.modinspect] default. Paths are relative to `base` (cwd).

    With `config_weights=False` the default model comes without the table's `weights` (for `load`).
    A Hugging Face directory (config.json) builds its model on the meta device with the weights header-only
    (`model_weights="header"`), or for real: randomly initialised ("init") or from its weights ("pretrained").
    """
    options = OpenOptions(unsafe_pickle=unsafe_pickle, model_weights=model_weights)
    base = base or Path.cwd()
    weights_base = base  # a --weights given by the caller is relative to base, like `spec`
    if spec is None:
        from modinspect.config import load_config

        config = load_config(base)
        spec, base = config.model, config.root
        if weights is None and config.weights is not None and config_weights:
            weights, weights_base = config.weights, config.root
    if looks_like_entry_point(spec):
        source: Source = open_entry_point(spec, base, meta=meta)
    else:
        path = Path(spec)
        source = open_path(path if path.is_absolute() else base / path, spec, options)
    if weights is not None:
        if source.module is None:
            raise UsageError(
                f"--weights needs a SOURCE that builds a model (an entry point or TorchScript); {spec} is a "
                "checkpoint: inspect it directly, or pair it with an entry point"
            )
        from modinspect.sources.weights import apply_weights

        wpath = Path(weights)
        checkpoint = open_path(wpath if wpath.is_absolute() else weights_base / wpath, weights, options)
        source.warnings.extend(checkpoint.warnings)  # --unsafe-pickle ran the checkpoint's code: say so
        with checkpoint:
            apply_weights(source, checkpoint, strict=strict)
    return source
