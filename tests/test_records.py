"""The named records merged over calls, steps and ranks: one `merge()` each, checked against torch's reductions."""

from __future__ import annotations

import math

import pytest
import torch

from modinspect.run.reductions import GradTotals


def totals_of(g: torch.Tensor, seen: bool = True) -> GradTotals:
    finite = g[torch.isfinite(g)].double()
    near = float(g[torch.isfinite(g)].abs().max()) / torch.finfo(torch.float16).max
    return GradTotals(
        float(finite.square().sum()),
        int(torch.isnan(g).sum()),
        int(torch.isinf(g).sum()),
        seen,
        near,
    )


def test_grad_totals_merge_equals_the_totals_of_the_concatenation() -> None:
    torch.manual_seed(0)
    parts = [torch.randn(50), torch.randn(30) * 4, torch.randn(20)]
    parts[1][3] = math.nan
    parts[2][:2] = math.inf
    merged = GradTotals()
    for p in parts:
        merged.merge(totals_of(p))
    whole = totals_of(torch.cat(parts))
    assert merged.squares == pytest.approx(whole.squares, rel=1e-12)
    assert (merged.nan, merged.inf, merged.seen) == (1, 2, True)
    assert merged.near == pytest.approx(whole.near, rel=1e-12)


def test_grad_totals_merge_scales_squares_and_keeps_seen() -> None:
    a = GradTotals(4.0, 1, 0, False, 0.1)
    a.merge(
        GradTotals(8.0, 0, 3, True, 0.5), scale=0.25
    )  # two ranks' averaged gradients: 1 / world²
    assert a == GradTotals(6.0, 1, 3, True, 0.5)
    a.merge(GradTotals())
    assert a == GradTotals(6.0, 1, 3, True, 0.5)
