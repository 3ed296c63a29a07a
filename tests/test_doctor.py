"""modinspect.doctor against the planted-mistake corpus (tests/doctor_corpus.py): every planted case is found
with its identifier, severity and location; every twin, near-miss and real architecture stays quiet."""

from __future__ import annotations

import importlib.util
import resource
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import doctor_corpus as corpus
import modinspect
from doctor_corpus import (
    CLEAN_MODELS,
    NEAR_MISSES,
    PLANTED,
    PLANTED_CHECKPOINTS,
    CleanModel,
    NearMiss,
    Planted,
)
from modinspect.errors import UsageError
from modinspect.reports.doctor import CATALOG, RANK, DoctorReport, Finding


def run(case: Planted, which: str = "planted", **extra: Any) -> DoctorReport:
    model = getattr(case, which)()
    make = case.optimizer if which == "planted" else case.twin_optimizer
    return modinspect.doctor(
        model,
        case.example_input(),
        context=case.context,
        optimizer=make(model) if make else None,
        **extra,
    )


def loud(report: DoctorReport) -> list[Finding]:
    return [f for f in report.findings if RANK[f.severity] >= RANK["warning"]]


def test_the_catalog_is_the_corpus_checks() -> None:
    assert set(CATALOG) == set(corpus.CHECKS)
    assert all(CATALOG[c].summary == corpus.CHECKS[c] for c in CATALOG)


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: c.case)
def test_planted_mistake_is_found_where_it_is(case: Planted) -> None:
    report = run(case)
    mine = [f for f in report.findings if f.id == case.check]
    for where in case.where:
        hits = [
            f
            for f in mine
            if (f.where.module, f.where.attribute, f.where.function)
            == (where.module, where.attribute, where.function)
        ]
        assert len(hits) == 1, (where, mine)
        assert hits[0].severity == case.severity, hits[0]
        assert hits[0].message and hits[0].fix
    assert len(mine) == len(case.where), mine
    assert case.check in report.checks


@pytest.mark.parametrize("case", PLANTED, ids=lambda c: c.case)
def test_twin_is_clean(case: Planted) -> None:
    report = run(case, "twin")
    assert not [f for f in report.findings if f.id == case.check], report.findings
    assert not loud(report), loud(report)
    assert case.check in report.checks


def test_unused_parameter_is_classified() -> None:
    never, dropped = (
        next(c for c in PLANTED if c.case == f"unused-parameter/{v}")
        for v in ("never-ran", "output-unused")
    )
    for case in (never, dropped):
        found = [f for f in run(case).findings if f.id == "unused-parameter"]
        assert {f.detail for f in found} == {case.detail}
        assert all(
            "find_unused_parameters" in f.fix and "DistributedDataParallel" in f.message
            for f in found
        )
    frozen = next(n for n in NEAR_MISSES if n.case == "unused-parameter/frozen")
    assert frozen.example_input is not None
    model = frozen.build()
    assert isinstance(model, torch.nn.Module)
    report = modinspect.doctor(model, frozen.example_input())
    assert {(f.where.key, f.detail) for f in report.findings} == {
        ("aux.weight", "frozen"),
        ("aux.bias", "frozen"),
    }


@pytest.mark.parametrize(
    "case",
    [c for c in PLANTED if c.check == "autograd-function-wrong-backward"],
    ids=lambda c: c.case,
)
def test_wrong_backward_names_its_multiple(case: Planted) -> None:
    (found,) = [f for f in run(case).findings if f.id == case.check]
    assert found.detail == ("not-a-multiple" if case.multiple is None else f"{case.multiple:g}")
    if case.multiple is None:
        assert "no constant multiple explains it" in found.message
    else:
        assert f"returns {case.multiple:g} × the true gradient" in found.message
        assert f"--expect {case.where[0].function}={case.multiple:g}" in found.fix


def test_declared_gradient_reversal_is_silenced_and_a_wrong_declaration_is_not() -> None:
    case = next(c for c in PLANTED if c.intended)
    name = case.where[0].function or ""
    report = run(case, expect={name: -0.1})
    assert not [f for f in report.findings if f.id == case.check]
    assert (
        f"{name}: backward returns -0.1 × the true gradient, as declared (--expect)" in report.notes
    )
    (found,) = [f for f in run(case, expect={name: -1.0}).findings if f.id == case.check]
    assert "(declared -1)" in found.message


def test_gradcheck_budget_is_stated_when_cut_short() -> None:
    case = next(c for c in PLANTED if c.case == "autograd-function-wrong-backward/not-a-multiple")
    report = run(case, budget_s=0.0)
    assert not [f for f in report.findings if f.id == case.check]
    assert "gradcheck of WrongSin was cut short after 0 s of CPU time: not checked" in report.notes


def test_select_and_ignore() -> None:
    case = next(c for c in PLANTED if c.case == "constant-init/all-layers")
    assert {f.id for f in run(case, select=["constant-init"]).findings} == {"constant-init"}
    assert run(case, select=["constant-init"]).checks == ("constant-init",)
    assert not run(case, ignore=["constant-init"]).findings
    with pytest.raises(UsageError, match="--select 'nope' is not a doctor check"):
        run(case, select=["nope"])


@pytest.mark.parametrize(
    "near", [n for n in NEAR_MISSES if n.example_input is not None], ids=lambda n: n.case
)
def test_near_miss_is_at_most_what_the_corpus_allows(near: NearMiss) -> None:
    model = near.build()
    assert isinstance(model, nn.Module) and near.example_input is not None
    report = modinspect.doctor(
        model,
        near.example_input(),
        context=near.context,
        optimizer=near.optimizer(model) if near.optimizer else None,
    )
    mine = [f for f in report.findings if f.id == near.check]
    if near.at_most is None:
        assert not mine, mine
    else:
        assert all(RANK[f.severity] <= RANK[near.at_most] for f in mine), mine
    assert not loud(report), loud(report)


@pytest.mark.parametrize("clean", CLEAN_MODELS, ids=lambda c: c.name)
def test_real_architecture_has_no_warning(clean: CleanModel) -> None:
    if clean.needs and importlib.util.find_spec(clean.needs) is None:
        pytest.skip(f"needs {clean.needs}")
    model = clean.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    report = modinspect.doctor(model, clean.example_input(), context=clean.context)
    assert not loud(report), loud(report)
    assert not report.notes
    allowed = {
        "module-created-in-forward",
        "unregistered-container",
    }  # stateless losses and Llama's Func: infos
    assert {f.id for f in report.findings} <= allowed
    # the model is left as it was found: weights, buffers, modes, no gradients
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_bert_and_t5_per_call_loss_is_an_info_at_the_root() -> None:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers")
    clean = next(c for c in CLEAN_MODELS if c.name == "bert")
    report = modinspect.doctor(clean.build(), clean.example_input())
    assert [(f.id, f.severity, f.where.module) for f in report.findings] == [
        ("module-created-in-forward", "info", "")
    ]
    assert "CrossEntropyLoss" in report.findings[0].message


def test_no_input_runs_the_static_checks_and_says_so() -> None:
    case = next(c for c in PLANTED if c.case == "tensor-attribute/mask")
    report = modinspect.doctor(case.planted())
    assert [f.id for f in report.findings] == ["tensor-attribute"]
    assert "unused-parameter" not in report.checks
    assert report.notes[0].startswith("no example input: the forward/backward checks did not run")


def test_example_input_forms() -> None:
    case = next(c for c in PLANTED if c.case == "tensor-attribute/mask")
    x = case.example_input()[0][0]
    forms: tuple[object, ...] = (x, (x,), [x], ((x,), {}))
    for form in forms:
        assert [f.id for f in modinspect.doctor(case.planted(), form).findings] == [
            "tensor-attribute"
        ]
    with pytest.raises(UsageError, match="example_inputs is a int"):
        modinspect.doctor(case.planted(), 3)


def test_a_forward_that_raises_is_one_error() -> None:
    with pytest.raises(
        modinspect.ModinspectError, match=r"^the model's forward raised RuntimeError: mat1 and mat2"
    ):
        modinspect.doctor(nn.Linear(4, 2), torch.randn(3, 5))


def test_static_checks_cost_little_cpu() -> None:
    """The static checks on a 12-block transformer-sized module tree take well under a second of CPU."""
    from modinspect.run.doctor import static_findings

    model = nn.Sequential(*[nn.TransformerEncoderLayer(64, 4, 128) for _ in range(12)])
    start = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    assert static_findings(model, "training") == []
    assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - start < 1.0


# ---------------------------------------------------------------- checkpoints without code


def _save(sd: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    if fmt == "torch":
        torch.save(sd, path.with_suffix(".pt"))
        return path.with_suffix(".pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path.with_suffix(".safetensors")))
    return path.with_suffix(".safetensors")


def _formats(case_id: str) -> list[str]:
    # safetensors' save_file refuses shared storage, so the tied twin is torch.save only
    return ["torch"] if case_id.startswith("tied-weights") else ["torch", "safetensors"]


CHECKPOINT_RUNS = [(c, fmt) for c in PLANTED_CHECKPOINTS for fmt in _formats(c.case)]


@pytest.mark.parametrize(("case", "fmt"), CHECKPOINT_RUNS, ids=lambda v: getattr(v, "case", v))
def test_planted_checkpoint_is_found(
    case: corpus.PlantedCheckpoint, fmt: str, tmp_path: Path
) -> None:
    path = _save(case.planted(), tmp_path / "planted", fmt)
    with modinspect.open_source(str(path)) as src:
        report = modinspect.doctor(src)
    assert report.kind == "checkpoint"
    mine = [f for f in report.findings if f.id == case.check]
    assert [(f.where.module, f.where.attribute, f.severity) for f in mine] == [
        (w.module, w.attribute, case.severity) for w in case.where
    ]
    twin = _save(case.twin(), tmp_path / "twin", fmt)
    with modinspect.open_source(str(twin)) as src:
        assert not modinspect.doctor(src).findings


@pytest.mark.parametrize(
    "near", [n for n in NEAR_MISSES if n.example_input is None], ids=lambda n: n.case
)
def test_checkpoint_near_miss_is_quiet(near: NearMiss, tmp_path: Path) -> None:
    sd = near.build()
    assert isinstance(sd, dict)
    for fmt in ("torch", "safetensors"):
        with modinspect.open_source(str(_save(sd, tmp_path / fmt, fmt))) as src:
            report = modinspect.doctor(src)
        assert not [f for f in report.findings if f.id == near.check], report.findings


def test_checkpoint_path_is_opened(tmp_path: Path) -> None:
    case = PLANTED_CHECKPOINTS[0]
    path = _save(case.planted(), tmp_path / "x", "safetensors")
    report = modinspect.doctor(str(path))
    assert [f.id for f in report.findings] == ["nonfinite-weights"]
    assert report.findings[0].message == "fc.weight holds 1 NaN and 0 Inf value(s) of 32"


def test_another_profiler_is_left_alone_and_said() -> None:
    import sys

    case = next(c for c in PLANTED if c.case == "forward-bypasses-call/encoder")
    events: list[str] = []

    def other(frame: Any, event: str, arg: Any) -> None:
        events.append(event)

    sys.setprofile(other)
    try:
        report = run(case)
    finally:
        assert sys.getprofile() is other
        sys.setprofile(None)
    assert events
    assert report.notes == (
        "another profiler is active (sys.setprofile): modules and Parameters built in forward, "
        "forward called past __call__, and custom autograd Functions were not checked",
    )
    assert not [f for f in report.findings if f.id == "forward-bypasses-call"]


def test_the_model_is_restored_after_a_forward_that_raised() -> None:
    import sys

    case = next(c for c in PLANTED if c.case == "batchnorm-batch-of-one/batchnorm1d")
    model = case.planted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = modinspect.doctor(model, case.example_input())
    assert [f.id for f in report.findings] == ["batchnorm-batch-of-one"]
    assert report.notes == (
        "the forward raised (explained above), so the checks after it did not run",
    )
    assert sys.getprofile() is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (
        not torch.nn.modules.module._global_forward_hooks
        and not torch.nn.modules.module._global_forward_pre_hooks
    )


@pytest.mark.bench_smoke
def test_bench_doctor_smoke() -> None:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import bench_doctor

    lines = bench_doctor.main(["--smoke"])
    assert lines[0].startswith("doctor on tiny GPT-2, input (2, 16) with labels, 1 run(s)")
    assert [line.split(" |")[0].split(" (")[0] for line in lines[4:8]] == [
        "| static checks",
        "| bare forward+backward",
        "| doctor, whole run",
        "| checkpoint checks",
    ]
    assert lines[-1].endswith("findings: 0 (none)")


def test_a_path_object_is_opened(tmp_path: Path) -> None:
    path = _save(PLANTED_CHECKPOINTS[0].planted(), tmp_path / "x", "torch")
    assert [f.id for f in modinspect.doctor(path).findings] == ["nonfinite-weights"]
    assert isinstance(modinspect.doctor(path), modinspect.DoctorReport)


def test_nested_plain_containers_are_looked_into() -> None:
    class Grid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rows = [[nn.Linear(2, 2) for _ in range(2)] for _ in range(2)]
            self.spec = {"sizes": [2, 2], "names": ("a", "b")}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    (found,) = modinspect.doctor(Grid()).findings
    assert (found.id, found.severity, found.where.key) == (
        "unregistered-container",
        "error",
        "rows",
    )
    assert "holding 4 module(s)" in found.message


class PairSum(torch.autograd.Function):
    """Needs 8 features (two groups of 4): the inputs cut to 4 per dimension fail, the captured size works."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view(x.shape[0], 2, 4).sum(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return torch.cat([grad, grad], dim=1) * 2  # twice the true gradient


class PairSumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PairSum.apply(self.fc(x))


def test_a_function_that_needs_its_captured_shape_is_checked_at_that_shape() -> None:
    report = modinspect.doctor(PairSumNet(), torch.randn(6, 4))
    (found,) = report.findings
    assert (found.id, found.where.module, found.where.function, found.detail) == (
        "autograd-function-wrong-backward",
        "",
        "PairSum",
        "2",
    )
    assert found.message.startswith(
        "PairSum.backward returns 2 × the true gradient (gradcheck in float64 on inputs "
        "(6, 8); largest error"
    )
