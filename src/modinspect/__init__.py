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

__all__ = ["__version__", "build_tree", "open_source"]

if TYPE_CHECKING:
    from modinspect.analysis.tree import build_tree
    from modinspect.sources import open_source


def __getattr__(name: str) -> Any:
    # Lazy so that `import modinspect` stays cheap for the CLI's --help.
    if name == "open_source":
        from modinspect.sources import open_source

        return open_source
    if name == "build_tree":
        from modinspect.analysis.tree import build_tree

        return build_tree
    raise AttributeError(f"module 'modinspect' has no attribute {name!r}")
