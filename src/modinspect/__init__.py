"""modinspect: look inside PyTorch models and checkpoints.

The Python API mirrors the CLI and never prints::

    import modinspect
    source = modinspect.open_source("model.safetensors")
    report = modinspect.build_tree(source)
    print(report.totals.params)
    shapes = modinspect.measure_shapes(model, ((torch.randn(1, 3, 224, 224),), {}))  # on the meta device
    print(shapes.totals.macs)

Every name in `__all__` is imported on first use, so `import modinspect` imports neither torch nor rich.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from modinspect.version import __version__

if TYPE_CHECKING:
    from modinspect.analysis.diff import DiffOptions, diff_sources
    from modinspect.analysis.loading import plan_load
    from modinspect.analysis.tree import build_tree
    from modinspect.commands.diff import DiffRequest, run_diff
    from modinspect.commands.doctor import DoctorRequest, run_doctor
    from modinspect.commands.load import (
        LoadRequest,
        MismatchedShapesError,
        perform_load,
        run_load,
    )
    from modinspect.commands.report import ReportRequest, run_comparison, run_report
    from modinspect.commands.stats import StatsRequest, StatsRun, prepare_stats, run_stats
    from modinspect.commands.tree import TreeRequest, run_tree
    from modinspect.errors import (
        ConfigError,
        CorruptFileError,
        EntryPointError,
        ModelTooLargeError,
        ModinspectError,
        NonFiniteError,
        SourceNotFoundError,
        UnknownFormatError,
        UnsafePickleError,
        UsageError,
        WeightsMismatchError,
    )
    from modinspect.names import KeyMap
    from modinspect.render.registry import show, to_json
    from modinspect.reports import (
        DiffReport,
        LoadPlan,
        LoadReport,
        ModuleStats,
        NonfiniteOrigin,
        RunReport,
        ShapesReport,
        StatsReport,
        Totals,
        TreeReport,
        WatchReport,
    )
    from modinspect.reports.compare import ModulePair, RunComparison
    from modinspect.reports.doctor import DoctorReport, Finding, Location
    from modinspect.run.collector import StatsOptions
    from modinspect.run.doctor import doctor
    from modinspect.run.inputs import InputSpec
    from modinspect.run.shapes import add_layers, measure_shapes
    from modinspect.run.source import open_source
    from modinspect.run.stats import ForwardError, collect_stats
    from modinspect.sources.base import ModuleInfo, Source, TensorInfo
    from modinspect.watching.compare import compare_runs
    from modinspect.watching.runlog import read_run_log
    from modinspect.watching.watch import NonFiniteWarning, Watch, watch

# module -> the public names it defines; each is imported on first use so that `import modinspect` stays cheap.
_MODULES: dict[str, tuple[str, ...]] = {
    # functions: one per command, and the engine's steps
    "modinspect.run.source": ("open_source",),
    "modinspect.analysis.tree": ("build_tree",),
    "modinspect.commands.tree": ("run_tree", "TreeRequest"),
    "modinspect.run.shapes": ("add_layers", "measure_shapes"),
    "modinspect.analysis.diff": ("diff_sources", "DiffOptions"),
    "modinspect.commands.diff": ("run_diff", "DiffRequest"),
    "modinspect.analysis.loading": ("plan_load",),
    "modinspect.commands.load": (
        "perform_load",
        "run_load",
        "LoadRequest",
        "MismatchedShapesError",
    ),
    "modinspect.run.stats": ("collect_stats", "ForwardError"),
    "modinspect.commands.stats": ("run_stats", "prepare_stats", "StatsRequest", "StatsRun"),
    "modinspect.watching.watch": ("watch", "Watch", "NonFiniteWarning"),
    "modinspect.watching.runlog": ("read_run_log",),
    "modinspect.watching.compare": ("compare_runs",),
    "modinspect.commands.report": ("run_report", "run_comparison", "ReportRequest"),
    "modinspect.run.doctor": ("doctor",),
    "modinspect.commands.doctor": ("run_doctor", "DoctorRequest"),
    # any report as the CLI prints it (show) and its --json document (to_json)
    "modinspect.render.registry": ("show", "to_json"),
    # what the functions take
    "modinspect.sources.base": ("Source", "TensorInfo", "ModuleInfo"),
    "modinspect.run.collector": ("StatsOptions",),
    "modinspect.run.inputs": ("InputSpec",),
    "modinspect.names": ("KeyMap",),
    # what they return
    "modinspect.reports": (
        "TreeReport",
        "Totals",
        "ShapesReport",
        "DiffReport",
        "LoadPlan",
        "LoadReport",
        "StatsReport",
        "ModuleStats",
        "NonfiniteOrigin",
        "WatchReport",
        "RunReport",
    ),
    "modinspect.reports.compare": ("RunComparison", "ModulePair"),
    "modinspect.reports.doctor": ("DoctorReport", "Finding", "Location"),
    # what they raise: str(error) is the one line the CLI prints
    "modinspect.errors": (
        "ModinspectError",
        "SourceNotFoundError",
        "UnknownFormatError",
        "CorruptFileError",
        "UnsafePickleError",
        "EntryPointError",
        "ConfigError",
        "WeightsMismatchError",
        "UsageError",
        "ModelTooLargeError",
        "NonFiniteError",
    ),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "ConfigError",
    "CorruptFileError",
    "DiffOptions",
    "DiffReport",
    "DiffRequest",
    "DoctorReport",
    "DoctorRequest",
    "EntryPointError",
    "Finding",
    "ForwardError",
    "InputSpec",
    "KeyMap",
    "LoadPlan",
    "LoadReport",
    "LoadRequest",
    "Location",
    "MismatchedShapesError",
    "ModelTooLargeError",
    "ModinspectError",
    "ModuleInfo",
    "ModulePair",
    "ModuleStats",
    "NonFiniteError",
    "NonFiniteWarning",
    "NonfiniteOrigin",
    "ReportRequest",
    "RunComparison",
    "RunReport",
    "ShapesReport",
    "Source",
    "SourceNotFoundError",
    "StatsOptions",
    "StatsReport",
    "StatsRequest",
    "StatsRun",
    "TensorInfo",
    "Totals",
    "TreeReport",
    "TreeRequest",
    "UnknownFormatError",
    "UnsafePickleError",
    "UsageError",
    "Watch",
    "WatchReport",
    "WeightsMismatchError",
    "__version__",
    "add_layers",
    "build_tree",
    "collect_stats",
    "compare_runs",
    "diff_sources",
    "doctor",
    "measure_shapes",
    "open_source",
    "perform_load",
    "plan_load",
    "prepare_stats",
    "read_run_log",
    "run_comparison",
    "run_diff",
    "run_doctor",
    "run_load",
    "run_report",
    "run_stats",
    "run_tree",
    "show",
    "to_json",
    "watch",
]


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

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'modinspect' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (what tab completion offers in a notebook), with the module's own attributes."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})
