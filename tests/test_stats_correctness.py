"""Regression tests for the correctness defects of issue 11: each one failed before its fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from modinspect.analysis.stats import StatsOptions, collect_stats
from modinspect.report import ModuleStats, StatsReport


def run(model: nn.Module, *batches: Any, **options: Any) -> StatsReport:
    prepared = [((b,) if isinstance(b, torch.Tensor) else tuple(b), {}) for b in batches]
    return collect_stats(model, prepared, options=StatsOptions(**options))


def row(report: StatsReport, name: str) -> ModuleStats:
    return next(m for m in report.modules if m.name == name)


class ConvBnRelu(nn.Module):
    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.bn(self.conv(x))).mean((2, 3)))


def retained_grads(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, float]:
    """‖∇out‖ of each named module by retain_grad on an out-of-place twin: the ground truth."""
    twin = copy.deepcopy(model).eval()
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    kept: dict[str, torch.Tensor] = {}
    modules = dict(twin.named_modules())
    for name in names:
        def keep(_m: nn.Module, _i: Any, o: torch.Tensor, name: str = name) -> None:
            o.retain_grad()
            kept[name] = o
        modules[name].register_forward_hook(keep)
    twin(x).sum().backward()
    return {n: float(t.grad.norm()) for n, t in kept.items() if t.grad is not None}


def test_inplace_relu_gets_its_own_gradient_not_its_inputs() -> None:
    model = ConvBnRelu(inplace=True)
    x = torch.randn(2, 3, 6, 6)
    truth = retained_grads(model, x, ["conv", "bn", "relu"])
    assert truth["relu"] != pytest.approx(truth["bn"], rel=1e-2)  # the two differ: the test can tell them apart
    report = run(model, x)
    for name in ("conv", "bn", "relu"):
        assert row(report, name).grad_norm == pytest.approx(truth[name], rel=1e-5), name
