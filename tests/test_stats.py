"""collect_stats: exact statistics against torch's own reductions, planted faults found by name, hygiene."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from torch import nn

from models import BadGrad, FaultyNet, SqrtShift
from modinspect.errors import ModinspectError
from modinspect.reports import ModuleStats, StatsReport
from modinspect.run.stats import StatsOptions, collect_stats, unit_dim


def run(model: nn.Module, *batches: Any, **options: Any) -> StatsReport:
    prepared: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((b,) if isinstance(b, torch.Tensor) else tuple(b), {}) for b in batches
    ]
    return collect_stats(model, prepared, options=StatsOptions(**options))


def row(report: StatsReport, name: str) -> ModuleStats:
    return next(m for m in report.modules if m.name == name)


def outputs_of(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Every module's outputs, captured with plain forward hooks, as ground truth."""
    captured: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            captured.setdefault(name, []).append(out.detach().clone())

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    return captured


def assert_matches_torch(stats: ModuleStats, values: torch.Tensor) -> None:
    flat = values.double().reshape(-1)
    finite = flat[torch.isfinite(flat)]
    assert stats.count == flat.numel()
    assert stats.finite == finite.numel()
    assert stats.mean == pytest.approx(finite.mean().item(), rel=1e-6, abs=1e-7)
    assert stats.std == pytest.approx(finite.std().item(), rel=1e-5)
    assert stats.min == pytest.approx(finite.min().item(), rel=1e-7)
    assert stats.max == pytest.approx(finite.max().item(), rel=1e-7)
    assert stats.mean_abs == pytest.approx(finite.abs().mean().item(), rel=1e-6)
    assert stats.zero_fraction == pytest.approx((flat == 0).double().mean().item())
    assert stats.nan == int(torch.isnan(flat).sum())
    assert stats.inf == int(torch.isinf(flat).sum())


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_exact_stats_match_torch_reductions_over_batches() -> None:
    model = MLP()
    batches = [torch.randn(5, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    report = run(model, *batches)
    truth = outputs_of(model, batches)
    assert report.batches == 3
    for name in ("", "fc1", "act", "fc2"):
        stats = row(report, name)
        assert stats.calls == 3
        assert_matches_torch(stats, torch.cat([t.reshape(-1) for t in truth[name]]))


def test_module_called_twice_is_one_row_merged_exactly() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(self.shared(x) * 3.0)

    model = Twice()
    x = torch.randn(8, 4)
    report = run(model, x)
    stats = row(report, "shared")
    assert stats.calls == 2
    first = model.shared(x)
    second = model.shared(first * 3.0)
    assert_matches_torch(
        stats, torch.cat([first.detach().reshape(-1), second.detach().reshape(-1)])
    )


def test_nan_and_inf_are_counted_apart_and_stats_use_the_finite_values() -> None:
    class Poke(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x.clone()
            y[0, 0] = float("nan")
            y[1, 1] = float("inf")
            y[2, 2] = -float("inf")
            return y

    x = torch.randn(4, 5)
    model = Poke()
    report = run(model, x, backward=False)
    stats = row(report, "")
    assert (stats.nan, stats.inf) == (1, 2)
    assert_matches_torch(stats, model(x))
    assert report.nonfinite_found
    origin = report.nonfinite_origin
    assert origin is not None and (origin.module, origin.phase, origin.cause) == (
        "",
        "forward",
        "produced",
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_outputs_are_accumulated_in_fp32(dtype: torch.dtype) -> None:
    model = MLP().to(dtype)
    x = (torch.randn(64, 6) * 30).to(dtype)
    report = run(model, x, backward=False)
    truth = outputs_of(model, [x])
    for name in ("fc1", "fc2"):
        assert_matches_torch(row(report, name), truth[name][0].float())


def test_autocast_bfloat16_runs_and_reports_the_dtype() -> None:
    model = MLP()
    report = run(model, torch.randn(4, 6), autocast_dtype="bfloat16")
    assert report.dtype == "bfloat16"
    assert row(report, "fc1").finite == 4 * 16
    assert row(report, "fc1").grad_norm is not None


def test_unit_dimension_rule() -> None:
    assert [unit_dim(n) for n in range(6)] == [None, 0, 1, 2, 1, 1]


def test_dead_relu_from_a_large_negative_bias() -> None:
    model = MLP()
    with torch.no_grad():
        model.fc1.bias.fill_(-1e4)
    report = run(model, torch.randn(16, 6), torch.randn(16, 6))
    act = row(report, "act")
    assert act.dead_fraction == 1.0 and act.units == 16
    assert "dead" in act.flags
    assert row(report, "fc1").dead_fraction is None  # not ReLU-family


def test_relu_with_half_its_units_dead() -> None:
    model = MLP()
    with torch.no_grad():
        model.fc1.bias[:8] = -1e4
        model.fc1.bias[8:] = 1e4
    act = row(run(model, torch.randn(16, 6)), "act")
    assert act.dead_fraction == 0.5 and "mostly-dead" in act.flags


def test_conv_relu_units_are_channels() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with torch.no_grad():
        conv.get_parameter("0.bias")[:] = torch.tensor([-1e4, 1e4, 1e4, 1e4])
    stats = row(run(conv, torch.randn(2, 3, 8, 8)), "1")
    assert (stats.units, stats.dead_fraction) == (4, 0.25)


def Net(faulty: nn.Module) -> FaultyNet:
    return FaultyNet(faulty)


def test_forward_nan_is_traced_to_the_module_that_produced_it() -> None:
    report = run(Net(SqrtShift()), torch.randn(4, 8))
    origin = report.nonfinite_origin
    assert origin is not None
    assert (origin.module, origin.type, origin.phase, origin.cause) == (
        "blocks.2.act",
        "SqrtShift",
        "forward",
        "produced",
    )
    assert origin.passed_on[:4] == ("blocks.2", "blocks.3.fc", "blocks.3.act", "blocks.3")
    assert "head" in origin.passed_on and "blocks.2.act" not in origin.passed_on
    assert row(report, "blocks.1.act").nan == 0 and row(report, "blocks.2.act").nan > 0


def test_backward_nan_is_traced_to_the_custom_function_module() -> None:
    report = run(Net(BadGrad()), torch.randn(4, 8))
    origin = report.nonfinite_origin
    assert origin is not None
    assert (origin.module, origin.type, origin.phase) == ("blocks.2.act", "BadGrad", "backward")
    assert "blocks.2.fc" in origin.passed_on
    assert all(m.nan == 0 and m.inf == 0 for m in report.modules)  # forward was clean
    assert row(report, "blocks.2.fc").grad_nan > 0 and row(report, "blocks.3.fc").grad_nan == 0
    assert "nonfinite-grad" in row(report, "blocks.2.fc").flags


def test_nan_already_in_the_input() -> None:
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    origin = run(Net(nn.ReLU()), x).nonfinite_origin
    assert origin is not None and (origin.module, origin.cause) == (None, "input")


def test_clean_run_has_no_origin() -> None:
    report = run(Net(nn.Tanh()), torch.randn(4, 8))
    assert report.nonfinite_origin is None and not report.nonfinite_found


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.conv1(x))
        z = self.bn(self.conv2(y))
        z += y  # residual add, in place
        return self.head(self.relu2(z).mean((2, 3)))


def test_inplace_relu_cnn_with_residual_gets_gradients() -> None:
    model = ResidualCNN()
    x = torch.randn(2, 3, 8, 8)
    report = run(model, x)
    assert report.nonfinite_origin is None
    # Ground truth: the same network with out-of-place ReLUs, where conv1's output can simply retain_grad.
    twin = copy.deepcopy(model).eval()
    twin.relu1.inplace = twin.relu2.inplace = False
    kept: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, o: torch.Tensor) -> None:
        o.retain_grad()
        kept.append(o)

    twin.conv1.register_forward_hook(keep)
    out = twin(x)
    out.sum().backward()
    assert kept[0].grad is not None
    assert row(report, "conv1").grad_norm == pytest.approx(kept[0].grad.norm().item(), rel=1e-5)
    assert row(report, "head").grad_norm == pytest.approx(math.sqrt(out.numel()), rel=1e-6)
    assert row(report, "relu1").dead_fraction is not None


def test_structured_outputs_are_walked_and_integer_outputs_skipped() -> None:
    @dataclasses.dataclass
    class Out:
        hidden: torch.Tensor
        ids: torch.Tensor

    class Multi(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> Any:
            h = self.fc(x)
            return {
                "pair": (h, h * 2),
                "out": Out(h + 1, torch.arange(3)),
                "flag": torch.tensor([True]),
            }

    class Argmax(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.argmax(-1)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.multi = Multi()
            self.pick = Argmax()

        def forward(self, x: torch.Tensor) -> Any:
            out = self.multi(x)
            return out, self.pick(out["pair"][0])

    model = Wrap()
    x = torch.randn(3, 4)
    report = run(model, x)
    multi = row(report, "multi")
    h = model.multi.fc(x).detach()
    assert_matches_torch(multi, h)  # statistics describe the first floating output
    assert row(report, "pick").count == 0 and row(report, "pick").calls == 1
    # loss = sum of every floating output: d/dh of (h + 2h + (h + 1)) summed = 4 per element
    assert multi.grad_norm == pytest.approx(4 * math.sqrt(h.numel()), rel=1e-6)


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
    }


def assert_restored(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"] == 0
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, grad in before["grads"].items():
        assert after["grads"][name] is grad
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value)


@pytest.mark.parametrize("faulty", [nn.ReLU, SqrtShift, BadGrad])
def test_model_is_left_as_it_was(faulty: Callable[[], nn.Module]) -> None:
    model = Net(faulty())
    model.train()
    model.blocks[1].eval()
    model.head.requires_grad_(False)
    weight = model.get_parameter("blocks.0.fc.weight")
    weight.grad = torch.ones_like(weight)
    before = snapshot(model)
    run(model, torch.randn(4, 8), train=False)
    assert_restored(model, before)


def test_model_is_left_as_it_was_when_forward_raises() -> None:
    class Explode(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("shape trouble")

    model = Net(Explode())
    before = snapshot(model)
    with pytest.raises(
        ModinspectError,
        match=r"the model raised RuntimeError: shape trouble in blocks\.2\.act \(Explode\)",
    ):
        run(model, torch.randn(4, 8))
    assert_restored(model, before)


def test_no_backward_leaves_gradient_fields_empty() -> None:
    report = run(MLP(), torch.randn(3, 6), backward=False)
    assert all(m.grad_norm is None and m.param_grad_norm is None for m in report.modules)
    assert not report.backward


def test_filter_hooks_only_matching_modules() -> None:
    report = run(Net(nn.ReLU()), torch.randn(2, 8), pattern="blocks.*.act")
    assert [m.name for m in report.modules] == [f"blocks.{i}.act" for i in range(4)]
    with pytest.raises(ModinspectError, match="matches no module"):
        run(Net(nn.ReLU()), torch.randn(2, 8), pattern="nothing*")


def test_param_grad_norm_matches_autograd() -> None:
    model = MLP()
    x = torch.randn(5, 6)
    report = run(model, x)
    model(x).sum().backward()
    assert model.fc1.weight.grad is not None and model.fc1.bias.grad is not None
    expected = math.sqrt(
        model.fc1.weight.grad.square().sum().item() + model.fc1.bias.grad.square().sum().item()
    )
    assert row(report, "fc1").param_grad_norm == pytest.approx(expected, rel=1e-6)


def test_histogram_counts_every_finite_value() -> None:
    stats = row(run(MLP(), torch.randn(10, 6)), "fc1")
    assert sum(stats.histogram) == 10 * 16 and len(stats.histogram) == 16


def test_histogram_matches_torch_histc_and_samples_large_outputs() -> None:
    class Ident(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 1.0

    x = torch.randn(1000)
    stats = row(run(Ident(), x, backward=False), "")
    expected = torch.histc(x, bins=16, min=x.min().item(), max=x.max().item())
    assert list(stats.histogram) == [int(c) for c in expected]
    big = row(run(Ident(), torch.randn(300_000), backward=False), "")
    assert sum(big.histogram) == len(range(0, 300_000, 300_000 // 65_536))


def test_a_parent_returning_its_childs_output_reuses_its_reduction_and_histogram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modinspect.run.collector import Collector

    calls = {"reduce": 0, "hist": 0}
    reduce, histogram = Collector._reduce_fast, Collector._histogram

    def counting_reduce(self: Collector, t: torch.Tensor, nonnegative: bool = False) -> list[Any]:
        calls["reduce"] += 1
        return reduce(self, t, nonnegative)

    def counting_hist(self: Collector, t: torch.Tensor, values: list[Any]) -> torch.Tensor:
        calls["hist"] += 1
        return histogram(self, t, values)

    monkeypatch.setattr(Collector, "_reduce_fast", counting_reduce)
    monkeypatch.setattr(Collector, "_histogram", counting_hist)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(6, 8))
    )  # "", "0" and "0.0" all return the Linear's output
    x = torch.randn(5, 6)
    report = run(model, x, backward=False)
    assert calls == {"reduce": 1, "hist": 1}
    out = model(x).detach()
    expected = [
        int(c) for c in torch.histc(out, bins=16, min=out.min().item(), max=out.max().item())
    ]
    assert [list(row(report, n).histogram) for n in ("", "0", "0.0")] == [expected] * 3
    for n in ("", "0", "0.0"):
        assert_matches_torch(row(report, n), out)


def test_relu_outputs_mean_abs_is_their_mean_in_fast_and_exact_mode() -> None:
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU6(), nn.Linear(32, 32), nn.ReLU(inplace=True))
    x = torch.randn(7, 6) * 20
    with torch.no_grad():
        mid = model[1](model[0](x))
        last = model[3](model[2](mid))
    for exact in (False, True):
        report = run(model, x, exact=exact)
        assert_matches_torch(row(report, "1"), mid)
        assert_matches_torch(row(report, "3"), last)
        assert row(report, "1").max == 6.0 and row(report, "3").mean_abs == pytest.approx(
            last.double().mean().item()
        )


def test_std_and_gradient_norms_of_a_large_tensor_hold_float64_precision() -> None:
    # An fp32 BLAS dot over 9M values is off by ~1e-4 (its accumulators add one value after another);
    # sums of squares above 2**22 elements run in blocks added pairwise.
    from modinspect.run.collector import BLOCKED_DOT, sumsq

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.full((9_000_001,), 1.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w

    x = torch.randn(9_000_001, generator=torch.Generator().manual_seed(3)) * 3 + 1
    assert x.numel() > BLOCKED_DOT
    stats = row(run(Scale(), x, histogram=False), "")
    y = (x * 1.5).double()
    assert stats.std == pytest.approx(y.std().item(), rel=1e-7)
    assert stats.grad_norm == pytest.approx(math.sqrt(x.numel()), rel=1e-7)  # d(sum)/dy = 1
    assert stats.param_grad_norm == pytest.approx(
        x.double().norm().item(), rel=1e-7
    )  # d(sum)/dw = x
    assert sumsq(x).item() == pytest.approx(x.double().square().sum().item(), rel=1e-7)
    small = x[:1000]
    assert sumsq(small).item() == pytest.approx(torch.dot(small, small).item(), rel=1e-7)


def test_histogram_skips_non_finite_values() -> None:
    class Poison(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 1.0
            y[:10] = float("nan")
            y[10:15] = float("inf")
            return y

    stats = row(run(Poison(), torch.randn(100), backward=False), "")
    assert sum(stats.histogram) == 85


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_one_device_to_host_transfer_per_batch() -> None:
    model = ResidualCNN().cuda()
    batches: list[tuple[tuple[torch.Tensor], dict[str, Any]]] = [
        ((torch.randn(4, 3, 16, 16, device="cuda"),), {}) for _ in range(3)
    ]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning, match="synchroniz") as caught:
            collect_stats(model, batches, options=StatsOptions(), device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 3


def test_fast_and_exact_reductions_agree_on_finite_values() -> None:
    model = ResidualCNN()
    x = torch.randn(2, 3, 8, 8)
    fast = run(model, x, train=False)
    exact = run(model, x, train=False, exact=True)
    for a, b in zip(fast.modules, exact.modules, strict=True):
        assert (a.name, a.calls, a.count, a.finite, a.nan, a.inf, a.units) == (
            b.name,
            b.calls,
            b.count,
            b.finite,
            b.nan,
            b.inf,
            b.units,
        )
        for field in (
            "mean",
            "std",
            "min",
            "max",
            "mean_abs",
            "zero_fraction",
            "dead_fraction",
            "grad_norm",
            "param_grad_norm",
        ):
            va, vb = getattr(a, field), getattr(b, field)
            assert (va is None) == (vb is None), field
            if va is not None:
                assert va == pytest.approx(vb, rel=1e-5, abs=1e-9), (a.name, field)


def test_a_replayed_faulty_batch_is_counted_once() -> None:
    report = run(Net(SqrtShift()), torch.randn(4, 8), torch.randn(4, 8))
    assert report.batches == 2
    assert all(m.calls == 2 for m in report.modules)
    assert row(report, "blocks.0.fc").count == 2 * 4 * 8


def test_train_mode_leaves_batchnorm_running_stats_untouched() -> None:
    model = ResidualCNN()
    before = {n: b.clone() for n, b in model.named_buffers()}
    report = run(model, torch.randn(4, 3, 8, 8), train=True)
    assert report.mode == "train"
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * scale


def test_a_batch_is_what_the_model_is_called_with_in_any_of_the_documented_forms() -> None:
    """A tensor, a tuple/list (positional), a dict (keywords) or an (args, kwargs) pair: one and the same run."""
    torch.manual_seed(1)
    x, scale = torch.randn(5, 4), torch.tensor(2.0)
    model = Scaled()
    with torch.no_grad():
        out = model(x, scale).double()
        fc = model.fc(x).double()
    forms: list[Iterable[Any]] = [
        [(x, scale)],
        [[x, scale]],
        [{"x": x, "scale": scale}],
        [((x,), {"scale": scale})],
        [([x], {"scale": scale})],
        iter([((x, scale), {})]),
    ]
    reports = [
        collect_stats(model, batches) for batches in forms
    ]  # options default to StatsOptions()
    for report in reports:
        assert report.modules == reports[0].modules and report.loss == "sum" and report.backward
    root, linear = row(reports[0], ""), row(reports[0], "fc")
    assert (root.count, linear.count) == (15, 15)
    assert root.mean is not None and linear.std is not None
    assert math.isclose(root.mean, float(out.mean()), rel_tol=1e-6)
    assert math.isclose(linear.std, float(fc.std()), rel_tol=1e-6)
    # A tensor alone is the one positional input.
    one = row(collect_stats(model.fc, [x]), "")
    assert one.count == 15 and one.mean is not None
    assert math.isclose(one.mean, float(fc.mean()), rel_tol=1e-6)


@pytest.mark.parametrize(
    ("batches", "kind"),
    [(torch.randn(2, 4), "Tensor"), ({"x": 1}, "dict"), (42, "int"), ("x", "str")],
)
def test_batches_that_are_not_an_iterable_of_batches_are_a_user_error(
    batches: Any, kind: str
) -> None:
    model = Scaled()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ModinspectError) as info:
        collect_stats(model, batches)
    assert str(info.value) == (
        f"collect_stats takes an iterable of batches, not a {kind}: pass [x] for one batch x (a tensor, a tuple "
        "or list of positional inputs, a dict of keyword inputs, or (args, kwargs))"
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_batch_the_model_cannot_take_is_a_forward_error_naming_it() -> None:
    with pytest.raises(
        ModinspectError,
        match=r"^the model raised TypeError: .*forward\(\) missing 1 required "
        r"positional argument: 'scale' in \(model\) \(Scaled\)$",
    ):
        collect_stats(Scaled(), [torch.randn(2, 4)])
