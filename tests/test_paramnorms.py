"""watch's parameter norms: the fused one-pass ‖w‖, ‖w before‖, ‖Δw‖ against torch's float64 norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modinspect.watching.paramnorms import UPDATE_CHUNK, ParamNorms, update_norms


def _exact(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_update_norms_match_float64_norms_across_chunk_boundaries(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [7, UPDATE_CHUNK, UPDATE_CHUNK + 1, 2 * UPDATE_CHUNK + UPDATE_CHUNK // 2, 1]
    after = [torch.randn(n, generator=g).to(dtype) * 300 for n in sizes]
    before = [a - (torch.randn(a.shape, generator=g) * 1e-2).to(dtype) for a in after]
    norm_a, norm_b, norm_d = update_norms(after, before)
    assert len(norm_a) == len(norm_b) == len(norm_d) == len(sizes)
    # float32 multi-tensor norms accumulate in float32: about 1e-5 relative over a million values.
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 1e-3)
    for a, b, na, nb, nd in zip(after, before, norm_a, norm_b, norm_d, strict=True):
        assert float(na) == pytest.approx(_exact(a), rel=tol)
        assert float(nb) == pytest.approx(_exact(b), rel=tol)
        # The difference is taken in the weights' dtype, as the optimizer's own update is.
        assert float(nd) == pytest.approx(_exact(a - b), rel=tol)
    # Half precision is reduced in float32: 300 × sqrt(2.5M) ≫ 65,504 is a number, not Inf.
    assert all(torch.isfinite(n) for n in norm_a)


def test_update_norms_keep_a_nan_in_any_chunk() -> None:
    a = torch.ones(2 * UPDATE_CHUNK + 3)
    b = a.clone()
    a[UPDATE_CHUNK + 5] = float("nan")
    norm_a, norm_b, norm_d = update_norms([a], [b])
    assert torch.isnan(norm_a[0]) and torch.isnan(norm_d[0])
    assert float(norm_b[0]) == pytest.approx(_exact(b))


def test_param_norms_vector_rows_are_the_update_of_the_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1100, 1000), nn.Linear(1000, 3))  # one weight over UPDATE_CHUNK
    params = list(model.named_parameters())
    norms = ParamNorms(params, ranks=None, fsdp1_sharded=False)
    norms.keep_start()
    start = [p.detach().clone() for _, p in params]
    with torch.no_grad():
        for _, p in params:
            p.mul_(1.5).add_(0.01)
    values = norms.vector(torch.tensor(2.5)).tolist()
    assert values[0] == 2.5
    table = values[1:]
    for i, ((_, p), s) in enumerate(zip(params, start, strict=True)):
        w, grad, update, before = table[4 * i : 4 * i + 4]
        assert w == pytest.approx(_exact(p.detach()), rel=1e-4)
        assert grad == -1  # no gradient norm known this step
        assert update == pytest.approx(_exact(p.detach() - s), rel=1e-4)
        assert before == pytest.approx(_exact(s), rel=1e-4)


def test_update_norms_without_before_give_the_same_norms() -> None:
    g = torch.Generator().manual_seed(1)
    after = [torch.randn(n, generator=g) for n in (5, UPDATE_CHUNK + 9)]
    before = [a * 0.99 for a in after]
    full = update_norms(after, before)
    norm_a, norm_b, norm_d = update_norms(after, before, with_before=False)
    assert norm_b == []
    assert [float(n) for n in norm_a] == [float(n) for n in full[0]]
    assert [float(n) for n in norm_d] == [float(n) for n in full[2]]


def test_the_sentinels_norms_are_the_updates_start_only_for_weights_not_written_since_the_copy() -> (
    None
):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    params = list(model.named_parameters())
    norms = ParamNorms(params, ranks=None, fsdp1_sharded=False)
    norms.keep_start()
    start = [p.detach().clone() for _, p in params]
    with torch.no_grad():
        params[1][1].add_(1.0)  # written in place after the copy, before the sentinel weighs it
    # The sentinel's norms, marked so the test sees which ones the record uses.
    marked = [torch.tensor(100.0 + i) for i in range(len(params))]
    norms.push(1, marked, optimizer=None)
    with torch.no_grad():
        for _, p in params:
            p.mul_(0.5)  # the optimizer's update
    table = norms.vector(None).tolist()[1:]
    for i, ((_, p), s) in enumerate(zip(params, start, strict=True)):
        w, _, update, before = table[4 * i : 4 * i + 4]
        assert w == pytest.approx(_exact(p.detach()), rel=1e-6)
        assert update == pytest.approx(_exact(p.detach() - s), rel=1e-6)
        # Parameter 1 changed after the copy: its start is read from the copy, not taken from the sentinel.
        assert before == (pytest.approx(_exact(s), rel=1e-6) if i == 1 else 100.0 + i)
    # A second push (a later backward of the same step) does not replace the first.
    norms.push(1, [torch.tensor(7.0)] * len(params), optimizer=None)
    assert norms.vector(None).tolist()[1:][3] == 100.0
