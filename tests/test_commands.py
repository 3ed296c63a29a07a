"""commands/ as a library: each command takes its request, returns its report, and prints nothing.

What a command has to say while it works comes back through the callbacks it is given (notes, warnings,
phases, progress); the CLI's own callbacks print them, a library caller's just record them here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import runlogs
from conftest import invoke
from modinspect.commands.diff import DiffRequest, run_diff
from modinspect.commands.report import ReportRequest, run_report
from modinspect.commands.tree import TreeRequest, run_tree
from modinspect.errors import SourceNotFoundError, UsageError
from modinspect.names import KeyMap
from modinspect.reports import RunReport


class Heard:
    """Callbacks that record what a command says: notes, warnings, phases, progress totals and advances."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.warnings: list[list[str]] = []
        self.phases: list[str] = []
        self.totals: list[int] = []
        self.advanced = 0

    @contextmanager
    def phase(self, message: str) -> Iterator[None]:
        self.phases.append(message)
        yield

    @contextmanager
    def progress(self, total: int) -> Iterator[Callable[[int], None]]:
        self.totals.append(total)

        def advance(n: int) -> None:
            self.advanced += n

        yield advance


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


# --- tree -----------------------------------------------------------------------------------------------------


def test_run_tree_returns_the_tree_and_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = _net()
    path = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(path))
    heard = Heard()
    report = run_tree(
        TreeRequest(str(path)),
        announce=heard.notes.append,
        warn=heard.warnings.append,
        phase=heard.phase,
    )
    assert capsys.readouterr() == ("", "")
    assert report.totals.params == sum(p.numel() for p in net.parameters()) == 212
    assert report.totals.tensors == 4
    assert report.totals.bytes == sum(p.numel() * p.element_size() for p in net.parameters())
    assert sorted(t.name for t in report.tensors) == sorted(net.state_dict())
    assert report.shapes is None
    assert (heard.notes, heard.warnings, heard.phases) == ([], [[]], ["opening the source…"])


def test_run_tree_adds_the_meta_forward_when_given_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cmds_tree_models.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(8, 4)\n"
    )
    heard = Heard()
    report = run_tree(
        TreeRequest(f"{tmp_path / 'cmds_tree_models.py'}:build", meta=True, input_shapes=((2, 8),)),
        phase=heard.phase,
    )
    assert capsys.readouterr() == ("", "")
    with FlopCounterMode(display=False) as counter:
        nn.Linear(8, 4)(torch.randn(2, 8))
    assert report.shapes is not None
    assert report.shapes.totals.flops == counter.get_total_flops() == 2 * 2 * 8 * 4
    assert report.shapes.modules[0].output_shapes == ((2, 4),)
    assert report.totals.params == 8 * 4 + 4
    assert heard.phases == ["opening the source…", "running the forward pass on the meta device…"]


def test_run_tree_refuses_an_input_dtype_without_an_input_before_opening(tmp_path: Path) -> None:
    heard = Heard()
    with pytest.raises(UsageError, match=r"^--input-dtype applies to --input-shape or --shapes$"):
        run_tree(TreeRequest(str(tmp_path / "missing.pt"), input_dtype="int64"), phase=heard.phase)
    assert heard.phases == []


# --- diff -----------------------------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    sd = {f"h.{i}.w": torch.randn(16, 8, generator=g) for i in range(3)} | {"step": torch.tensor(3)}
    other = dict(sd) | {"h.1.w": sd["h.1.w"] + 1e-2, "extra": torch.zeros(2)}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(sd, str(a))
    save_file(other, str(b))
    return a, b, sd, other


def test_run_diff_returns_the_comparison_and_prints_nothing(
    pair: tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b, sd, other = pair
    heard = Heard()
    report = run_diff(
        DiffRequest(str(a), str(b)),
        warn=heard.warnings.append,
        phase=heard.phase,
        progress=heard.progress,
    )
    assert capsys.readouterr() == ("", "")
    assert report.differs
    assert report.only_in_a == () and report.only_in_b == ("extra",)
    assert [d.name for d in report.changed] == ["h.1.w"]
    (changed,) = report.changed
    assert changed.differing == 128 and changed.numel == 128
    assert changed.max_abs_diff == pytest.approx(
        (other["h.1.w"] - sd["h.1.w"]).abs().max().item(), rel=1e-6
    )
    assert (report.compared, report.equal, report.identical) == (4, 3, 3)
    nbytes = sum(t.numel() * t.element_size() for t in [*sd.values(), *other.values()])
    assert heard.totals == [nbytes]
    assert 0 < heard.advanced <= nbytes
    assert (heard.warnings, heard.phases) == ([[]], ["opening the sources…"])


def test_run_diff_is_what_the_diff_command_decides(
    pair: tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    a, b, _, _ = pair
    request = DiffRequest(str(a), str(b), atol=0.5, keymap=KeyMap(exclude=("extra",)))
    report = run_diff(request)
    assert not report.differs and report.compared == 4 and report.equal == 4
    result = invoke("diff", a, b, "--atol", "0.5", "--exclude", "extra", "--json")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["only_in_b"], printed["changed"]) == ([], [])
    exact = run_diff(DiffRequest(str(a), str(b), exact=True, nan_equal=False))
    result = invoke("diff", a, b, "--exact", "--nan-unequal", "--json")
    assert result.exit_code == 1 and exact.differs
    printed = json.loads(result.stdout)
    assert printed["only_in_b"] == list(exact.only_in_b) == ["extra"]
    assert [d["name"] for d in printed["changed"]] == [d.name for d in exact.changed]


def test_run_diff_names_the_missing_side(tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors"
    save_file({"w": torch.zeros(2)}, str(a))
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(SourceNotFoundError) as info:
        run_diff(DiffRequest(str(a), str(missing)))
    assert str(info.value) == f"{missing} does not exist"


# --- report ---------------------------------------------------------------------------------------------------


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return runlogs.write_run(tmp_path / "run.jsonl")


def test_run_report_returns_the_run_and_prints_nothing(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heard = Heard()
    run = run_report(ReportRequest(log), announce=heard.notes.append)
    assert capsys.readouterr() == ("", "")
    assert run.steps == tuple(range(0, runlogs.STEPS * runlogs.EVERY, runlogs.EVERY))
    assert [m.name for m in run.modules] == [n for n, _ in runlogs.MODULES]
    assert run.first_bad is not None and run.first_bad.step == runlogs.BAD_STEP
    assert heard.notes == []


def test_run_report_passes_its_notes_on(log: Path) -> None:
    text = log.read_text(encoding="utf-8")
    log.write_text(text + text.splitlines()[-1][:57], encoding="utf-8")
    heard = Heard()
    run = run_report(ReportRequest(log), announce=heard.notes.append)
    assert run.truncated and len(run.steps) == runlogs.STEPS
    assert heard.notes == [
        f"the last line of {log} is incomplete (a run still writing?); it was skipped"
    ]


def test_run_report_writes_the_page_it_is_given(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[tuple[int, ...]] = []

    def page(run: RunReport, steps: tuple[int, ...]) -> str:
        asked.append(steps)
        return f"<p>{len(run.modules)} modules</p>"

    out = tmp_path / "r.html"
    run_report(ReportRequest(log, html=out), html_page=page)
    assert out.read_text(encoding="utf-8") == "<p>6 modules</p>"
    run_report(ReportRequest(log, html=out, steps=(100, 200), force=True), html_page=page)
    # none by default (the page spreads its histograms over the run); the chosen ones, in order, when given
    assert asked == [(), (100, 200)]
    assert capsys.readouterr() == ("", "")


def test_run_report_refusals(log: Path, tmp_path: Path) -> None:
    def page(run: RunReport, steps: tuple[int, ...]) -> str:
        raise AssertionError("nothing is rendered after a refusal")

    with pytest.raises(
        UsageError, match=r"^--steps chooses the HTML's histograms: pass --html OUT.html too$"
    ):
        run_report(ReportRequest(log, steps=(100,)))
    out = tmp_path / "r.html"
    out.write_text("mine")
    with pytest.raises(UsageError, match=r" exists; pass --force to overwrite it$"):
        run_report(ReportRequest(log, html=out), html_page=page)
    with pytest.raises(UsageError, match=r"has no record at step 105 "):
        run_report(ReportRequest(log, html=out, steps=(105,), force=True), html_page=page)
    assert out.read_text() == "mine"
    with pytest.raises(UsageError, match=r" is also an input; write the result to another file$"):
        run_report(ReportRequest(log, html=log, force=True), html_page=page)
    with pytest.raises(TypeError, match=r"needs html_page"):
        run_report(ReportRequest(log, html=tmp_path / "new.html"))
