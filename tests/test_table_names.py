"""Names in tables at ordinary widths: every row's last name component is whole (issue 26).

`stats` on a small transformers BERT (BertForPreTraining: `bert.encoder.layer.0.attention.output.LayerNorm`)
at 100 columns and up, and `diff` of two of its checkpoints at 80 columns and up, where names such as
`cls.predictions.transform.LayerNorm.bias` and `….weight` differ only at the end. Before, these showed as
`La…rm` and `cls.predict…bias`. Also: --wide, --columns, and the block layout of a very narrow terminal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.cells import cell_len

from conftest import invoke

CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "vocab_size": 99,
}


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertForPreTraining

    root = tmp_path_factory.mktemp("bert")
    (root / "bert_entry.py").write_text(
        "from transformers import BertConfig, BertForPreTraining\n\n\n"
        f"def build():\n    return BertForPreTraining(BertConfig(**{CONFIG!r}))\n",
        encoding="utf-8",
    )
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**CONFIG))
    torch.save(model.state_dict(), root / "a.pth")
    with torch.no_grad():  # layer 1 and the heads move; layer 0 and the embeddings stay
        for name, p in model.named_parameters():
            if name.startswith("cls.") or ".layer.1." in name:
                p.add_(torch.randn_like(p) * 0.01)
    torch.save(model.state_dict(), root / "b.pth")
    return root


def _rows(text: str, header: str) -> list[str]:
    """The table's rows: the lines after the rule under `header`, up to the first line that is not a row."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(header))
    assert set(lines[at + 1]) == {"─"}
    rows = []
    for line in lines[at + 2 :]:
        if not line or line.startswith(("columns hidden", "not called: ", "note: ")):
            break
        rows.append(line)
    return rows


@pytest.mark.parametrize("width", [100, 120, 130, 200])
def test_stats_on_bert_shows_every_module_name_whole(
    bert: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    args = ("stats", "bert_entry.py:build", "--input-shape", "2,8")
    result = invoke(*args, cwd=bert)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(invoke(*args, "--json", cwd=bert).stdout)
    called = [m["name"] for m in doc["modules"] if m["calls"]]
    assert any(n.endswith("attention.output.LayerNorm") for n in called)
    rows = _rows(result.stdout, "module ")
    assert len(rows) == len(called)
    for name, row in zip(called, rows, strict=True):
        leaf = name.rpartition(".")[2] if name else "(model)"
        assert row.split()[0] == leaf, (width, name, row)  # the whole last component, never 'La…rm'
        assert "…" not in row.split("   ")[0]
    assert max(cell_len(line) for line in result.stdout.splitlines()) <= width


@pytest.mark.parametrize("width", [80, 100, 120])
def test_diff_of_bert_checkpoints_keeps_each_name_end_whole(
    bert: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    result = invoke("diff", "a.pth", "b.pth", cwd=bert)
    assert result.exit_code == 1, result.stderr
    doc = json.loads(invoke("diff", "a.pth", "b.pth", "--json", cwd=bert).stdout)
    changed = [d["name"] for d in doc["changed"]]
    # Exactly what was moved: every tensor of layer 1 and of the heads but the decoder weight tied to the embeddings.
    sd = torch.load(bert / "a.pth", weights_only=True)
    moved = {
        n
        for n in sd
        if (n.startswith("cls.") or ".layer.1." in n) and n != "cls.predictions.decoder.weight"
    }
    assert set(changed) == moved
    assert {
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
    } <= moved
    rows = _rows(result.stdout, "tensor ")
    assert len(rows) == len(changed)
    shown = [row.split()[0] for row in rows]
    for name, cell in zip(changed, shown, strict=True):
        assert cell == name or (cell.startswith("…") and name.endswith("." + cell[1:])), (
            width,
            name,
            cell,
        )
    assert len(set(shown)) == len(shown)  # names alike at the start stay apart
    assert max(cell_len(line) for line in result.stdout.splitlines()) <= width


def test_wide_shows_every_column_whole_and_columns_picks_them(
    bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    wide = invoke("diff", "a.pth", "b.pth", "--wide", cwd=bert).stdout
    head = next(line for line in wide.splitlines() if line.startswith("tensor "))
    assert re.split(r"\s{2,}", head) == [
        "tensor",
        "shape",
        "differing",
        "max |Δ|",
        "mean |Δ|",
        "rel L2",
        "cosine",
        "NaN A/B",
    ]
    assert "cls.predictions.transform.LayerNorm.bias " in wide and "columns hidden" not in wide
    picked = invoke("diff", "a.pth", "b.pth", "--columns", "max_abs_diff,cosine", cwd=bert).stdout
    head = next(line for line in picked.splitlines() if line.startswith("tensor "))
    assert re.split(r"\s{2,}", head) == ["tensor", "max |Δ|", "cosine"]
    bad = invoke("diff", "a.pth", "b.pth", "--columns", "max,nope", cwd=bert)
    assert bad.exit_code == 2
    assert bad.stderr == (
        "error: --columns: no column 'max' in this table; choose from shape, differing, "
        "max_abs_diff, mean_abs_diff, rel_l2, cosine, nan\n"
    )


def test_stats_columns_is_checked_before_the_model_runs(bert: Path) -> None:
    result = invoke(
        "stats", "bert_entry.py:build", "-s", "2,8", "--columns", "mean,bogus", cwd=bert
    )
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(
        "error: --columns: no column 'bogus' in this table; choose from type, calls,"
    )


def test_a_terminal_too_narrow_for_the_names_gets_one_block_per_row() -> None:
    import io

    from modinspect.render.console import Cell, Column, Forms, Name, fit_table, make_console

    columns = (Column("tensor", kind="name"), Column("max |Δ|"), Column("rel L2"))
    rows: list[list[Cell]] = [
        [
            Name("encoder.layers.0.self_attention.query_key_value_projection"),
            Forms(("0.08308", "0.083")),
            "1",
        ],
        [
            Name("encoder.layers.1.self_attention.query_key_value_projection"),
            Forms(("0.1662", "0.17")),
            "2",
        ],
    ]
    buf = io.StringIO()
    out = make_console(file=buf, width=24)
    fitted = fit_table(columns, rows, 24)
    out.print(*fitted.parts(24))
    assert buf.getvalue() == (
        "encoder.layers.0\n  .self_attention\n  .query_key_value_proje\n  ction\n  max |Δ| 0.08308\n  rel L2 1\n"
        "encoder.layers.1\n  .self_attention\n  .query_key_value_proje\n  ction\n  max |Δ| 0.1662\n  rel L2 2\n"
    )


def test_report_and_stats_take_wide_and_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runlogs

    monkeypatch.setenv("COLUMNS", "80")
    log = runlogs.write_run(tmp_path / "run.jsonl")
    picked = invoke("report", log, "--columns", "std,bad_at").stdout.splitlines()
    head = next(line for line in picked if line.startswith("module "))
    assert re.split(r"\s{2,}", head) == [
        "module",
        "std",
        "bad at",
    ]  # chosen: nothing moves above the table
    assert next(line for line in picked if line.startswith("  act1 ")).endswith(" 300")
    wide = invoke("report", log, "--wide").stdout
    head = next(line for line in wide.splitlines() if line.startswith("module "))
    assert re.split(r"\s{2,}", head) == [
        "module",
        "type",
        "std",
        "first → last",
        "range",
        "‖∇out‖",
        "first → last",
        "range",
        "dead",
        "first → last",
        "range",
        "bad at",
    ]
    assert (
        max(cell_len(line) for line in wide.splitlines()) > 80
    )  # one cell per logged step: 50 of them
    stats = invoke(
        "stats",
        "faulty.py:Net",
        "-s",
        "8,16",
        "--wide",
        cwd=Path(__file__).parent.parent / "sample_models",
    )
    head = next(line for line in stats.stdout.splitlines() if line.startswith("module "))
    assert re.split(r"\s{2,}", head) == [
        "module",
        "type",
        "calls",
        "mean",
        "std",
        "min",
        "max",
        "zeros",
        "nan/inf",
        "dead",
        "‖∇out‖",
        "‖∇param‖",
        "hist",
    ]
    assert "-0.08564" in stats.stdout and "columns hidden" not in stats.stdout


def test_a_run_without_relus_has_no_dead_column(tmp_path: Path) -> None:
    import io
    from dataclasses import replace

    import runlogs
    from modinspect.render.console import make_console, run_renderable
    from modinspect.watching.runlog import read_run_log

    run = read_run_log(runlogs.write_run(tmp_path / "run.jsonl"))
    run = replace(
        run,
        modules=tuple(
            replace(m, dead_fraction=tuple(None for _ in m.dead_fraction), dead_fraction_scale=None)
            for m in run.modules
        ),
    )
    buf = io.StringIO()
    out = make_console(file=buf, width=120)
    out.print(run_renderable(run, 120))
    lines = buf.getvalue().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("module "))
    assert lines[head - 2 : head] == [
        "first bad step 300",  # once, above the table: no 'bad at' column
        "last ‖∇out‖ nan · no ReLU-family modules",
    ]
    # the width the dead column leaves goes to the ranges beside the sparklines
    assert re.split(r"\s{2,}", lines[head]) == [
        "module",
        "type",
        "std",
        "last",
        "range",
        "‖∇out‖",
        "range",
    ]
    assert max(cell_len(line) for line in lines) <= 120
