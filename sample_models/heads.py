"""SmallCNN with a 5-class head: `modinspect load heads.py:five small_cnn.pth --skip-mismatched`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch


def _models() -> Any:
    """The sibling models.py, by path: another module named `models` may already be imported."""
    spec = importlib.util.spec_from_file_location(
        "sample_models_models", Path(__file__).with_name("models.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def five() -> torch.nn.Module:
    torch.manual_seed(1)
    return _models().SmallCNN(num_classes=5).eval()
