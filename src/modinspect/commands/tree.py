"""`modinspect tree` as a library call: open the SOURCE, build its tree, and the meta forward's shapes when asked.

    report = run_tree(TreeRequest("models.py:resnet18", meta=True, input_shapes=((1, 3, 224, 224),)))
    report.shapes.totals.macs

The CLI is a thin shell over `run_tree`: it parses the options into a TreeRequest and prints the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modinspect.commands.feedback import Announce, Phase, Warn, quiet_phase
from modinspect.errors import UsageError
from modinspect.reports import TreeReport

if TYPE_CHECKING:
    from torch import nn

    from modinspect.sources.base import Source

__all__ = ["TreeRequest", "run_tree"]


@dataclass(frozen=True)
class TreeRequest:
    """What `modinspect tree` is asked to do; every field has the CLI's default.

    Attributes:
        source: a SOURCE (a path, an entry point, ...), a live nn.Module, or None for the [tool.modinspect]
            default.
        weights: a checkpoint to load into the model SOURCE builds (`--weights`).
        meta: build an entry point's model on the meta device.
        strict: with `weights`, fail on a key that does not match instead of loading what fits.
        unsafe_pickle: let pickles call any global (runs the file's code: only for a file you trust).
        allow_globals: globals a pickle may call beyond the allowlist, as `module.name`.
        max_pickle_size: the largest pickle read, in bytes (None: 256 MiB).
        max_layers: a Hugging Face config.json's layers built at most (None: 512).
        depth: show at most this many levels (None: all).
        pattern: show only the modules and tensors matching this glob.
        expand: do not fold runs of identical blocks.
        shapes: run a forward pass on the meta device (implied by `input_shapes` and `input_file`).
        input_file: the forward's input: a .pt (weights-only) or .safetensors file.
        input_shapes: shapes of random positional inputs.
        input_dtype: the random inputs' dtype; None: int64 with an nn.Embedding, else the weights' float dtype.
        hf_names: show a GGUF file's tensors under the Hugging Face names of the checkpoint it was
            converted from (`--hf-names`; its general.architecture must be one of gguf_names.ARCHITECTURES).
    """

    source: str | Path | nn.Module | None = None
    weights: str | None = None
    meta: bool = False
    strict: bool = True
    unsafe_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    max_pickle_size: int | None = None
    max_layers: int | None = None
    depth: int | None = None
    pattern: str | None = None
    expand: bool = False
    shapes: bool = False
    input_file: Path | None = None
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_dtype: str | None = None
    hf_names: bool = False

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
    """Open SOURCE, build its tree and, when asked, add the meta forward's shapes: what `modinspect tree` runs.

    Args:
        request: a TreeRequest (every field has the CLI's default).
        announce: hears notes while the source opens (an entry point about to be imported).
        warn: gets the source's warnings once it is open.
        phase: wraps the two slow steps (opening, the forward pass) with their description.

    Returns:
        The TreeReport of `build_tree`, with `add_layers`' extra_repr()s and, when asked, `shapes`.

    Raises:
        ModinspectError: a user error (a SOURCE that does not open, an input the forward cannot take).

    Example:
        >>> request = modinspect.TreeRequest(
        ...     "sample_models/models.py:small_cnn", meta=True, input_shapes=((1, 3, 32, 32),)
        ... )
        >>> report = modinspect.run_tree(request)
        >>> report.totals.params, report.shapes.totals.macs
        (1610, 1400992)
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
        src = gguf_view(src, request.hf_names)
        if warn is not None:
            warn(src.warnings)
        report = build_tree(
            src, depth=request.depth, pattern=request.pattern, expand=request.expand
        )
        if not wanted:
            return add_layers(report, src, None, None)
        with phase("running the forward pass on the meta device…"):
            return add_layers(report, src, spec, project_defaults(request.source))


def gguf_view(src: Source, hf_names: bool) -> Source:
    """`src` under Hugging Face names with `hf_names` (a UsageError unless it is a GGUF file of a known
    architecture); without it, a GGUF file of a known architecture gets a note saying the flag exists."""
    from modinspect.sources.gguf_names import ARCHITECTURES, with_hf_names

    if hf_names:
        return with_hf_names(src)
    if src.format == "gguf" and src.metadata.get("general.architecture") in ARCHITECTURES:
        src.notes.append("--hf-names shows these tensors under Hugging Face names")
    return src
