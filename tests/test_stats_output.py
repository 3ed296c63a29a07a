"""What `stats` says: collapsed verdicts with module paths and types, diagnoses, histogram edges, --fail-on."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import invoke
from modinspect.names import collapse_names
from modinspect.render.console import verdict_text
from modinspect.reports import StatsReport
from modinspect.run.stats import StatsOptions, collect_stats


def run(model: nn.Module, *batches: torch.Tensor, **options: Any) -> StatsReport:
    return collect_stats(model, [((b,), {}) for b in batches], options=StatsOptions(**options))


def test_collapse_names_folds_layer_indices_keeping_order() -> None:
    assert collapse_names([str(i) for i in range(3, 26, 2)]) == ["{3-25 odd}"]
    assert collapse_names(["h.0.mlp", "h.1.mlp", "h.2.mlp", "h.3.mlp", "ln_f"]) == [
        "h.{0-3}.mlp",
        "ln_f",
    ]
    assert collapse_names(["b.0", "b.2", "b.4", "b.5"]) == ["b.{0,2,4-5}"]
    assert collapse_names(["blocks.2", "blocks.3.fc", "blocks.3", "head", ""]) == [
        "blocks.2",
        "blocks.3.fc",
        "blocks.3",
        "head",
        "(model)",
    ]  # fewer than three: listed in place


def dead_stack(depth: int = 13) -> nn.Sequential:
    """Linear/ReLU pairs; every Linear's bias is -100, so every ReLU is dead."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.bias.fill_(-100.0)
    return model


def test_verdict_collapses_dead_units_and_diagnoses_the_cause() -> None:
    model = dead_stack()
    x = torch.randn(4, 8)
    report = run(model, x)
    relus = [m for m in report.modules if m.type == "ReLU"]
    assert len(relus) == 13 and all(m.dead_fraction == 1.0 for m in relus)
    assert relus[0].input_from == "0" and relus[-1].input_from == "24"
    with torch.no_grad():
        feeder_max = [float(model[: i + 1](x).max()) for i in range(0, 26, 2)]
    assert max(feeder_max) < 0
    assert report.diagnoses == (
        f"{{0-24 even}} (Linear)'s outputs are all < 0 (max {max(feeder_max):.3g}), so {{1-25 odd}} (ReLU) never "
        "fire: check their bias or init",
    )
    assert verdict_text(report) == (
        "Every activation and gradient was finite; {1-25 odd} (ReLU): 100.0% of 8 units dead.\n"
        f"Diagnosis: {report.diagnoses[0]}."
    )


def test_a_single_dead_relu_gets_a_singular_diagnosis() -> None:
    model = dead_stack(2)
    with torch.no_grad():
        model.get_parameter("2.bias").fill_(1.0)  # the second ReLU lives
        model.get_parameter("2.weight").zero_()
    x = torch.randn(4, 8)
    report = run(model, x)
    with torch.no_grad():
        top = float(model[0](x).max())
    assert report.diagnoses == (
        f"0 (Linear)'s outputs are all < 0 (max {top:.3g}), so 1 (ReLU) never fires: check its bias or init",
    )


def test_verdict_and_json_name_the_rank_of_the_origin() -> None:
    """Under torchrun the origin carries its rank (tests/test_ranks.py runs one): the verdict and --json say it."""
    import dataclasses

    from modinspect.render.jsonout import stats_document

    class Root(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(x)

    report = run(nn.Sequential(Root(), nn.Linear(2, 2)), torch.tensor([[1.0, -1.0]]))
    assert report.nonfinite_origin is not None and report.nonfinite_origin.rank is None
    assert stats_document(report)["nonfinite_origin"]["rank"] is None
    ranked = dataclasses.replace(
        report, nonfinite_origin=dataclasses.replace(report.nonfinite_origin, rank=1)
    )
    assert stats_document(ranked)["nonfinite_origin"]["rank"] == 1
    assert verdict_text(ranked).splitlines()[0] == (
        "First NaN/Inf produced in forward by aten::sqrt in 0 (Root) (on rank 1); passed on by 1, (model)."
    )
    assert "(on rank" not in verdict_text(report)


def test_json_histogram_has_its_bin_edges() -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 40)
    x = torch.randn(50, 6)
    report = run(model, x, backward=False)
    row = report.modules[0]
    out = model(x).detach().double()
    lo, hi = float(out.min()), float(out.max())
    assert len(row.histogram_edges) == len(row.histogram) + 1 == 17
    assert row.histogram_edges[0] == pytest.approx(lo) and row.histogram_edges[-1] == pytest.approx(
        hi
    )
    counts = [
        int(((out >= a) & ((out < b) if i < 15 else (out <= b))).sum())
        for i, (a, b) in enumerate(zip(row.histogram_edges, row.histogram_edges[1:], strict=False))
    ]
    assert list(row.histogram) == counts  # the edges are the ones the counts were binned with
    assert counts == [int(c) for c in torch.histc(out, bins=16, min=lo, max=hi)]


NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def dead():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        with torch.no_grad():
            model[0].bias.fill_(-100.0)
        return model

    def exploding():
        torch.manual_seed(0)
        layers = [nn.Linear(8, 8, bias=False) for _ in range(3)]
        for layer in layers:
            nn.init.orthogonal_(layer.weight, gain=50.0)
        return nn.Sequential(*layers)

    def clean():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    """
)


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path


@pytest.mark.parametrize(
    ("entry", "shape", "fail_on", "code"),
    [
        ("dead", "3,4", None, 0),
        ("dead", "3,4", "dead", 1),
        ("dead", "3,4", "exploding", 0),
        ("exploding", "3,8", "exploding", 1),
        ("exploding", "3,8", "nan,dead", 0),
        ("clean", "3,4", "nan,dead,exploding,vanishing", 0),
    ],
)
def test_fail_on_sets_exit_1_for_the_chosen_findings(
    nets: Path, entry: str, shape: str, fail_on: str | None, code: int
) -> None:
    extra = ["--fail-on", fail_on] if fail_on else []
    result = invoke("stats", f"nets.py:{entry}", "--input-shape", shape, "--json", *extra, cwd=nets)
    assert (result.exit_code, result.stderr) == (code, "")


def test_fail_on_rejects_unknown_findings(nets: Path) -> None:
    result = invoke(
        "stats", "nets.py:clean", "--input-shape", "3,4", "--fail-on", "nan,slow", cwd=nets
    )
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --fail-on 'slow' is not one of nan, dead, mostly-dead, exploding, vanishing\n",
    )


def test_json_names_the_backward_node_and_the_lines(nets: Path) -> None:
    (nets / "bad.py").write_text(
        textwrap.dedent(
            """
        import torch
        from torch import nn

        class Dist(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                h = self.fc(x)
                return torch.sqrt(((h - h.detach()) ** 2).sum(-1))
        """
        )
    )
    result = invoke("stats", "bad.py:Dist", "--input-shape", "3,4", "--json", cwd=nets)
    origin = json.loads(result.stdout)["nonfinite_origin"]
    assert result.exit_code == 1
    assert {
        k: origin[k]
        for k in (
            "module",
            "type",
            "phase",
            "cause",
            "node",
            "op",
            "source",
            "created_at",
            "created_code",
        )
    } == {
        "module": "",
        "type": "Dist",
        "phase": "backward",
        "cause": "produced",
        "node": "SqrtBackward0",
        "op": "aten::div",
        "source": None,
        "created_at": "bad.py:12",
        "created_code": "return torch.sqrt(((h - h.detach()) ** 2).sum(-1))",
    }


def test_progress_is_called_once_per_batch_and_silent_off_a_terminal(nets: Path) -> None:
    calls: list[int] = []
    model = nn.Sequential(nn.Linear(4, 2))
    collect_stats(
        model, [((torch.randn(2, 4),), {})] * 3, options=StatsOptions(), progress=calls.append
    )
    assert calls == [1, 1, 1]
    result = invoke("stats", "nets.py:clean", "--input-shape", "3,4", "--batches", "3", cwd=nets)
    assert (result.exit_code, result.stderr) == (0, "")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_batch_counter_with_an_eta_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from modinspect.render.console import batch_progress

    fake = _Terminal()
    monkeypatch.setattr(sys, "stderr", fake)
    with batch_progress(3, "cpu") as advance:
        for _ in range(3):
            advance(1)
    shown = fake.getvalue()
    assert "running batches on cpu" in shown and "3/3" in shown and "ETA" in shown


def test_byte_progress_bar_on_a_terminal_and_silent_off_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modinspect.render.console import progress_bar

    fake = _Terminal()
    monkeypatch.setattr(sys, "stderr", fake)
    with progress_bar(4096, "comparing") as advance:
        advance(2048)
        advance(2048)
    shown = fake.getvalue()
    assert "comparing" in shown and "4.1/4.1 kB" in shown
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with progress_bar(4096, "comparing") as advance:
        advance(4096)
    assert piped.getvalue() == ""
