"""`modinspect report A.jsonl B.jsonl` in the terminal: two real training runs side by side, value by value.

The runs are real training loops under modinspect.watch (tests/runlogs.py `write_real_run`): one healthy, one
whose lr is multiplied by 1e6 at step 30 (NaN/Inf from step 34 on) and one where that happens at step 38 (its
last logged values finite, 2 to 1e7 times the healthy run's). Every number shown is checked against the
logs read as plain JSON; goldens at 60, 80, 100, 120 and 200 columns; names keep their last component whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

import runlogs
from conftest import Golden, invoke
from modinspect.render.text import num

WIDTHS = (60, 80, 100, 120, 200)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """healthy.jsonl, blowup.jsonl (lr × 1e6 from step 30) and late.jsonl (from step 38), one seed."""
    root = tmp_path_factory.mktemp("runs")
    runlogs.write_real_run(root / "healthy.jsonl", blow_up_at=10**6)
    runlogs.write_real_run(root / "blowup.jsonl")
    runlogs.write_real_run(root / "late.jsonl", blow_up_at=38)
    return root


def records(log: Path) -> list[dict[str, Any]]:
    """The log's step records, read as plain JSON (independently of modinspect's reader)."""
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()[1:]]


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    """The module table's heading and rows (split at runs of 2+ spaces)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["module"])
    assert set(lines[at + 1]) == {"─"}
    rows = []
    for line in lines[at + 2 :]:
        if not line or line.startswith("columns hidden"):
            break
        rows.append(_cells(line))
    return _cells(lines[at]), rows


def _shown(record: dict[str, Any], key: str) -> str:
    """A module's last value as the view shows it: `nan` where the log counted a NaN, else the number."""
    nan = record["nan"] if key == "std" else record["grad_nan"]
    inf = record["inf"] if key == "std" else record["grad_inf"]
    if nan:
        return "nan"
    if inf and record[key] is None:
        return "inf"
    return num(record[key])


@pytest.mark.parametrize("pair", [("blowup", "healthy"), ("healthy", "late")])
@pytest.mark.parametrize("width", WIDTHS)
def test_golden_at_width(
    logs: Path,
    pair: tuple[str, str],
    width: int,
    golden: Golden,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    result = invoke("report", f"{pair[0]}.jsonl", f"{pair[1]}.jsonl", cwd=logs)
    assert result.exit_code == 0, result.stderr
    golden(f"compare_{'_'.join(pair)}_{width}.txt", result.stdout)
    assert [line for line in result.stdout.splitlines() if cell_len(line) > width] == []
    assert all(line == line.rstrip() for line in result.stdout.splitlines())


def test_every_value_and_ratio_is_the_logs(logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    result = invoke("report", "healthy.jsonl", "late.jsonl", "--wide", cwd=logs)
    assert result.exit_code == 0, result.stderr
    head, rows = _table(result.stdout)
    assert head == [
        "module",
        "type",
        "std A",
        "std B",
        "std B/A",
        "‖∇out‖ A",
        "‖∇out‖ B",
        "‖∇out‖ B/A",
    ]
    a, b = records(logs / "healthy.jsonl")[-1], records(logs / "late.jsonl")[-1]
    assert [row[0] for row in rows] == ["(model)", "0", "1", "2"]
    for row, ma, mb in zip(rows, a["modules"], b["modules"], strict=True):
        assert row[1] == ma["type"] == mb["type"]
        for key, (shown_a, shown_b, ratio) in (("std", row[2:5]), ("grad_norm", row[5:8])):
            assert (shown_a, shown_b) == (num(ma[key]), num(mb[key]))
            assert ratio == (num(mb[key] / ma[key]) if ma[key] else "—")
    # The blow-up shows: every std ratio but the Tanh's (bounded by 1) is over 1000.
    assert [float(row[4]) > 1e3 for row in rows] == [True, True, False, True]
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "A  healthy.jsonl",
        "   Sequential on cpu, every 2 steps · 20 logged step(s), 2 … 40 · no NaN/Inf",
        "B  late.jsonl",
        "   Sequential on cpu, every 2 steps · 20 logged step(s), 2 … 40 · no NaN/Inf",
    ]
    for label, log in (("A", "healthy"), ("B", "late")):
        steps = records(logs / f"{log}.jsonl")
        loss = [s["loss"] for s in steps if s["loss"] is not None]
        lr = [s["optimizer"][0]["lr"] for s in steps]
        last = num(steps[-1]["loss"]) if steps[-1]["loss"] is not None else "nan/inf"
        assert next(line for line in lines if line.startswith(f"loss {label}")).endswith(
            f"  first {num(loss[0])} · last {last} · min {num(min(loss))} · max {num(max(loss))}"
        )
        assert next(line for line in lines if line.startswith(f"lr   {label}")).endswith(
            f"  first {num(lr[0])} · last {num(lr[-1])} · min {num(min(lr))} · max {num(max(lr))}"
        )
    assert "First bad step" not in result.stdout


def test_nan_is_marked_and_what_every_row_shares_moves_above_the_table(
    logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    result = invoke("report", "blowup.jsonl", "healthy.jsonl", cwd=logs)
    assert result.exit_code == 0, result.stderr
    a, b = records(logs / "blowup.jsonl")[-1], records(logs / "healthy.jsonl")[-1]
    # Run A's last step is past its blow-up: every output and gradient is NaN (its ‖∇out‖ logged as 0).
    assert {_shown(m, k) for m in a["modules"] for k in ("std", "grad_norm")} == {"nan"}
    assert {m["grad_norm"] for m in a["modules"]} == {0.0}
    lines = result.stdout.splitlines()
    shared = lines.index(next(line for line in lines if line.startswith("module "))) - 1
    assert lines[shared] == "std A nan · std B/A — · ‖∇out‖ A nan · ‖∇out‖ B/A —"
    head, rows = _table(result.stdout)
    assert head == ["module", "type", "std B", "‖∇out‖ B"]
    assert [row[2:] for row in rows] == [[num(m["std"]), num(m["grad_norm"])] for m in b["modules"]]
    bad = next(s for s in records(logs / "blowup.jsonl") if s["nonfinite"] is not None)
    assert lines[:4] == [
        "A  blowup.jsonl",
        f"   Sequential on cpu, every 2 steps · 20 logged step(s), 2 … 40 · first bad step {bad['step']}",
        "B  healthy.jsonl",
        "   Sequential on cpu, every 2 steps · 20 logged step(s), 2 … 40 · no NaN/Inf",
    ]
    verdict = lines[
        lines.index(
            f"A  First bad step {bad['step']}: the loss was already NaN/Inf before backward."
        )
        + 1 :
    ]
    assert (
        " ".join(line.strip() for line in verdict)
        == f"Before it: {bad['nonfinite']['explanation']}."
    )
    wide = invoke("report", "blowup.jsonl", "healthy.jsonl", "--wide", cwd=logs).stdout
    assert [row[2:] for row in _table(wide)[1]] == [
        ["nan", num(m["std"]), "—", "nan", num(m["grad_norm"]), "—"] for m in b["modules"]
    ]


def test_columns_picks_and_names_the_choices(logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    args = ("report", "healthy.jsonl", "late.jsonl")
    picked = invoke(*args, "--columns", "std_ratio,grad_norm_ratio", cwd=logs)
    assert picked.exit_code == 0, picked.stderr
    assert _table(picked.stdout)[0] == ["module", "std B/A", "‖∇out‖ B/A"]
    bad = invoke(*args, "--columns", "std,ratio", cwd=logs)
    assert (bad.exit_code, bad.stdout) == (2, "")
    assert bad.stderr == (
        "error: --columns: no column 'std' in this table; choose from type, std_a, std_b, "
        "std_ratio, grad_norm_a, grad_norm_b, grad_norm_ratio\n"
    )


def test_a_narrow_terminal_hides_the_type_first_and_says_so(
    logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    text = invoke("report", "healthy.jsonl", "late.jsonl", cwd=logs).stdout
    head, rows = _table(text)
    assert head == ["module", "std A", "std B", "std B/A", "‖∇out‖ B", "‖∇out‖ B/A"]
    wide = invoke("report", "healthy.jsonl", "late.jsonl", "--wide", cwd=logs).stdout
    rule = next(line for line in wide.splitlines() if set(line) == {"─"})
    # the width that shows every column is the --wide table's
    assert (
        f"columns hidden at 60 columns: type, ‖∇out‖ A (--wide or\nCOLUMNS={len(rule)} shows them"
        in text
    )
    b = records(logs / "late.jsonl")[-1]
    shown = [row[2] for row in rows]  # at the digits the whole table has room for, never cut
    assert any(shown == [num(m["std"], d) for m in b["modules"]] for d in (4, 3, 2))


BERT = (
    ("bert.embeddings.LayerNorm", "LayerNorm"),
    ("bert.encoder.layer.0.attention.self.query", "Linear"),
    ("bert.encoder.layer.0.attention.output.LayerNorm", "LayerNorm"),
    ("bert.encoder.layer.0.intermediate.intermediate_act_fn", "GELUActivation"),
    ("bert.encoder.layer.0.output.LayerNorm", "LayerNorm"),
    ("cls.predictions.transform.LayerNorm", "LayerNorm"),
)


@pytest.mark.parametrize("width", [100, 120, 200])
def test_every_rows_last_name_component_is_whole(
    tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    runlogs.write_run(tmp_path / "a.jsonl", nonfinite_from=None, modules=BERT)
    runlogs.write_run(tmp_path / "b.jsonl", modules=BERT)
    result = invoke("report", "a.jsonl", "b.jsonl", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    _, rows = _table(result.stdout)
    assert len(rows) == len(BERT)
    for (name, _), row in zip(BERT, rows, strict=True):
        cell = row[0]
        assert cell == name or (cell.startswith("…") and name.endswith("." + cell[1:])), (
            width,
            name,
            cell,
        )
    assert max(cell_len(line) for line in result.stdout.splitlines()) <= width


def test_a_run_without_a_finite_loss_says_so(tmp_path: Path) -> None:
    a = runlogs.write_run(
        tmp_path / "a.jsonl", steps=2, nonfinite_from=0
    )  # NaN from the first step
    b = runlogs.write_run(tmp_path / "b.jsonl", steps=1, nonfinite_from=None)
    lines = invoke("report", a, b).stdout.splitlines()
    assert [line for line in lines if line.startswith(("loss", "lr"))] == [
        "loss A  no finite value logged",
        "loss B  ▄  first 2 · last 2 · min 2 · max 2",
    ]  # neither run logged an optimizer: no lr lines


def test_the_json_document_is_both_runs_and_the_pairs(
    logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = json.loads(invoke("report", "blowup.jsonl", "healthy.jsonl", "--json", cwd=logs).stdout)
    a, b = records(logs / "blowup.jsonl"), records(logs / "healthy.jsonl")
    assert doc["a"]["loss"] == [s["loss"] for s in a] and doc["b"]["path"] == "healthy.jsonl"
    assert [m["name"] for m in doc["modules"]] == ["", "0", "1", "2"]
    assert doc["modules"][1]["std_b"] == b[-1]["modules"][1]["std"]


def test_names_and_explanations_from_the_logs_are_shown_as_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Module names, types and the explanation are text from the files: markup and control characters escaped."""
    monkeypatch.setenv("COLUMNS", "200")
    modules = (("enc.[bold]x[/bold]", "Lin\x1b[31mear"), ("enc.y\u202e", "ReLU"))
    evil = replace(runlogs.ORIGIN, module="enc.y\u202e", explanation="lr \x1b[31m[red]1e30[/red]")
    runlogs.write_run(tmp_path / "a.jsonl", nonfinite_from=None, modules=modules)
    runlogs.write_run(tmp_path / "b.jsonl", origin=evil, modules=modules)
    result = invoke("report", "a.jsonl", "b.jsonl", "--wide", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    _, rows = _table(result.stdout)
    assert [row[:2] for row in rows] == [
        ["enc.[bold]x[/bold]", "Lin\\x1b[31mear"],
        ["enc.y\\u202e", "ReLU"],
    ]
    assert "   Before it: lr \\x1b[31m[red]1e30[/red]." in result.stdout.splitlines()


def test_twenty_thousand_modules_render_in_linear_time(tmp_path: Path) -> None:
    """The table is laid out once (it was text appended and stripped row by row: 31 s of CPU at 4,000 modules)."""
    import io
    import time

    from modinspect.render.console import comparison_renderable, make_console
    from modinspect.watching.compare import compare_runs
    from modinspect.watching.runlog import read_run_log

    run = read_run_log(runlogs.write_run(tmp_path / "a.jsonl", steps=3, modules=BERT[:1]))
    many = tuple(
        replace(run.modules[0], name=f"blocks.{i // 10}.layer.{i % 10}.proj") for i in range(20_000)
    )
    other = tuple(replace(m, std=(*m.std[:-1], 1.0 + i)) for i, m in enumerate(many))
    pair = compare_runs(replace(run, modules=many), replace(run, modules=other))
    buf = io.StringIO()
    started = time.process_time()
    make_console(file=buf, width=120).print(comparison_renderable(pair, 120))
    cpu = time.process_time() - started
    _, rows = _table(buf.getvalue())
    assert len(rows) == 20_000  # the type and std A, the same on every row, are above the table
    std_a = many[-1].std[-1]
    assert std_a is not None
    assert rows[-1] == ["blocks.1999.layer.9.proj", num(20_000.0), num(20_000.0 / std_a)]
    assert cpu < 20, cpu  # about 2.5 s on a busy 2-core machine


def test_a_module_only_one_run_has_is_absent_in_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    runlogs.write_run(tmp_path / "a.jsonl", nonfinite_from=None, modules=BERT[:2])
    runlogs.write_run(tmp_path / "b.jsonl", nonfinite_from=None, modules=BERT[1:3])
    result = invoke("report", "a.jsonl", "b.jsonl", "--wide", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    a, b = (
        records(tmp_path / "a.jsonl")[-1]["modules"],
        records(tmp_path / "b.jsonl")[-1]["modules"],
    )
    _, rows = _table(result.stdout)
    a0, a1, b1, b2 = a[0], a[1], b[0], b[1]  # BERT[1] is in both
    assert rows == [  # A's order, then B's own
        [
            BERT[0][0],
            "LayerNorm",
            num(a0["std"]),
            "absent",
            "—",
            num(a0["grad_norm"]),
            "absent",
            "—",
        ],
        [
            BERT[1][0],
            "Linear",
            num(a1["std"]),
            num(b1["std"]),
            num(b1["std"] / a1["std"]),
            num(a1["grad_norm"]),
            num(b1["grad_norm"]),
            num(b1["grad_norm"] / a1["grad_norm"]),
        ],
        [
            BERT[2][0],
            "LayerNorm",
            "absent",
            num(b2["std"]),
            "—",
            "absent",
            num(b2["grad_norm"]),
            "—",
        ],
    ]


def test_ratios_beyond_two_fold_are_styled_as_differences(logs: Path) -> None:
    from rich.console import Console

    from modinspect.render.console import THEME, comparison_renderable
    from modinspect.watching.compare import compare_runs
    from modinspect.watching.runlog import read_run_log

    healthy, late = (read_run_log(logs / f"{name}.jsonl") for name in ("healthy", "late"))
    console = Console(width=200, force_terminal=True, color_system="truecolor")
    console.push_theme(THEME)

    def styles(pair: Any) -> dict[str, str]:
        """Each ratio cell's text -> its style (from the rows' last two cells of each metric)."""
        lines = console.render_lines(comparison_renderable(pair, 200), console.options, pad=False)
        return {
            s.text.strip(): str(s.style or "")
            for line in lines
            for s in line
            if re.fullmatch(r"\d[\d.e+-]*", s.text.strip())
        }

    shown = styles(compare_runs(healthy, late))
    # std B/A 2.23e+04 and 1228 (the Linears), 2.019 (the Tanh: just over 2×), ‖∇out‖ B/A 1.07e+06 ...
    assert all(shown[r] == "yellow" for r in ("2.23e+04", "1228", "2.019", "1.07e+06", "3483"))
    assert {v for k, v in styles(compare_runs(healthy, healthy)).items() if k == "1"} == {""}


def test_a_gradient_norm_that_overflowed_reads_inf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A norm logged as null with no NaN/Inf counted overflowed (its sum of squares did): `inf`, as `report LOG`
    marks it, not `—` (no value)."""
    monkeypatch.setenv("COLUMNS", "200")
    runlogs.write_run(tmp_path / "a.jsonl", nonfinite_from=None, modules=BERT[:2])
    runlogs.write_run(tmp_path / "b.jsonl", nonfinite_from=None, modules=BERT[:2])
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])
    last["modules"][1].update(grad_norm=None, grad_nan=0, grad_inf=0)
    lines[-1] = json.dumps(last)
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("report", "a.jsonl", "b.jsonl", "--wide", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    _, rows = _table(result.stdout)
    b1 = records(tmp_path / "b.jsonl")[-1]["modules"][1]
    assert rows[1][5:] == ["inf", num(b1["grad_norm"]), "—"]
