"""Directories that are more than their weights: DCP checkpoints, PEFT adapters, Hugging Face model dirs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modinspect.errors import UnknownFormatError
from modinspect.sources.base import Source
from modinspect.sources.dispatch import OpenOptions


def open_special_dir(path: Path, label: str, options: OpenOptions) -> Source | None:
    """The reader for `path` when its marker file says which (.metadata, adapter_config.json, config.json)."""
    if (path / ".metadata").is_file():
        from modinspect.sources.dcp import DcpSource

        return DcpSource(path, label, options)
    if (path / "adapter_config.json").is_file():
        from modinspect.sources.peft_adapter import PeftAdapterSource

        return PeftAdapterSource(path, label, options)
    if (path / "config.json").is_file():
        from modinspect.sources.dispatch import open_path
        from modinspect.sources.hf_dir import open_hf_dir

        try:
            weights: Source | None = open_path(path, label, replace(options, plain_dir=True))
            missing = None
        except UnknownFormatError as exc:  # a config alone still describes the model
            weights, missing = None, exc
        return open_hf_dir(path, label, weights, options.model_weights, missing,  # type: ignore[arg-type]
                           options.max_layers)
    return None
