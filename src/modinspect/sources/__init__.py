"""Readers: open a checkpoint file or directory as a lazy view of its tensors (and its nn.Module, when it has
one), through the dispatch tables in `sources.dispatch`.

    open_path(Path("model.safetensors"), "model.safetensors", OpenOptions())   # header only

Entry points, the [tool.modinspect] table and --weights are `modinspect.run.source.open_source`'s: loading
weights runs the model's code, which is the run layer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modinspect.errors import UsageError
from modinspect.sources.base import ModuleInfo, Source, TensorInfo
from modinspect.sources.dispatch import OpenOptions, open_path

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModuleInfo", "OpenOptions", "Source", "TensorInfo", "model_of", "open_path"]


def model_of(source: Source, needs: str) -> nn.Module:
    """The source's live nn.Module, or the UsageError that says how to get one; `needs` names who asks."""
    if source.module is not None:
        return source.module
    if source.format == "torchscript":
        raise UsageError(
            f"{needs} needs the live module of {source.label}, a TorchScript archive, which only torch.jit.load "
            "builds, and that runs the archive's code; pass --unsafe-pickle only if you trust the file"
        )
    raise UsageError(
        f"{needs} needs a SOURCE that builds a model (an entry point or TorchScript); {source.label} is a "
        "checkpoint: inspect it directly, or pair it with an entry point"
    )
