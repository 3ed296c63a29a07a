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
    from modinspect.render.registry import show, to_json
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
    "show": "modinspect.render.registry",  # any report, as the CLI prints it
    "to_json": "modinspect.render.registry",  # any report's --json document
}


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
