"""modinspect: look inside PyTorch models and checkpoints.

The Python API mirrors the CLI and never prints::

    import modinspect
    source = modinspect.open_source("model.safetensors")
    report = modinspect.build_tree(source)
    print(report.totals.params)
    shapes = modinspect.measure_shapes(model, ((torch.randn(1, 3, 224, 224),), {}))  # on the meta device
    print(shapes.totals.macs)
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from modinspect.version import __version__

__all__ = [
    "DoctorReport",
    "Finding",
    "ModinspectError",
    "NonFiniteError",
    "__version__",
    "add_layers",
    "build_tree",
    "collect_stats",
    "diff_sources",
    "doctor",
    "measure_shapes",
    "open_source",
    "perform_load",
    "plan_load",
    "read_run_log",
    "run_load",
    "run_stats",
    "show",
    "to_json",
    "watch",
]

if TYPE_CHECKING:
    from modinspect.analysis.diff import diff_sources
    from modinspect.analysis.loading import plan_load
    from modinspect.analysis.tree import build_tree
    from modinspect.commands.load import perform_load, run_load
    from modinspect.commands.stats import run_stats
    from modinspect.errors import ModinspectError, NonFiniteError
    from modinspect.reports.doctor import DoctorReport, Finding
    from modinspect.run.doctor import doctor
    from modinspect.run.shapes import add_layers, measure_shapes
    from modinspect.run.source import open_source
    from modinspect.run.stats import collect_stats
    from modinspect.watching.runlog import read_run_log
    from modinspect.watching.watch import watch

# name -> module that defines it; imported on first use so that `import modinspect` stays cheap.
_LAZY = {
    "open_source": "modinspect.run.source",
    "build_tree": "modinspect.analysis.tree",
    "collect_stats": "modinspect.run.stats",
    "diff_sources": "modinspect.analysis.diff",
    "doctor": "modinspect.run.doctor",
    "DoctorReport": "modinspect.reports.doctor",
    "Finding": "modinspect.reports.doctor",
    "plan_load": "modinspect.analysis.loading",
    "perform_load": "modinspect.commands.load",
    "add_layers": "modinspect.run.shapes",
    "measure_shapes": "modinspect.run.shapes",
    "read_run_log": "modinspect.watching.runlog",
    "run_load": "modinspect.commands.load",
    "run_stats": "modinspect.commands.stats",
    "watch": "modinspect.watching.watch",
    "ModinspectError": "modinspect.errors",
    "NonFiniteError": "modinspect.errors",  # what watch(on_nonfinite="raise") raises at the first NaN/Inf
}


def show(report: object, *, width: int | None = None, json: bool = False) -> None:
    """Print a report as the CLI does: its console view (rich, in a notebook too), or its JSON document.

    Args:
        report: what a command returns: a TreeReport, DiffReport, LoadReport, StatsReport, RunReport or
            DoctorReport.
        width: columns to fit; default the terminal's (200 off a terminal, as the CLI's).
        json: print the `--json` document instead.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> modinspect.show(modinspect.build_tree(modinspect.open_source(model)), width=60)
        Sequential  (module, training mode)
        Sequential  40 params  160 B
        ├── 0  Linear  40 params  160 B
        │   ├── weight  [8, 4]  float32  128 B
        │   └── bias  [8]  float32  32 B
        └── 1  ReLU
        <BLANKLINE>
        Parameters     40  trainable 40 · frozen 0
        Buffers         0  persistent 0 · non-persistent 0
        Size        160 B  160 bytes in 2 tensors
        By dtype       40  float32 · 160 B
    """
    from modinspect.render.registry import emit

    emit(report, json, width=width)


def to_json(report: object) -> dict[str, Any]:
    """The report's JSON document: what the CLI's `--json` prints, as a dict.

    Args:
        report: what a command returns (see `show`).

    Returns:
        The document: `schema_version`, `modinspect_version`, then the report's fields.

    Example:
        >>> with modinspect.open_source("sample_models/tiny_lm.safetensors") as src:
        ...     document = modinspect.to_json(modinspect.build_tree(src))
        >>> document["schema_version"], document["totals"]["params"], document["tied"]
        (2, 16032, [['embed.weight', 'lm_head.weight']])
    """
    from modinspect.render.registry import to_json as document

    return document(report)


def _register_ipython() -> None:
    """In a running IPython or Jupyter shell, reports display as their console view."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    if shell is not None and hasattr(shell, "display_formatter"):
        from modinspect.render.registry import register_ipython

        register_ipython(shell)


_register_ipython()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modinspect' has no attribute {name!r}")
