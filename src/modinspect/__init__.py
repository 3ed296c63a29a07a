"""modinspect: look inside PyTorch models and checkpoints.

The Python API mirrors the CLI and never prints::

    import modinspect
    source = modinspect.open_source("model.safetensors")
    report = modinspect.build_tree(source)
    print(report.totals.params)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "build_tree", "diff_sources", "open_source", "perform_load", "plan_load"]

if TYPE_CHECKING:
    from modinspect.analysis.diff import diff_sources
    from modinspect.analysis.loading import plan_load
    from modinspect.analysis.tree import build_tree
    from modinspect.apply import perform_load
    from modinspect.sources import open_source

# name -> module that defines it; imported on first use so that `import modinspect` stays cheap.
_LAZY = {
    "open_source": "modinspect.sources",
    "build_tree": "modinspect.analysis.tree",
    "diff_sources": "modinspect.analysis.diff",
    "plan_load": "modinspect.analysis.loading",
    "perform_load": "modinspect.apply",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modinspect' has no attribute {name!r}")
