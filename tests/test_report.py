"""`modinspect report LOG`: the watch-log writer, the reader, the terminal/JSON views and the HTML page."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import modinspect
import runlogs
from browser import find_chromium, load_page
from conftest import Golden, invoke
from modinspect.errors import CorruptFileError, UnknownFormatError, UsageError
from modinspect.render.text import SPARKS, series_sparkline
from modinspect.watching.log import SCHEMA, GroupRecord, LogHeader, LogWriter, write_record
from modinspect.watching.runlog import read_run_log

EVIL = '<img src=x onerror="alert(1)">&\'"'


def _strict(line: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON literal {name}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return runlogs.write_run(tmp_path / "run.jsonl")


# --- the writer ---------------------------------------------------------------------------------------------


def test_writer_writes_a_header_then_one_strict_json_line_per_step(run: Path) -> None:
    lines = run.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + runlogs.STEPS
    header = _strict(lines[0])
    assert header == {
        "schema": SCHEMA,
        "kind": "header",
        "model": "Net",
        "every": 10,
        "started": runlogs.STARTED,
        "device": "cpu",
        "world_size": 1,
    }
    bad = _strict(lines[1 + runlogs.BAD_INDEX])
    assert isinstance(bad, dict)
    sqrt = bad["modules"][4]
    # NaN statistics are null plus their counts; the loss too.
    assert (
        sqrt["name"],
        sqrt["std"],
        sqrt["mean"],
        sqrt["nan"],
        sqrt["grad_norm"],
        sqrt["grad_nan"],
    ) == ("sqrt", None, None, 16, None, 64)
    assert bad["loss"] is None and bad["nonfinite"]["op"] == "aten::sqrt"
    assert _strict(lines[1])["modules"][0]["histogram"] == {
        "edges": list(runlogs.EDGES),
        "counts": [1, 2, 3, 4, 5, 1, 2, 3],
    }


def test_writer_flushes_each_record_before_closing(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    with LogWriter(path, LogHeader(model="Net", every=1, device="cpu")) as log:
        log.write(runlogs.step_record(0))
        assert len(path.read_text(encoding="utf-8").splitlines()) == 2
        log.write(runlogs.step_record(1))
        assert read_run_log(path).steps == (0, 10)


def test_writer_refuses_an_existing_log_without_force(run: Path) -> None:
    header = LogHeader(model="Other", every=1, device="cpu")
    with pytest.raises(UsageError, match=r"run\.jsonl exists; pass --force to overwrite it"):
        LogWriter(run, header)
    assert len(run.read_text().splitlines()) == 51
    with LogWriter(run, header, force=True):
        pass
    assert _strict(run.read_text().splitlines()[0])["model"] == "Other"


def test_write_record_appends_to_any_text_stream(tmp_path: Path) -> None:
    path = tmp_path / "own.jsonl"
    with path.open("w", encoding="utf-8") as f:
        write_record(f, LogHeader(model="m", every=5, device="cuda:0", world_size=2, started=1.0))
        write_record(f, runlogs.step_record(0, nonfinite_from=None))
    report = read_run_log(path)
    assert (report.header.device, report.header.world_size, report.header.every) == ("cuda:0", 2, 5)


def test_the_docs_document_every_field_the_writer_writes() -> None:
    from conftest import REPO
    from modinspect.watching.log import header_document, step_document

    page = (REPO / "docs" / "report.md").read_text(encoding="utf-8")
    schema = page[page.index("## The watch log, schema `modinspect.watch/1`") :]
    record = step_document(runlogs.step_record(runlogs.BAD_INDEX))
    keys = [
        *header_document(LogHeader(model="m", every=1, device="cpu")),
        *record,
        *record["modules"][0],
        *record["modules"][0]["histogram"],
        *record["params"][0],
        *record["nonfinite"],
    ]
    assert [k for k in keys if f'"{k}"' not in schema] == []


# --- the reader ---------------------------------------------------------------------------------------------


def test_read_run_log_gives_series_the_first_bad_step_and_gradient_flow(run: Path) -> None:
    report = modinspect.read_run_log(run)
    assert report.steps == tuple(range(0, 500, 10))
    assert [m.name for m in report.modules] == [n for n, _ in runlogs.MODULES]
    fc1, sqrt = report.modules[0], report.modules[4]
    assert fc1.std == tuple(runlogs.std_of("fc1", i) for i in range(50))
    assert sqrt.std == tuple(runlogs.std_of("sqrt", i) for i in range(30)) + (None,) * 20
    assert sqrt.nonfinite == (False,) * 30 + (True,) * 20
    assert report.modules[1].dead_fraction == (0.0,) * 25 + (1.0,) * 25
    assert [len(m.histograms) for m in report.modules] == [50, 50, 50, 50, 30, 30]
    grads = [runlogs.grad_of("fc1", i) for i in range(30)]
    assert fc1.grad_norm_mean == pytest.approx(statistics.fmean(grads), rel=1e-12)
    assert fc1.grad_norm_max == max(grads) == 1000.0
    assert [m.flags for m in report.modules] == [("exploding-grad",), (), (), (), (), ()]
    assert [m.first_bad_step for m in report.modules] == [300] * 6
    bad = report.first_bad
    assert bad is not None
    assert (
        bad.step,
        bad.module,
        bad.type,
        bad.phase,
        bad.op,
        bad.source,
        bad.cause,
        bad.recorded,
    ) == (300, "sqrt", "SqrtShift", "forward", "aten::sqrt", "train.py:42", "produced", True)
    assert bad.affected == ("fc1", "act1", "fc2", "act2", "sqrt", "head")
    assert report.params[0].update_ratio == (None,) + (0.001,) * 49
    assert report.truncated is False and report.notes == ()


def test_without_an_origin_record_the_first_module_with_a_nan_output_is_named(
    tmp_path: Path,
) -> None:
    report = read_run_log(runlogs.write_run(tmp_path / "r.jsonl", nonfinite_from=7, origin=None))
    bad = report.first_bad
    assert bad is not None
    assert (bad.step, bad.module, bad.phase, bad.op, bad.recorded) == (
        70,
        "sqrt",
        "forward",
        None,
        False,
    )


def test_a_gradient_only_nan_is_traced_to_the_last_module_in_forward_order(tmp_path: Path) -> None:
    modules = (
        ("fc1", "Linear"),
        ("act1", "ReLU"),
        ("fc2", "Linear"),
    )  # no sqrt/head: only gradients go bad
    report = read_run_log(
        runlogs.write_run(tmp_path / "r.jsonl", nonfinite_from=3, origin=None, modules=modules)
    )
    bad = report.first_bad
    assert bad is not None
    assert (bad.step, bad.module, bad.phase, bad.affected) == (
        30,
        "fc2",
        "backward",
        ("fc1", "act1", "fc2"),
    )


def test_a_clean_run_has_no_bad_step(tmp_path: Path) -> None:
    report = read_run_log(runlogs.write_run(tmp_path / "r.jsonl", nonfinite_from=None))
    assert report.first_bad is None and all(m.first_bad_step is None for m in report.modules)


def test_values_at_the_edge_of_float64_render_in_every_view(tmp_path: Path) -> None:
    """1.7e308 everywhere: the gradient-flow mean of two of them overflowed (fsum); now every view renders."""
    big, path = 1.7e308, tmp_path / "edge.jsonl"
    first = 2**63 - 3
    with LogWriter(path, LogHeader(model="Net", every=1, device="cpu", started=big)) as log:
        for i in range(3):
            record = runlogs.step_record(i, nonfinite_from=None)
            modules = tuple(
                replace(m, std=big, mean=-big, min=-big, max=big, grad_norm=big)
                for m in record.modules
            )
            log.write(
                replace(record, step=first + i, time=big, loss=big * (-1) ** i, modules=modules)
            )
    report = read_run_log(path)
    assert report.modules[0].grad_norm_mean == pytest.approx(big, rel=1e-12)
    terminal = invoke("report", str(path))
    assert terminal.exit_code == 0, terminal.output
    assert (
        f"3 logged step(s), steps {first} … {first + 2}, started at unix time 1.7e+308"
        in terminal.stdout
    )
    assert (
        "loss  █▁█  first 1.70e+308 · last 1.70e+308 · min -1.70e+308 · max 1.70e+308"
        in terminal.stdout
    )  # +big, -big, +big: a span of inf, halved
    # the loss's first, last, min and max, then the last std and ‖∇out‖ and their ranges (one value: flat),
    # the same in all 6 modules: once, above the table
    assert terminal.stdout.count("1.70e+308") == 4 + 4
    assert (
        "last std 1.70e+308 · std range 1.70e+308 · last ‖∇out‖ 1.70e+308 · ‖∇out‖ range 1.70e+308\n"
        in terminal.stdout
    )
    doc = json.loads(invoke("report", str(path), "--json").stdout)
    assert doc["modules"][0]["grad_norm_mean"] == pytest.approx(big, rel=1e-12)
    assert invoke("report", str(path), "--html", str(tmp_path / "r.html")).exit_code == 0


def test_a_partial_last_line_is_skipped_with_a_note(run: Path) -> None:
    text = run.read_text(encoding="utf-8")
    run.write_text(
        text + text.splitlines()[-1][:57], encoding="utf-8"
    )  # a run still writing step 500
    report = read_run_log(run)
    assert report.steps[-1] == 490 and report.truncated
    result = invoke("report", run)
    assert result.exit_code == 0
    assert (
        result.stderr
        == f"note: the last line of {run} is incomplete (a run still writing?); it was skipped\n"
    )


def test_unknown_record_kinds_are_skipped_with_a_note(run: Path) -> None:
    with run.open("a", encoding="utf-8") as f:
        f.write('{"kind": "end", "time": 1.0}\n')
    assert read_run_log(run).notes == (
        "skipped 1 record(s) of kind 'end', which this modinspect does not know",
    )


def _replace_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _edit_step(path: Path, number: int, edit: Callable[[dict[str, Any]], object]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[number - 1])
    edit(record)
    _replace_line(path, number, json.dumps(record))


@pytest.mark.parametrize(
    ("breach", "message"),
    [
        (lambda r: r["modules"][1].pop("std"), "line 5: the step record module 'act1' lacks 'std'"),
        (
            lambda r: r["modules"][0].update(nan="3"),
            "line 5: the step record module 'fc1' has 'nan' = \"3\", not int",
        ),
        (
            lambda r: r["modules"][0].update(calls=True),
            "line 5: the step record module 'fc1' has 'calls' = true, not int",
        ),
        (
            lambda r: r["modules"][0].update(std="x"),
            "module 'fc1' has 'std' = \"x\", not int/number or null",
        ),
        (lambda r: r.update(step=-1), "line 5: the step record has 'step' = -1, below 0"),
        (lambda r: r.update(step=20), "line 5: step 20 does not follow step 20"),
        (lambda r: r.pop("modules"), "line 5: the step record lacks the list 'modules'"),
        (
            lambda r: r["modules"][2]["histogram"]["edges"].pop(),
            "module 'fc2' has a histogram with 8 edges for 8 counts",
        ),
        (
            lambda r: r["modules"][2]["histogram"]["counts"].__setitem__(0, True),
            "module 'fc2' has a histogram whose counts are not all integers ≥ 0",
        ),
        (
            lambda r: r["modules"][2]["histogram"]["counts"].__setitem__(3, -1),
            "whose counts are not all integers ≥ 0",
        ),
        (
            lambda r: r["modules"][2]["histogram"]["edges"].__setitem__(3, "0.5"),
            "whose edges are not all numbers",
        ),
        (
            lambda r: r.update(
                nonfinite={
                    "module": "a",
                    "type": "b",
                    "phase": "sideways",
                    "op": None,
                    "source": None,
                    "code": None,
                    "cause": "produced",
                }
            ),
            "nonfinite phase 'sideways'",
        ),
    ],
)
def test_schema_breaches_name_the_line(
    run: Path, breach: Callable[[dict[str, Any]], object], message: str
) -> None:
    _edit_step(run, 5, breach)
    with pytest.raises(CorruptFileError) as info:
        read_run_log(run)
    assert message in str(info.value)
    result = invoke("report", run)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {info.value}\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "{p} is empty, not a modinspect watch log"),
        (
            '{"a": 1}\n',
            "{p} is not a modinspect watch log (its first line is not a modinspect.watch/1 header)",
        ),
        (
            "\x89PNG\r\n\x1a\n\x00\x00",
            "{p} is not a modinspect watch log (its first line is not a modinspect.watch/1 header)",
        ),
        (
            '{"schema": "modinspect.watch/2", "kind": "header"}\n',
            "{p} is a modinspect.watch/2 log; this modinspect reads modinspect.watch/1: upgrade it",
        ),
        (
            '{"schema": "modinspect.watch/1", "kind": "header", "model": "m", "every": 0, "started": 1, "device": "cpu", '
            '"world_size": 1}\n',
            "{p} line 1: the header has 'every' or 'world_size' below 1",
        ),
        (
            '{"schema": "modinspect.watch/1", "kind": "header", "model": "m", "every": 1, "started": 1, "device": "cpu", '
            '"world_size": 1}\n',
            "{p} has a header but no step records yet",
        ),
    ],
)
def test_files_that_are_not_watch_logs_are_one_error_line(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(content.encode("latin-1"))
    result = invoke("report", path)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == "error: " + message.format(p=path) + "\n"


def test_a_broken_line_in_the_middle_and_a_nan_literal_are_errors(run: Path) -> None:
    _replace_line(run, 3, '{"kind": "step", "step": ')
    result = invoke("report", run)
    assert result.exit_code == 2
    assert result.stderr == f"error: {run} line 3 is not JSON (Expecting value)\n"
    _replace_line(run, 3, run.read_text().splitlines()[3].replace('"loss":1.94', '"loss":NaN'))
    with pytest.raises(
        CorruptFileError,
        match="line 3: the step record holds the literal NaN; the schema writes "
        "non-finite values as null",
    ):
        read_run_log(run)


def test_two_runs_in_one_file_are_an_error(run: Path) -> None:
    text = run.read_text(encoding="utf-8")
    run.write_text(text + text, encoding="utf-8")
    result = invoke("report", run)
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {run} line 52 is a second header: two runs in one log?\n",
    )


def test_missing_file_and_directory(tmp_path: Path) -> None:
    result = invoke("report", tmp_path / "nope.jsonl")
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {tmp_path / 'nope.jsonl'} does not exist\n",
    )
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {tmp_path} is a directory, not a modinspect watch log (a .jsonl file)\n"
    )
    with pytest.raises(UnknownFormatError):
        read_run_log(tmp_path)


# --- the terminal and JSON views ----------------------------------------------------------------------------


def test_series_sparkline_cells() -> None:
    assert series_sparkline(tuple(float(v) for v in range(8)), width=8) == SPARKS
    # Longer than the width: runs of two steps, each its mean (0.5, 2.5, 4.5, 6.5 on the 0.5–6.5 scale).
    assert series_sparkline(tuple(float(v) for v in range(8)), width=4) == "▁▃▆█"
    assert series_sparkline((1.0, 1.0, None, 1.0), (False, False, False, True)) == "▄▄ ×"
    assert series_sparkline((1e-4, 1e-2, 1.0), log=True) == "▁▅█"
    assert series_sparkline((0.0, 0.5, 1.0), lo=0.0, hi=1.0) == "▁▅█"
    assert series_sparkline((0.0, 0.0), lo=0.0, hi=1.0) == "▁▁"


def test_terminal_view_has_the_sparklines_of_the_known_series(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "280")  # wide enough for one cell per step, with first → last
    result = invoke("report", run)
    assert result.exit_code == 0 and result.stderr == ""
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    std = "".join(SPARKS[i // 7] for i in range(50))
    grad = "".join(SPARKS[i % 8] for i in range(30)) + "×" * 20
    assert f"  {std}  " in rows["fc1"] and f" {grad} " in rows["fc1"]
    assert " " + "▁" * 25 + "█" * 25 + " " in rows["act1"]
    assert rows["act1"].split()[-1] == "100.0%"
    lines = result.stdout.splitlines()
    # the first bad step once, above the table; every module's last ‖∇out‖ once too
    assert lines[3] == "first bad step 300"
    # first → last beside each sparkline: fc1's std 1 → 1.7, its ‖∇out‖ 1e-4 → NaN
    assert f"  {runlogs.std_of('fc1', 0):g} → {runlogs.std_of('fc1', 49):g}  " in rows["fc1"]
    assert f"  {runlogs.grad_of('fc1', 0):.2e} → nan  " in rows["fc1"]
    assert rows["sqrt"].split()[:3] == ["sqrt", "◀", "SqrtShift"]
    assert (
        " " + "".join(SPARKS[round(i / 29 * 7)] for i in range(30)) + "×" * 20 + " " in rows["sqrt"]
    )
    assert result.stdout.splitlines()[:3] == [
        f"{run}  (modinspect.watch/1: Net on cpu, every 10 steps)",
        "50 logged step(s), steps 0 … 490, started 2026-01-01 00:00:00 UTC",
        "loss  "
        + "".join(SPARKS[7 - round(i / 29 * 7)] for i in range(30))
        + "×" * 20
        + f"  first 2 · last nan/inf · min {2.0 - 0.03 * 29:.4g} · max 2",
    ]
    assert result.stdout.endswith(
        "First bad step 300: NaN/Inf produced by sqrt (SqrtShift) in forward, op aten::sqrt at train.py:42: return "
        "torch.sqrt(x - 1); also non-finite there: fc1, act1, fc2, act2, head.\n"
        "Gradient flow: exploding mean ‖∇out‖ at fc1.\n"
    )


def test_terminal_view_golden_at_120_columns(run: Path, golden: Golden) -> None:
    result = invoke("report", "run.jsonl", cwd=run.parent)
    assert result.exit_code == 0
    golden("report_run.txt", result.stdout)


@pytest.mark.parametrize("columns", [60, 80, 100, 200])
def test_terminal_view_goldens_at_every_width(
    run: Path, monkeypatch: pytest.MonkeyPatch, golden: Golden, columns: int
) -> None:
    """Like every renderer, report has goldens at 60, 80, 100, 120 (above) and 200 columns, and no line is wider."""
    monkeypatch.setenv("COLUMNS", str(columns))
    result = invoke("report", "run.jsonl", cwd=run.parent)
    assert result.exit_code == 0
    assert max(len(line) for line in result.stdout.splitlines()) <= columns
    golden(f"report_run_{columns}.txt", result.stdout)


# 'bad at 300' and the last ‖∇out‖ (nan/inf on every row) move above the table: their width goes to the sparklines.
@pytest.mark.parametrize(
    ("columns", "cells", "has_type", "has_last"),
    [(80, 17, False, False), (95, 17, False, True), (120, 17, True, True), (200, 25, True, True)],
)
def test_narrow_terminals_drop_columns_not_sparkline_cells(
    run: Path,
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
    cells: int,
    has_type: bool,
    has_last: bool,
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = invoke("report", run).stdout.splitlines()
    table = [line for line in lines if line.startswith(("module", "  "))]
    assert max(len(line) for line in table) <= columns and not any("…" in line for line in table)
    assert ("type" in table[0], "last" in table[0]) == (has_type, has_last)
    act1 = next(line for line in table if line.startswith("  act1"))
    sparks = [t for t in act1.split() if set(t) <= set(SPARKS + "×")]
    # std, ‖∇out‖ and the dead fraction (0 for 25 steps, then 1), each in `cells` runs of ceil(50 / cells) steps.
    assert [len(t) for t in sparks] == [cells] * 3
    assert sparks[2][0] == "▁" and sparks[2][-1] == "█"


def test_clean_run_verdict(tmp_path: Path) -> None:
    result = invoke("report", runlogs.write_run(tmp_path / "r.jsonl", nonfinite_from=None))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-2:] == [
        "No NaN/Inf in 50 logged step(s).",
        "Gradient flow: exploding mean ‖∇out‖ at fc1.",
    ]


def test_json_document(run: Path) -> None:
    result = invoke("report", run, "--json")
    assert result.exit_code == 0
    doc = _strict(result.stdout)
    assert isinstance(doc, dict)
    assert doc["schema_version"] == 2 and doc["header"]["schema"] == SCHEMA
    assert doc["steps"] == list(range(0, 500, 10))
    assert doc["first_bad"] == {
        "step": 300,
        "module": "sqrt",
        "type": "SqrtShift",
        "phase": "forward",
        "op": "aten::sqrt",
        "source": "train.py:42",
        "code": "        return torch.sqrt(x - 1)",
        "cause": "produced",
        "recorded": True,
        "affected": ["fc1", "act1", "fc2", "act2", "sqrt", "head"],
        "rank": None,
        "explanation": None,  # runlogs.ORIGIN has none
    }
    fc1, act1, sqrt = doc["modules"][0], doc["modules"][1], doc["modules"][4]
    assert fc1["std"] == [runlogs.std_of("fc1", i) for i in range(50)]
    assert fc1["grad_norm"] == [runlogs.grad_of("fc1", i) for i in range(30)] + [None] * 20
    assert fc1["grad_norm_max"] == 1000.0 and fc1["flags"] == ["exploding-grad"]
    assert act1["dead_fraction"] == [0.0] * 25 + [1.0] * 25
    assert sqrt["nonfinite"] == [False] * 30 + [True] * 20 and sqrt["first_bad_step"] == 300
    assert sqrt["histograms"][0] == {
        "step": 0,
        "edges": list(runlogs.EDGES),
        "counts": list(runlogs.counts_of(4, 0)),
    }
    assert doc["loss"][29] == pytest.approx(2.0 - 0.03 * 29) and doc["loss"][30] is None
    assert doc["params"][0]["name"] == "fc1.weight" and doc["truncated"] is False


# --- the HTML page ------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Counts each chart's marks: {chart: {"rect.cell": n, ...}}; records tags and text."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[tuple[str, dict[str, str]]] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "svg" and a.get("data-chart"):
            self.current = str(a["data-chart"])
            self.charts.append((self.current, {k: str(v) for k, v in a.items()}))
        elif self.current and tag in ("rect", "path"):
            key = f"{tag}.{(a.get('class') or '').replace(' ', '.')}"
            bucket = self.counts.setdefault(self.current, {})
            bucket[key] = bucket.get(key, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_html_refuses_to_overwrite_without_force(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("mine")
    result = invoke("report", run, "--html", out)
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {out} exists; pass --force to overwrite it\n",
    )
    assert out.read_text() == "mine"
    assert invoke("report", run, "--html", out, "--force").exit_code == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    result = invoke("report", run, "--html", run, "--force")
    assert result.stderr == f"error: {run} is also an input; write the result to another file\n"
    assert list(tmp_path.glob("*.tmp")) == []


def test_html_escapes_names_from_the_model(tmp_path: Path) -> None:
    modules = ((EVIL, "Evil<b>Type</b>"), ("act</text><script>x()</script>", "ReLU"))
    log = runlogs.write_run(tmp_path / "evil.jsonl", nonfinite_from=None, modules=modules)
    out = tmp_path / "evil.html"
    assert invoke("report", log, "--html", out).exit_code == 0
    raw = out.read_text(encoding="utf-8")
    assert "<img" not in raw and "<script" not in raw and "<b>" not in raw
    page = _parse(out)
    assert "script" not in {tag for tag, _ in page.tags}
    assert {a["data-module"] for _, a in page.tags if a.get("class") == "bar max"} == {
        EVIL,
        modules[1][0],
    }
    assert "Evil<b>Type</b>" in "".join(page.text)


# --- the browser test ---------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed: `apt-get install -y chromium` (what .ci/run does where apt-get works)",
)


@needs_chromium
def test_html_with_hostile_names_runs_nothing_in_chromium(tmp_path: Path) -> None:
    modules = (
        (EVIL, "Evil<b>Type</b>"),
        ("act</text><script>console.error('ran')</script>", "ReLU"),
    )
    log = runlogs.write_run(tmp_path / "evil.jsonl", nonfinite_from=None, modules=modules)
    out = tmp_path / "evil.html"
    assert invoke("report", log, "--html", out).exit_code == 0
    script = (
        "JSON.stringify([document.querySelectorAll('script, img').length, "
        "[...document.querySelectorAll('rect.bar.max')].map(r => r.dataset.module)])"
    )
    result = load_page(out, script)
    assert result.errors == []
    assert json.loads(result.value) == [0, [EVIL, modules[1][0]]]


def test_a_forward_only_log_without_histograms_still_renders(tmp_path: Path) -> None:
    from modinspect.watching.log import ModuleRecord, StepRecord

    log, out = tmp_path / "fwd.jsonl", tmp_path / "fwd.html"
    with LogWriter(log, LogHeader(model="m", every=1, device="cpu", started=0.0)) as w:
        for i in range(3):
            w.write(
                StepRecord(
                    step=i,
                    time=float(i),
                    loss=None,
                    modules=(
                        ModuleRecord(
                            "a", "ReLU", 1, 4, 0.0, 0.0, 0.0, 0.0, 1.0, 0, 0, 1.0, None, 0, 0
                        ),
                    ),
                )
            )
    result = invoke("report", log)
    assert result.exit_code == 0
    # no 'bad at' column: the run had no bad step; the std flat at 0, no gradient, all units dead
    assert (
        "  a      ReLU   ▄▄▄      0       0               —       —   ███    100.0%   100.0%"
        in result.stdout.splitlines()
    )
    assert not any("bad" in line for line in result.stdout.splitlines())
    assert invoke("report", log, "--html", out).exit_code == 0
    page = _parse(out)
    assert "gradient-flow" not in page.counts
    # logged without a gradient: "no gradient" cells, not "not logged" ones
    cells = {k: v for k, v in page.counts["grad-heatmap"].items() if k.startswith("rect.cell")}
    assert cells == {"rect.cell.novalue": 3}
    assert page.counts["dead-fraction"]["path.line"] == 1
    text = "".join(page.text)
    assert (
        "No gradient norms in this log (forward only)." in text
        and "No histograms in this log." in text
    )


def test_ci_installs_chromium_only_when_missing_and_apt_get_exists() -> None:
    from conftest import REPO

    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert (
        "if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then" in ci
    )
    assert (
        "DEBIAN_FRONTEND=noninteractive apt-get install -y" in ci
        and "chromium chromium-driver" in ci
    )


def test_a_log_with_no_modules_and_a_nan_weight_norm(tmp_path: Path) -> None:
    from modinspect.watching.log import ParamRecord, StepRecord

    log, out = tmp_path / "empty.jsonl", tmp_path / "empty.html"
    with LogWriter(log, LogHeader(model="m", every=1, device="cpu", started=0.0)) as w:
        w.write(
            StepRecord(
                step=0,
                time=0.0,
                loss=1.0,
                modules=(),
                params=(ParamRecord("w", float("nan"), None, None, None),),
            )
        )
    report = read_run_log(log)
    assert report.modules == () and report.params[0].norm == (None,)
    assert invoke("report", log).exit_code == 0
    assert invoke("report", log, "--html", out).exit_code == 0
    assert "No modules in this log." in "".join(_parse(out).text)


def _write_steps(path: Path, records: list[Any]) -> Path:
    header = LogHeader(model="Net", every=10, device="cpu", world_size=1, started=runlogs.STARTED)
    with LogWriter(path, header) as log:
        for record in records:
            log.write(record)
    return path


def test_last_values_show_overflow_as_numbers_and_nan_inf_apart_from_no_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A std of 1e30 is a number; a std whose sum of squares overflowed (logged as null over a finite output)
    is `inf`; a std over a NaN output is `nan`; a gradient with Inf but no NaN is `inf`; no value is `—`.
    In the sparklines a NaN step is `×` and an overflow `↑`; beside them the range, `log` where it spans 100×."""
    records = []
    for i in range(4):
        step = runlogs.step_record(i, nonfinite_from=None, origin=None)
        fc1, act1, fc2, act2, sqrt, head = step.modules
        last = i == 3
        step = replace(
            step,
            modules=(
                replace(fc1, std=1e30 if last else 1.0),
                replace(act1, std=float("inf") if last else 1.0),  # finite output, std overflowed
                # the output NaN at the last step; ‖∇out‖ overflowed at step 20 (null, no NaN/Inf counted)
                replace(
                    fc2,
                    std=float("nan") if last else 1.0,
                    nan=3 if last else 0,
                    grad_norm=float("inf") if i == 2 else fc2.grad_norm,
                ),
                replace(act2, grad_norm=float("inf") if last else 0.5, grad_inf=1 if last else 0),
                replace(sqrt, grad_norm=float("nan") if last else 0.5, grad_nan=2 if last else 0),
                replace(head, grad_norm=None),  # no backward: no value
            ),
        )
        records.append(step)
    log = _write_steps(tmp_path / "overflow.jsonl", records)
    logged = [_strict(line) for line in log.read_text(encoding="utf-8").splitlines()[1:]]
    series = {m.name: m for m in read_run_log(log).modules}
    # What the log holds, read back independently of the view.
    assert series["fc1"].std[-1] == 1e30 and series["act1"].std[-1] is None
    assert series["act1"].std_overflow == (False, False, False, True)
    assert series["act2"].grad_nan == (False,) * 4 and series["sqrt"].grad_nan[-1] is True
    assert [s["modules"][2]["grad_norm"] for s in logged][2] is None
    assert series["fc2"].grad_overflow == (False, False, True, False)
    assert (
        series["head"].grad_overflow == (False,) * 4
    )  # never a gradient: no backward, not an overflow
    monkeypatch.setenv("COLUMNS", "120")
    picked = "std,std_last,std_range,grad_norm,grad_norm_last,grad_norm_range"
    result = invoke("report", log.name, "--columns", picked, cwd=tmp_path)
    rows = {
        # a range 'min – max log' as one token: 'min–max·log'
        line.split()[0]: [
            t for t in line.replace(" – ", "–").replace(" log", "·log").split() if t != "◀"
        ]
        for line in result.stdout.splitlines()
        if line.startswith("  ")
    }
    rows["head"].insert(4, "")  # no gradient at any step: a blank sparkline
    # module, std sparkline, last std, std range, ‖∇out‖ sparkline, last ‖∇out‖, ‖∇out‖ range
    cells = {name: tuple(row[1:7]) for name, row in rows.items()}

    def values(k: int, key: str) -> list[float]:
        return [s["modules"][k][key] for s in logged if s["modules"][k][key] is not None]

    def span(k: int, key: str, log: bool = False) -> str:
        low, high = min(values(k, key)), max(values(k, key))
        shown = f"{low:.4g}" if low == high else f"{low:.4g}–{high:.4g}"
        return shown.replace("e+30", ".00e+30").replace("0.0001", "1.00e-04") + (
            "·log" if log else ""
        )

    std, grad = runlogs.std_of, runlogs.grad_of
    assert cells == {
        # 1, 1, 1, 1e30: log-scaled (the first three at the bottom); 1e-4 … 0.1: log-scaled too
        "fc1": (
            "▁▁▁█",
            "1.00e+30",
            span(0, "std", True),
            "▁▃▆█",
            "0.1",
            span(0, "grad_norm", True),
        ),
        "act1": (
            "▄▄▄↑",
            "inf",
            span(1, "std"),
            "▁▃▆█",
            f"{grad('act1', 3):.4g}",
            span(1, "grad_norm"),
        ),
        "fc2": (
            "▄▄▄×",
            "nan",
            span(2, "std"),
            "▁▃↑█",
            f"{grad('fc2', 3):.4g}",
            span(2, "grad_norm"),
        ),
        "act2": (
            "▁▃▆█",
            f"{std('act2', 3):.4g}",
            span(3, "std"),
            "▄▄▄↑",
            "inf",
            span(3, "grad_norm"),
        ),
        "sqrt": (
            "▁▃▆█",
            f"{std('sqrt', 3):.4g}",
            span(4, "std"),
            "▄▄▄×",
            "nan",
            span(4, "grad_norm"),
        ),
        "head": ("▁▃▆█", f"{std('head', 3):.4g}", span(5, "std"), "", "—", "—"),
    }
    assert cells["fc1"][2] == "1–1.00e+30·log" and cells["act1"][2] == "1"
    doc = _strict(invoke("report", log, "--json").stdout)
    assert doc["modules"][0]["std_scale"] == {"min": 1.0, "max": 1e30, "log": True}
    assert doc["modules"][5]["grad_norm_scale"] is None
    assert doc["modules"][2]["grad_overflow"] == [False, False, True, False]


def test_empty_dead_column_dropped_and_first_bad_step_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ReLU-family module: no `dead` column. Modules bad from different steps (fc1 never): no `bad at`
    column repeating them, the run's first bad step once above the table; --wide still shows both."""
    modules = (("fc1", "Linear"), ("fc2", "Linear"), ("sqrt", "SqrtShift"), ("head", "Linear"))
    records = []
    for i in range(runlogs.STEPS):
        step = runlogs.step_record(i, modules=modules)
        fc1 = replace(step.modules[0], grad_norm=runlogs.grad_of("fc1", i), grad_nan=0)
        records.append(replace(step, modules=(fc1, *step.modules[1:])))
    log = _write_steps(tmp_path / "norelu.jsonl", records)
    report = read_run_log(log)
    assert [m.first_bad_step for m in report.modules] == [None, 300, 300, 300]
    assert all(v is None for m in report.modules for v in m.dead_fraction)
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", log.name, cwd=tmp_path).stdout.splitlines()
    assert lines[3:5] == [f"first bad step {runlogs.BAD_STEP}", "no ReLU-family modules"]
    assert lines[5].split() == ["module", "type", "std", "last", "range", "‖∇out‖", "last", "range"]
    table = [re.split(r"\s{3,}", line.strip()) for line in lines if line.startswith("  ")]
    assert [cells[6] for cells in table] == ["0.001", "nan", "nan", "nan"]
    assert table[0][7] == "1.00e-04 – 1000 log"  # fc1's ‖∇out‖: 10^-4 … 10^3, log-scaled
    assert (
        sum(str(runlogs.BAD_STEP) in line for line in lines) == 2
    )  # above the table, and the verdict
    wide = invoke("report", log, "--wide").stdout.splitlines()
    header = next(line for line in wide if line.startswith("module"))
    assert header.split()[-7:] == ["dead", "first", "→", "last", "range", "bad", "at"]
    rows = [line.split()[-1] for line in wide if line.startswith("  ")]
    assert rows == ["—", "300", "300", "300"]


def test_loss_and_learning_rate_curves_at_the_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's loss and first param group's lr (as watch writes it under 'optimizer'): a sparkline each,
    then first/last/min/max computed here from the values written."""
    lrs = [0.001 * (i + 1) for i in range(7)] + [1e30]  # warm-up, then a planted blow-up
    losses = [2.0 - 0.1 * i for i in range(7)] + [float("inf")]
    records = [
        replace(
            runlogs.step_record(i, nonfinite_from=None, origin=None),
            loss=losses[i],
            optimizer=(GroupRecord(values=(("lr", lrs[i]), ("momentum", 0.9))),),
        )
        for i in range(8)
    ]
    log = _write_steps(tmp_path / "lr.jsonl", records)
    report = read_run_log(log)
    assert report.lr == tuple(lrs) and report.loss == (*losses[:7], None)
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", log.name, cwd=tmp_path).stdout.splitlines()
    loss_spark = "".join(
        SPARKS[round((losses[i] - losses[6]) / (losses[0] - losses[6]) * 7)] for i in range(7)
    )
    lr_spark = "".join(SPARKS[round((v - lrs[0]) / (lrs[-1] - lrs[0]) * 7)] for v in lrs)
    assert lines[2:4] == [
        f"loss  {loss_spark}×  first 2 · last nan/inf · min {losses[6]:.4g} · max 2",
        f"lr    {lr_spark}  first 0.001 · last 1.00e+30 · min 0.001 · max 1.00e+30",
    ]
    # A log without 'optimizer' has no lr line, and its JSON an empty lr series.
    plain = runlogs.write_run(tmp_path / "plain.jsonl")
    assert read_run_log(plain).lr == ()
    assert not any(line.startswith("lr") for line in invoke("report", plain).stdout.splitlines())


def test_modules_listed_in_tree_order_under_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`enc.1` is first logged at the second step (never called before): it is listed under `enc`, after
    `enc.0`, not after `dec.0` at the end; the root first, each module indented one level below its parent."""
    first = ("", "enc", "enc.0", "dec", "dec.0")
    later = (*first, "enc.1")
    records = [
        runlogs.step_record(
            i, nonfinite_from=None, origin=None, modules=tuple((n, "Linear") for n in names)
        )
        for i, names in enumerate((first, later, later))
    ]
    log = _write_steps(tmp_path / "tree.jsonl", records)
    assert [m.name for m in read_run_log(log).modules] == list(later)  # the log's order
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", log).stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("───"))
    rows = lines[rule + 1 : lines.index("", rule)]
    names = [line.split()[0] for line in rows]
    indents = [len(line) - len(line.lstrip(" ")) for line in rows]
    assert names == ["(model)", "enc", "0", "1", "dec", "0"]
    assert indents == [0, 2, 4, 4, 2, 4]


def test_a_real_run_with_a_planted_lr_blow_up_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real training loop under watch, its lr multiplied by 1e6 from step 30: the report's lr line and the
    explanation after the first bad step are what the log (read here as plain JSON) holds."""
    log = tmp_path / "real.jsonl"
    with pytest.warns(modinspect.NonFiniteWarning):
        runlogs.write_real_run(log, quiet=False)
    steps = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()[1:]]
    lrs = [s["optimizer"][0]["lr"] for s in steps]
    bad = next(s for s in steps if s["nonfinite"] is not None)
    assert bad["nonfinite"]["explanation"]  # watch wrote one
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", log.name, cwd=tmp_path).stdout.splitlines()
    lr_line = next(line for line in lines if line.startswith("lr "))
    assert lr_line.endswith(
        f"  first {lrs[0]:g} · last {lrs[-1]:.2e} · min {min(lrs):g} · max {max(lrs):.2e}"
    )
    assert f"first bad step {bad['step']}" in lines
    assert f"Before it: {bad['nonfinite']['explanation']}." in lines


def test_the_explanation_from_the_log_is_shown_as_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The explanation is text from the file: control characters and markup come out escaped, not obeyed."""
    evil = replace(runlogs.ORIGIN, explanation="lr \x1b[31m[bold]1e30[/bold]\u202e")
    log = runlogs.write_run(tmp_path / "evil.jsonl", origin=evil)
    monkeypatch.setenv("COLUMNS", "120")
    lines = invoke("report", log.name, cwd=tmp_path).stdout.splitlines()
    assert "Before it: lr \\x1b[31m[bold]1e30[/bold]\\u202e." in lines
