"""`modinspect tree` as a library call: open the SOURCE, build its tree, and the meta forward's shapes when asked.

    report = run_tree(TreeRequest("models.py:resnet18", meta=True, input_shapes=((1, 3, 224, 224),)))
    report.shapes.totals.macs

The CLI is a thin shell over `run_tree`: it parses the options into a TreeRequest and prints the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modinspect.commands.feedback import Announce, Phase, Warn, quiet_phase
from modinspect.errors import UsageError
from modinspect.reports import TreeReport

__all__ = ["TreeRequest", "run_tree"]


@dataclass(frozen=True)
class TreeRequest:
    """What `modinspect tree` is asked to do; every field has the CLI's default."""

    source: Any = (
        None  # a SOURCE (path, entry point, ...), a live nn.Module, or None: [tool.modinspect]
    )
    weights: str | None = None  # a checkpoint to load into the model SOURCE builds
    meta: bool = False  # build an entry point's model on the meta device
    strict: bool = True  # --weights must match every key
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None  # a Hugging Face config.json's layers built at most (default 512)
    depth: int | None = None  # show at most this many levels
    pattern: str | None = None  # only modules/tensors matching this glob
    expand: bool = False  # do not collapse runs of identical blocks
    shapes: bool = False  # a forward pass on the meta device (implied by input_shapes / input_file)
    input_file: Path | None = None  # the forward's input: a .pt (weights-only) or .safetensors file
    input_shapes: tuple[tuple[int, ...], ...] = ()  # random positional inputs of these shapes
    input_dtype: str | None = (
        None  # default: int64 with an nn.Embedding, else the weights' float dtype
    )

    @property
    def wants_shapes(self) -> bool:
        """Whether a forward pass is asked for: `shapes`, or an input to run it on."""
        return self.shapes or bool(self.input_shapes) or self.input_file is not None


def run_tree(
    request: TreeRequest,
    announce: Announce | None = None,
    warn: Warn | None = None,
    phase: Phase = quiet_phase,
) -> TreeReport:
    """Open SOURCE, build its tree and, when asked, add the meta forward's shapes; raises ModinspectError.

    `announce` hears notes while the source opens; `warn` gets its warnings once it is open; `phase`
    wraps the two slow steps (opening, the forward pass) with their description.
    """
    from modinspect.analysis.tree import build_tree
    from modinspect.commands.stats import project_defaults
    from modinspect.run.inputs import InputSpec
    from modinspect.run.shapes import add_layers
    from modinspect.run.source import open_source

    wanted = request.wants_shapes
    if request.input_dtype is not None and not wanted:
        raise UsageError("--input-dtype applies to --input-shape or --shapes")
    spec = (
        InputSpec(
            file=request.input_file,
            shapes=request.input_shapes,
            dtype=request.input_dtype or "",
        )
        if wanted
        else None
    )
    with phase("opening the source…"):
        src = open_source(
            request.source,
            weights=request.weights,
            meta=request.meta,
            unsafe_pickle=request.unsafe_pickle,
            strict=request.strict,
            announce=announce,
            allow_globals=request.allow_globals,
            max_pickle_size=request.max_pickle_size,
            max_layers=request.max_layers,
        )
    with src:
        if warn is not None:
            warn(src.warnings)
        report = build_tree(
            src, depth=request.depth, pattern=request.pattern, expand=request.expand
        )
        if not wanted:
            return add_layers(report, src, None, None)
        with phase("running the forward pass on the meta device…"):
            return add_layers(report, src, spec, project_defaults(request.source))
