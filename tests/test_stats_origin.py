"""The first NaN/Inf traced to the aten op, the module and the user's source line, in forward and backward.

Each planted fault marks its line with a `# fault:` comment; the expected file:line is read from this file.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from modinspect.reports import NonfiniteOrigin, StatsReport
from modinspect.run.stats import StatsOptions, collect_stats

HERE = Path(__file__).resolve()


def shown(path: Path | str) -> str:
    """A file as the report names it: relative to the working directory when under it, else absolute."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def line_of(marker: str) -> str:
    """`file:line` of the line holding `# fault: marker`, as the report shows it (relative to the cwd)."""
    for number, text in enumerate(HERE.read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# fault: {marker}"):
            return f"{shown(HERE)}:{number}"
    raise AssertionError(marker)


def code_of(marker: str) -> str:
    for text in HERE.read_text().splitlines():
        if text.rstrip().endswith(f"# fault: {marker}"):
            return text.strip()
    raise AssertionError(marker)


def run(model: nn.Module, *batches: torch.Tensor, **options: Any) -> StatsReport:
    return collect_stats(model, [((b,), {}) for b in batches], options=StatsOptions(**options))


def origin_of(report: StatsReport) -> NonfiniteOrigin:
    assert report.nonfinite_origin is not None and report.nonfinite_found
    return report.nonfinite_origin


class Chain(nn.Module):
    """fc -> act -> `fault` -> fc: the fault sits between two clean, hooked layers."""

    def __init__(self, fault: nn.Module, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fault = fault
        self.fc2 = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fault(self.act(self.fc1(x))))  # fault: chain


class LogShift(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 10.0)  # fault: log


class Distance(nn.Module):
    """‖a − b‖ with a == b: sqrt(0) is finite in forward, its gradient is not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x, x.clone()
        return torch.sqrt(((a - b) ** 2).sum(-1, keepdim=True)).expand_as(x) + x  # fault: sqrt


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad / torch.zeros_like(grad)  # fault: custom-backward


class CustomFunction(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BadBackward.apply(x)  # fault: custom-forward


class InlineTop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return torch.log(h - 100.0)  # fault: inline


def test_log_of_negatives_names_aten_log_its_module_and_line() -> None:
    origin = origin_of(run(Chain(LogShift()), torch.randn(4, 8)))
    assert (origin.module, origin.type, origin.phase, origin.cause) == (
        "fault",
        "LogShift",
        "forward",
        "produced",
    )
    assert (origin.op, origin.source, origin.code) == ("aten::log", line_of("log"), code_of("log"))
    assert origin.passed_on == ("fc2", "")


def test_sqrt_at_zero_is_traced_to_its_backward_node_and_forward_line() -> None:
    report = run(Chain(Distance()), torch.randn(4, 8))
    origin = origin_of(report)
    assert all(m.nan == 0 and m.inf == 0 for m in report.modules)  # forward was clean
    assert (origin.module, origin.type, origin.phase, origin.cause) == (
        "fault",
        "Distance",
        "backward",
        "produced",
    )
    assert origin.node == "SqrtBackward0" and origin.op == "aten::div"
    assert (origin.created_at, origin.created_code) == (line_of("sqrt"), code_of("sqrt"))
    assert origin.source is None  # SqrtBackward0 runs no Python of the user's
    assert report.backward_origin is None


def test_a_custom_functions_bad_backward_names_the_node_and_both_lines() -> None:
    origin = origin_of(run(Chain(CustomFunction()), torch.randn(4, 8)))
    assert (origin.module, origin.phase, origin.node, origin.op) == (
        "fault",
        "backward",
        "_BadBackwardBackward",
        "aten::div",
    )
    assert (origin.source, origin.code) == (line_of("custom-backward"), code_of("custom-backward"))
    assert (origin.created_at, origin.created_code) == (
        line_of("custom-forward"),
        code_of("custom-forward"),
    )


def test_an_inline_op_in_the_top_level_forward_is_named_not_just_the_model() -> None:
    origin = origin_of(run(InlineTop(), torch.randn(4, 8)))
    assert (origin.module, origin.type, origin.op) == ("", "InlineTop", "aten::log")
    assert (origin.source, origin.code) == (line_of("inline"), code_of("inline"))


def test_a_nan_weight_is_named_as_the_cause_before_any_forward() -> None:
    model = Chain(nn.Identity())
    with torch.no_grad():
        model.fc2.weight[1, 3] = float("nan")
    origin = origin_of(run(model, torch.randn(4, 8)))
    assert (origin.module, origin.type, origin.cause, origin.tensor, origin.detail) == (
        "fc2",
        "Linear",
        "weight",
        "fc2.weight",
        "holds 1 NaN",
    )


def test_float16_overflow_says_so() -> None:
    model = Chain(nn.Identity()).half()
    with torch.no_grad():
        model.fc1.weight.fill_(30000.0)
    origin = origin_of(run(model, torch.ones(4, 8).half()))
    assert (origin.module, origin.cause, origin.op) == ("fc1", "overflow", "aten::addmm")
    assert origin.detail == "fc1's output exceeds float16's largest finite value 65504"
    assert origin.source == line_of(
        "chain"
    )  # nn.Linear is torch's: the user's line is the call of fc1


class TwoBranches(nn.Module):
    """Branch a makes a NaN in forward (so the loss is NaN); branch b's backward makes one of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a = LogShift()
        self.b = CustomFunction()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)


def test_a_nan_loss_does_not_hide_a_backward_origin() -> None:
    report = run(
        TwoBranches(), torch.randn(4, 8).requires_grad_()
    )  # no parameters: the input needs the grad
    origin = origin_of(report)
    assert (origin.module, origin.phase, origin.op) == ("a", "forward", "aten::log")
    back = report.backward_origin
    assert back is not None
    assert (back.module, back.type, back.phase, back.node, back.op) == (
        "b",
        "CustomFunction",
        "backward",
        "_BadBackwardBackward",
        "aten::div",
    )
    assert back.source == line_of("custom-backward")


def test_clean_batches_run_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    import modinspect.run.stats as stats
    from modinspect.run.attribution import OpTracer

    built: list[Any] = []

    def counted(*a: Any) -> OpTracer:
        built.append(1)
        return OpTracer(*a)

    monkeypatch.setattr(stats, "OpTracer", counted)
    report = run(Chain(nn.Identity()), torch.randn(4, 8), torch.randn(4, 8))
    assert report.nonfinite_origin is None and built == []
    run(Chain(LogShift()), torch.randn(4, 8))
    assert built == [1]


def test_the_model_is_left_without_hooks_or_anomaly_mode() -> None:
    model = Chain(Distance())
    run(model, torch.randn(4, 8))
    assert not torch.is_anomaly_enabled()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    x = torch.randn(2, 8, requires_grad=True)
    model(x).sum().backward()  # no leftover node hook or anomaly check interferes
    assert (
        x.grad is not None and not torch.isfinite(x.grad).all()
    )  # the model's own fault, untouched


def test_gpt2_layer_norm_nan_is_traced_into_the_transformers_source() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=32)
    )
    model.transformer.h[1].ln_1.eps = -1e6  # variance + eps < 0: rsqrt of a negative number
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    report = collect_stats(model, [((ids,), {"labels": ids})], options=StatsOptions())
    origin = origin_of(report)
    assert (origin.module, origin.type, origin.op) == (
        "transformer.h.1.ln_1",
        "LayerNorm",
        "aten::native_layer_norm",
    )
    gpt2_file = inspect.getsourcefile(type(model.transformer.h[1]))
    assert gpt2_file is not None
    code = "hidden_states = self.ln_1(hidden_states)"
    number = next(
        i
        for i, text in enumerate(Path(gpt2_file).read_text().splitlines(), 1)
        if text.strip() == code
    )
    assert (origin.source, origin.code) == (f"{shown(gpt2_file)}:{number}", code)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_and_backward_origins() -> None:
    forward = collect_stats(
        Chain(LogShift()).cuda(),
        [((torch.randn(4, 8, device="cuda"),), {})],
        options=StatsOptions(),
        device="cuda",
    )
    origin = origin_of(forward)
    assert (origin.module, origin.op, origin.source) == ("fault", "aten::log", line_of("log"))
    backward = collect_stats(
        Chain(CustomFunction()).cuda(),
        [((torch.randn(4, 8, device="cuda"),), {})],
        options=StatsOptions(),
        device="cuda",
    )
    origin = origin_of(backward)
    assert (origin.module, origin.node, origin.created_at) == (
        "fault",
        "_BadBackwardBackward",
        line_of("custom-forward"),
    )


def test_an_unused_nan_buffer_is_not_blamed_for_a_nan_made_elsewhere() -> None:
    model = Chain(LogShift())
    model.fc1.register_buffer("scratch", torch.full((3,), float("nan")))  # never read by forward
    origin = origin_of(run(model, torch.randn(4, 8)))
    assert (origin.module, origin.cause, origin.op, origin.tensor) == (
        "fault",
        "produced",
        "aten::log",
        None,
    )


def test_a_nan_buffer_read_by_a_parents_forward_is_the_cause() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Identity()
            self.inner.register_buffer("scale", torch.tensor([1.0, float("inf"), 1.0, 1.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.inner.get_buffer("scale")

    origin = origin_of(run(Scaled(), torch.randn(2, 4)))
    assert (origin.module, origin.cause, origin.tensor, origin.detail) == (
        "inner",
        "weight",
        "inner.scale",
        "holds 1 Inf",
    )


def test_the_origin_of_the_rank_whose_own_pass_held_it_wins_over_ranks() -> None:
    """Under torchrun (tests/test_ranks.py runs one): a rank that only received NaN gradients from the
    all-reduce names a module too, but the rank whose own pass made the NaN is chosen, with its rank."""
    from modinspect.run.stats import _pick_origins

    received = NonfiniteOrigin("1", "Linear", "backward", "produced", ())
    made = NonfiniteOrigin("0", "Root", "forward", "produced", ("1",), op="aten::sqrt")
    backward = NonfiniteOrigin("0", "Root", "backward", "produced", ())
    chosen, chosen_backward = _pick_origins([(received, None, False), (made, backward, True)])
    assert chosen == NonfiniteOrigin(
        "0", "Root", "forward", "produced", ("1",), op="aten::sqrt", rank=1
    )
    assert chosen_backward == NonfiniteOrigin("0", "Root", "backward", "produced", (), rank=1)
    # No rank's own pass held it (a NaN only in the all-reduced gradients): the lowest rank that names one.
    assert _pick_origins([(None, None, False), (received, None, False)])[0] == NonfiniteOrigin(
        "1", "Linear", "backward", "produced", (), rank=1
    )
    assert _pick_origins([(None, None, False), (None, None, False)]) == (None, None)
