"""`modinspect report` (terminal): log-scaled sparklines, value ranges, update ratios per parameter tensor.

Checked value by value against the log, read here as plain JSON: the synthetic run of runlogs.write_blowup_run
(15 parameter tensors, one too slow, one too fast, `head`'s std growing 10× every 8 steps) and a real training
loop under modinspect.watch whose learning rate is multiplied by 1e6 at step 30.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

import modinspect
import runlogs
from conftest import Golden, invoke
from modinspect.render.text import SPARKS, series_sparkline
from modinspect.reports import UPDATE_RATIO_BAND
from modinspect.watching.log import LogHeader, LogWriter
from modinspect.watching.runlog import read_run_log

LOW, HIGH = UPDATE_RATIO_BAND
WIDTHS = (60, 80, 100, 120, 200)
# The tree's order of the blow-up run's parameters (the log has head's first).
TREE = (
    "embed.weight",
    *(
        f"encoder.layers.0.self_attn.{p}_proj.{k}"
        for p in ("q", "k", "v", "out")
        for k in ("weight", "bias")
    ),
    *(f"encoder.layers.0.mlp.{m}.{k}" for m in ("fc1", "fc2") for k in ("weight", "bias")),
    "head.weight",
    "head.bias",
)


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON literal {name}")

    return json.loads(text, parse_constant=refuse)


def _steps(log: Path) -> list[dict[str, Any]]:
    return [_strict(line) for line in log.read_text(encoding="utf-8").splitlines()[1:]]


def _ratios(steps: list[dict[str, Any]], name: str) -> list[tuple[int, float | None]]:
    return [(s["step"], p["update_ratio"]) for s in steps for p in s["params"] if p["name"] == name]


def _first(steps: list[dict[str, Any]], name: str, out: Any) -> int | None:
    return next((step for step, r in _ratios(steps, name) if r is not None and out(r)), None)


def _table(lines: list[str], header: str) -> list[str]:
    """The rows under the table whose title line starts with `header`."""
    at = next(i for i, line in enumerate(lines) if line.startswith(header))
    assert set(lines[at + 1]) == {"─"}
    rows = []
    for line in lines[at + 2 :]:
        if not line or not line.strip() or line.startswith(("columns hidden", "  " * 40)):
            break
        if re.match(r"\d+ more |all \d+ within", line):
            break
        rows.append(line)
    return rows


@pytest.fixture
def blowup(tmp_path: Path) -> Path:
    return runlogs.write_blowup_run(tmp_path / "blowup.jsonl")


def test_the_reader_flags_update_ratios_outside_the_band_value_by_value(blowup: Path) -> None:
    steps = _steps(blowup)
    report = read_run_log(blowup)
    assert [p.name for p in report.params] == [*TREE[-2:], *TREE[:-2]]  # the log's order
    for p in report.params:
        ratios = [r for _, r in _ratios(steps, p.name)]
        finite = [r for r in ratios if r is not None]
        assert p.update_ratio == tuple(ratios)
        assert p.too_slow_at == _first(steps, p.name, lambda r: 0 < r < LOW)
        assert p.too_fast_at == _first(steps, p.name, lambda r: r > HIGH)
        assert p.update_ratio_scale is not None
        assert (p.update_ratio_scale.min, p.update_ratio_scale.max) == (min(finite), max(finite))
        assert p.update_ratio_scale.log == (max(finite) / min(finite) >= 100)
        # ‖w‖ null after its first record: the weights were not finite there
        norms = [q["norm"] for s in steps for q in s["params"] if q["name"] == p.name]
        assert p.update_nonfinite == tuple(i > 0 and n is None for i, n in enumerate(norms))
    flagged = {
        p.name: (p.too_slow_at, p.too_fast_at)
        for p in report.params
        if p.too_slow_at or p.too_fast_at
    }
    assert flagged == {runlogs.SLOW: (10, None), runlogs.FAST: (None, 290)}
    fast = next(p for p in report.params if p.name == runlogs.FAST)
    assert fast.update_ratio_scale is not None and fast.update_ratio_scale.log  # 1e-3 … 0.5


def test_the_terminal_lists_flagged_tensors_in_tree_order_then_counts_the_rest(
    blowup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = _steps(blowup)
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", blowup.name, cwd=blowup.parent).stdout.splitlines()
    assert (
        "parameters: update ratio ‖Δw‖/‖w‖ per logged step, flagged outside [1e-4, 0.1] (2 of 15 flagged)"
        in lines
    )
    rows = [re.split(r"\s{3,}", row.strip()) for row in _table(lines, "parameter ")]
    last = {p["name"]: p for p in steps[-1]["params"]}
    fast, slow = runlogs.FAST, runlogs.SLOW
    # name, last ‖w‖, sparkline, last ratio, range, flag: in the tree's order (embed first)
    assert [r[0] for r in rows] == [slow, fast]
    assert rows[0][1] == f"{last[slow]['norm']:.4g}" and rows[0][3] == "2.00e-05"
    assert (
        rows[0][4] == "2.00e-05"
        and rows[0][5] == f"too slow at {_first(steps, slow, lambda r: r < LOW)}"
    )
    # FAST's weights were not finite at the last step (null ‖w‖): nan/inf, '×' in its sparkline
    assert last[fast]["norm"] is None and rows[1][1] == "nan/inf" and rows[1][3] == "nan/inf"
    fast_ratios = [r for _, r in _ratios(steps, fast) if r is not None]
    assert rows[1][4] == f"{min(fast_ratios):.3g} – {max(fast_ratios):g} log"
    assert rows[1][5] == f"too fast at {_first(steps, fast, lambda r: r > HIGH)}"
    assert rows[1][2].endswith("×")
    after = lines.index(_table(lines, "parameter ")[-1]) + 1
    assert lines[after] == "13 more within [1e-4, 0.1] at every logged step (--wide lists them)"
    assert lines[-2:] == [
        f"Update ratio too fast (above 0.1) from step 290: {fast}.",
        f"Update ratio too slow (below 1e-4) from step 10: {slow}.",
    ]
    # --wide: every tensor, in the tree's order, whatever the log's
    wide = invoke("report", blowup.name, "--wide", cwd=blowup.parent).stdout.splitlines()
    rows = [re.split(r"\s{3,}", row.strip()) for row in _table(wide, "parameter ")]
    assert [r[0] for r in rows] == list(TREE)
    assert not any("more within" in line for line in wide)


def test_a_module_spanning_orders_of_magnitude_is_log_scaled_and_tagged(
    blowup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`head`'s std is 10^(i/8) until its output turns NaN: its sparkline is the log10 of it, tagged `log`;
    every other module's range is its min – max, linear."""
    steps = _steps(blowup)
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", blowup.name, cwd=blowup.parent).stdout.splitlines()
    rows = {row.split()[0]: re.split(r"\s{3,}", row.strip()) for row in _table(lines, "module ")}
    # module, type, std sparkline, last std, std range, ‖∇out‖ sparkline, ‖∇out‖ range (every last ‖∇out‖
    # is nan: above the table)
    for k, (name, _) in enumerate(runlogs.BLOWUP_MODULES):
        std = [s["modules"][k]["std"] for s in steps if s["modules"][k]["std"] is not None]
        low, high = min(std), max(std)
        log = high / low >= 100
        leaf = name.rpartition(".")[2]
        shown = f"{low:.4g} – {high:.4g}" if not log else f"{low:.4g} – {high:.2e} log"
        assert rows[leaf][4] == shown, name
        assert log == (name == "head")
    # 17 cells of 3 steps: each the mean of log10(std), on the scale of those means; '×' from step 400
    head = [s["modules"][12]["std"] for s in steps]
    cells = [head[i : i + 3] for i in range(0, 50, 3)]
    means = [sum(math.log10(v) for v in c) / len(c) if None not in c else None for c in cells]
    finite = [m for m in means if m is not None]
    expected = "".join(
        "×" if m is None else SPARKS[round((m - min(finite)) / (max(finite) - min(finite)) * 7)]
        for m in means
    )
    assert rows["head"][2] == expected and expected.count("×") == 4
    # tagged in its range: no line above the table; at 80 columns, with no range column, the line names it
    assert not any(line.startswith("log scale") for line in lines)
    monkeypatch.setenv("COLUMNS", "80")
    narrow = invoke("report", blowup.name, cwd=blowup.parent).stdout.splitlines()
    assert [line for line in narrow if line.startswith("log scale")] == [
        "log scale (values spanning 100× or more): head std",
        "log scale (values spanning 100× or more): encoder.layers.0.mlp.fc2.weight",
    ]
    assert (
        narrow[
            narrow.index(
                "log scale (values spanning 100× or more): encoder.layers.0.mlp.fc2.weight"
            )
            + 1
        ]
        == "  ‖Δw‖/‖w‖"
    )
    linear = series_sparkline(tuple(head), tuple(v is None for v in head), 17)
    assert (
        rows["head"][2] != linear
    )  # on a linear scale the first 30 steps would all sit at the bottom
    assert linear.startswith("▁" * 9)


def test_series_sparkline_marks_overflow_apart_from_nan() -> None:
    assert series_sparkline((1.0, None, 2.0), over=(False, True, False)) == "▁↑█"
    assert series_sparkline((1.0, None, 2.0), (False, True, False)) == "▁×█"
    # a run of steps with both: NaN wins
    values = (1.0, None, None, 2.0)
    bad, over = (False, True, False, False), (True, False, False, False)
    assert series_sparkline(values, bad, 2, over=over) == "×▄"


def test_report_json_has_the_scales_and_the_flags(blowup: Path) -> None:
    steps = _steps(blowup)
    doc = _strict(invoke("report", blowup, "--json").stdout)
    head = next(m for m in doc["modules"] if m["name"] == "head")
    std = [s["modules"][12]["std"] for s in steps if s["modules"][12]["std"] is not None]
    assert head["std_scale"] == {"min": min(std), "max": max(std), "log": True}
    assert head["dead_fraction_scale"] is None
    plain = _strict(
        invoke("report", runlogs.write_run(blowup.parent / "run.jsonl"), "--json").stdout
    )
    # act1's dead fraction, 0 then 1: its range, never log-scaled (drawn on its fixed 0–1 scale)
    assert plain["modules"][1]["dead_fraction_scale"] == {"min": 0.0, "max": 1.0, "log": False}
    params = {p["name"]: p for p in doc["params"]}
    assert (
        params[runlogs.FAST]["too_fast_at"] == 290 and params[runlogs.FAST]["too_slow_at"] is None
    )
    assert params[runlogs.SLOW]["too_slow_at"] == 10 and params[runlogs.SLOW]["too_fast_at"] is None
    assert params[runlogs.FAST]["update_nonfinite"] == [
        i > runlogs.BLOWUP_NAN_FROM for i in range(50)
    ]
    assert params["head.bias"]["update_ratio_scale"]["log"] is False


@pytest.mark.parametrize("columns", WIDTHS)
def test_goldens_at_every_width_with_whole_last_name_components(
    blowup: Path, monkeypatch: pytest.MonkeyPatch, golden: Golden, columns: int
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    result = invoke("report", blowup.name, cwd=blowup.parent)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= columns
    golden(f"report_blowup_{columns}.txt", result.stdout)
    modules = _table(lines, "module ")
    params = _table(lines, "parameter ")
    assert len(modules) == len(runlogs.BLOWUP_MODULES) and len(params) == 2
    if columns < 100:
        return
    # every row's last name component whole: a module's leaf, a tensor's name or its tail after '…'
    leaves = sorted(n.rpartition(".")[2] for n, _ in runlogs.BLOWUP_MODULES)
    assert sorted(row.split()[0] for row in modules) == leaves
    for row, name in zip(params, (runlogs.SLOW, runlogs.FAST), strict=True):
        shown = row.split()[0]
        assert (
            name.endswith(shown.removeprefix("…")) and shown.split(".")[-1] == name.split(".")[-1]
        )


def test_many_tensors_none_flagged_is_one_line(blowup: Path) -> None:
    from modinspect.render.console import make_console, run_renderable

    run = read_run_log(blowup)
    run = replace(
        run, params=tuple(replace(p, too_slow_at=None, too_fast_at=None) for p in run.params)
    )
    buf = io.StringIO()
    make_console(file=buf, width=120).print(run_renderable(run, 120))
    lines = buf.getvalue().splitlines()
    at = lines.index(
        "parameters: update ratio ‖Δw‖/‖w‖ per logged step, flagged outside [1e-4, 0.1] (0 of 15 flagged)"
    )
    assert lines[at + 1] == "all 15 within [1e-4, 0.1] at every logged step (--wide lists them)"


def test_a_real_run_flags_the_update_ratio_of_its_lr_blow_up_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real training loop under watch, its lr multiplied by 1e6 from step 30: the first logged step with
    the new lr updates every tensor by far more than 0.1 of its norm; the report flags each, at that step."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 30 else 1e6)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    log = tmp_path / "real.jsonl"
    with (
        pytest.warns(modinspect.NonFiniteWarning),
        modinspect.watch(model, every=2, log=log, optimizer=opt) as w,
    ):
        for _ in range(40):
            loss = (model(x) - y).pow(2).mean()
            w.log_loss(loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    steps = _steps(log)
    names = [n for n, _ in model.named_parameters()]
    lrs = {s["step"]: s["optimizer"][0]["lr"] for s in steps}
    blow_up = min(s for s, lr in lrs.items() if lr > 0.01)  # the first logged step with the new lr
    fast = {n: _first(steps, n, lambda r: r > HIGH) for n in names}
    assert set(fast.values()) == {blow_up}  # every tensor, first at that step
    # before it every ratio was within the band: nothing flagged too slow
    assert all(_first(steps, n, lambda r: 0 < r < LOW) is None for n in names)
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", log.name, cwd=tmp_path).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("parameters: "))
    assert lines[at].endswith("(4 of 4 flagged)")
    # every row the same flag: said once, above the table
    assert f"update ratio too fast at {blow_up}" in lines[at + 1]
    rows = [re.split(r"\s{3,}", row.strip()) for row in _table(lines, "parameter ")]
    assert [r[0] for r in rows] == names
    ratios = {n: [r for _, r in _ratios(steps, n) if r is not None] for n in names}
    for row, n in zip(rows, names, strict=True):
        assert row[-1] == f"{min(ratios[n]):.4g} – {max(ratios[n]):.2e} log" or row[-1].endswith(
            f" – {max(ratios[n]):.2e} log"
        )
    assert f"Update ratio too fast (above 0.1) from step {blow_up}: {', '.join(names)}." in lines
    doc = _strict(invoke("report", log, "--json").stdout)
    assert {p["name"]: p["too_fast_at"] for p in doc["params"]} == fast


def test_parameter_names_from_the_log_are_shown_as_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensor's name is text from the file: markup and control characters come out escaped, in its row
    and in the verdict's line, never obeyed."""
    evil = "w[bold]\x1b[31m\u202e"
    records = [
        replace(
            runlogs.step_record(i, nonfinite_from=None, origin=None),
            params=(replace(runlogs.step_record(i).params[0], name=evil, update_ratio=0.5),),
        )
        for i in range(3)
    ]
    log = tmp_path / "evil.jsonl"
    header = LogHeader(model="Net", every=10, device="cpu", started=runlogs.STARTED)
    with LogWriter(log, header) as w:
        for record in records:
            w.write(record)
    monkeypatch.setenv("COLUMNS", "120")
    out = invoke("report", log.name, cwd=tmp_path).stdout
    shown = "w[bold]\\x1b[31m\\u202e"
    assert "\x1b" not in out and "\u202e" not in out
    assert f"Update ratio too fast (above 0.1) from step 0: {shown}." in out.splitlines()
    assert any(line.startswith(f"{shown}   ") for line in out.splitlines())


def test_the_update_verdict_groups_the_tensors_by_the_step_each_first_left_the_band(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real AdamW loop whose LayerNorm bias starts at zero (its early ratio is above 0.1) and whose lr is
    set to 10 at step 30 (Adam's steps of about lr per element: far too fast, still finite): the verdict names
    each tensor with the step it first went too fast."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    log = tmp_path / "run.jsonl"
    with modinspect.watch(model, every=5, log=log, optimizer=opt, on_nonfinite="log") as w:
        for step in range(40):
            if step == 30:
                for group in opt.param_groups:
                    group["lr"] = 10.0
            loss = model(torch.randn(8, 4)).square().mean()
            loss.backward()
            w.log_loss(loss)
            opt.step()
            opt.zero_grad()
    steps = _steps(log)
    names = [n for n, _ in model.named_parameters()]
    first = {n: _first(steps, n, lambda r: r > HIGH) for n in names}
    flagged = [n for n in names if first[n] is not None]
    assert first["1.bias"] is not None and len(flagged) > 2
    assert len({first[n] for n in flagged}) > 1  # the bias left the band earlier than the rest
    monkeypatch.setenv("COLUMNS", "200")
    result = invoke("report", log.name, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    out = result.stdout.splitlines()
    line = next(x for x in out if x.startswith("Update ratio too fast"))
    at = {n: s for n, s in first.items() if s is not None}
    order = sorted(flagged, key=lambda n: (at[n], names.index(n)))
    groups: dict[int, list[str]] = {}
    for n in order[:5]:
        groups.setdefault(at[n], []).append(n)
    said = "; ".join(f"from step {s}: {', '.join(g)}" for s, g in groups.items())
    more = f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""
    assert line == f"Update ratio too fast (above 0.1) {said}{more}."
