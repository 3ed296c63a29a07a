"""SmallCNN with a 5-class head: `modinspect load heads.py:five small_cnn.pth --skip-mismatched`."""

from __future__ import annotations

import torch

from models import SmallCNN


def five() -> SmallCNN:
    torch.manual_seed(1)
    return SmallCNN(num_classes=5).eval()
