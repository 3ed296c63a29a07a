"""Regression tests for the correctness defects of issue 11: each one failed before its fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import invoke
from modinspect.reports import ModuleStats, StatsReport
from modinspect.run.stats import StatsOptions, collect_stats


def run(model: nn.Module, *batches: Any, **options: Any) -> StatsReport:
    prepared: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((b,) if isinstance(b, torch.Tensor) else tuple(b), {}) for b in batches
    ]
    return collect_stats(model, prepared, options=StatsOptions(**options))


def row(report: StatsReport, name: str) -> ModuleStats:
    return next(m for m in report.modules if m.name == name)


def grad_norm(report: StatsReport, name: str) -> float:
    """The module's gradient norm, which it must have."""
    norm = row(report, name).grad_norm
    assert norm is not None, name
    return norm


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
    assert truth["relu"] != pytest.approx(
        truth["bn"], rel=1e-2
    )  # the two differ: the test can tell them apart
    report = run(model, x)
    for name in ("conv", "bn", "relu"):
        assert row(report, name).grad_norm == pytest.approx(truth[name], rel=1e-5), name


def tiny_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def test_a_model_that_returns_a_loss_is_differentiated_through_that_loss() -> None:
    model = tiny_gpt2()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    report = collect_stats(model, [((), {"input_ids": ids, "labels": ids})], options=StatsOptions())
    assert report.loss == "output.loss"
    # Ground truth: the logits' gradient under out.loss.backward(), by retain_grad.
    kept: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, o: torch.Tensor) -> None:
        o.retain_grad()
        kept.append(o)

    model.eval()  # stats runs in eval mode: no dropout
    handle = model.get_submodule("lm_head").register_forward_hook(keep)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    handle.remove()
    model.zero_grad(set_to_none=True)
    assert kept[0].grad is not None
    assert row(report, "lm_head").grad_norm == pytest.approx(float(kept[0].grad.norm()), rel=1e-5)
    assert grad_norm(report, "lm_head") < 1.0  # the sum of every output would give √(2·12·97) ≈ 48


def test_explicit_sum_loss_and_a_dict_loss() -> None:
    class DictLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.fc(x)
            return {"logits": h, "loss": h.square().mean()}

    model = DictLoss()
    x = torch.randn(5, 4)
    auto = run(model, x)
    assert auto.loss == "output['loss']"
    h = model.fc(x).detach().requires_grad_(True)
    h.square().mean().backward()
    assert row(auto, "fc").grad_norm == pytest.approx(float(h.grad.norm()), rel=1e-6)
    summed = run(model, x, loss="sum")
    assert summed.loss == "sum"
    h2 = model.fc(x).detach().requires_grad_(True)
    (h2.sum() + h2.square().mean()).backward()
    assert row(summed, "fc").grad_norm == pytest.approx(float(h2.grad.norm()), rel=1e-6)


GPT2_ENTRY = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel

def build():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=32))
"""


def test_cli_names_the_models_own_loss_in_the_header_and_the_json(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "gpt.py").write_text(GPT2_ENTRY)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.save({"input_ids": ids, "labels": ids}, tmp_path / "batch.pt")
    result = invoke("stats", "gpt.py:build", "--input", "batch.pt", "--json", cwd=tmp_path)
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["loss"]) == (0, "output.loss")
    text = invoke("stats", "gpt.py:build", "--input", "batch.pt", cwd=tmp_path)
    assert "backward on the model's own loss (output.loss))" in text.stdout.splitlines()[0]
    plain = invoke("stats", "gpt.py:build", "--input-shape", "2,12", "--json", cwd=tmp_path)
    assert json.loads(plain.stdout)["loss"] == "sum"  # no labels: no loss in the output, so the sum


UNSEEDED = """
from torch import nn

def build():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
"""


def test_seed_fixes_the_weights_an_unseeded_factory_draws(tmp_path: Path) -> None:
    (tmp_path / "unseeded.py").write_text(UNSEEDED)

    def stats_of(*extra: str) -> list[Any]:
        result = invoke(
            "stats", "unseeded.py:build", "--input-shape", "3,4", "--json", *extra, cwd=tmp_path
        )
        assert result.exit_code == 0
        return [
            (m["name"], m["mean"], m["std"], m["grad_norm"])
            for m in json.loads(result.stdout)["modules"]
        ]

    torch.manual_seed(123)  # whatever state the process is in, --seed decides
    first = stats_of("--seed", "5")
    torch.manual_seed(456)
    assert stats_of("--seed", "5") == first
    assert stats_of("--seed", "6") != first


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
def test_a_dynamically_quantized_linear_cuts_the_graph_without_crashing() -> None:
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    x = torch.randn(3, 4)
    report = run(model, x.requires_grad_(True))
    assert type(model[2]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    # The quantized op passes None back: nothing below it gets a gradient, and that is said, not shown as 0.
    assert (row(report, "0").grad_norm, row(report, "1").grad_norm) == (None, None)
    assert row(report, "2").grad_norm == pytest.approx(
        6**0.5
    )  # d(sum)/d(out) = 1 for each of 3×2 values
    assert report.notes == (
        "no gradient reached 0 (Linear), 1 (ReLU): the loss does not depend on them, or a "
        "non-differentiable op (e.g. a quantized Linear) cut the graph",
    )
    assert row(report, "1").mean == pytest.approx(
        float(float_model[1](float_model[0](x)).mean().detach()), abs=0.05
    )
    assert not report.nonfinite_found


# ---------------------------------------------------------------- gradient flags on evidence


def grad_flags(report: StatsReport) -> dict[str, set[str]]:
    return {
        f: {m.name for m in report.modules if f in m.flags}
        for f in ("exploding-grad", "vanishing-grad")
    }


def scaled_chain(depth: int, gain: float) -> nn.Sequential:
    """`depth` Linear layers with orthogonal weights × gain: each one scales the gradient norm by exactly `gain`."""
    torch.manual_seed(0)
    layers = [nn.Linear(16, 16, bias=False) for _ in range(depth)]
    with torch.no_grad():
        for layer in layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
    return nn.Sequential(*layers)


class BodyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 512)
        with torch.no_grad():
            self.head.weight.mul_(
                1e-4
            )  # the body's gradients are ~1e4 times smaller than the 4·512 outputs'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_sum_losss_root_is_not_exploding_next_to_a_small_body() -> None:
    report = run(BodyHead(), torch.randn(4, 8))
    assert row(report, "").grad_norm == pytest.approx((4 * 512) ** 0.5)
    assert grad_norm(report, "body.0") < 1e-3 * grad_norm(
        report, ""
    )  # a median rule flagged the root
    assert grad_flags(report) == {"exploding-grad": set(), "vanishing-grad": set()}


def test_growth_of_ten_times_per_depth_is_exploding_and_a_tenth_is_vanishing() -> None:
    x = torch.randn(4, 16)
    exploding = run(scaled_chain(6, 20.0), x)
    norms = [grad_norm(exploding, str(i)) for i in range(6)]
    assert norms[0] == pytest.approx(norms[5] * 20.0**5, rel=1e-4)
    assert grad_flags(exploding) == {
        "exploding-grad": {"0", "1", "2", "3", "4"},
        "vanishing-grad": set(),
    }
    vanishing = run(scaled_chain(6, 0.05), x)
    assert grad_flags(vanishing) == {
        "exploding-grad": set(),
        "vanishing-grad": {"0", "1", "2", "3", "4"},
    }


def test_slow_growth_is_flagged_only_where_it_compounds_past_a_thousand() -> None:
    report = run(
        scaled_chain(8, 3.0), torch.randn(4, 16)
    )  # 3× per depth: 3**7 = 2187 at layer 0, 729 at layer 1
    assert grad_flags(report) == {"exploding-grad": {"0"}, "vanishing-grad": set()}
    assert grad_flags(run(scaled_chain(8, 1.0), torch.randn(4, 16))) == {
        "exploding-grad": set(),
        "vanishing-grad": set(),
    }


class TwoNamed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def test_float16_gradients_near_the_largest_finite_value_are_exploding() -> None:
    model = TwoNamed().half()
    with torch.no_grad():
        model.fc2.weight.fill_(
            2000.0
        )  # ∇ of fc1's output: 8 × 2000 = 16000 per element, > 65504 / 8
    report = run(model, torch.randn(4, 8).half())
    assert not report.nonfinite_found
    assert grad_flags(report) == {"exploding-grad": {"fc1"}, "vanishing-grad": set()}
    with torch.no_grad():
        model.fc2.weight.fill_(500.0)  # 4000 per element: far enough from the limit
    assert grad_flags(run(model, torch.randn(4, 8).half())) == {
        "exploding-grad": set(),
        "vanishing-grad": set(),
    }


def test_llama_rotary_tables_have_no_gradient_and_are_not_vanishing() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    report = collect_stats(model, [((ids,), {})], options=StatsOptions())
    rotary = row(report, "model.rotary_emb")
    assert rotary.calls == 1 and rotary.grad_norm is None and rotary.flags == ()
    assert grad_flags(report) == {"exploding-grad": set(), "vanishing-grad": set()}
