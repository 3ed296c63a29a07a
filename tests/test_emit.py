"""One output path: every command's report goes out through render.registry; its JSON document is generated
from the dataclasses' fields, each field in the document or excluded by name; modinspect.show and
modinspect.to_json give what the CLI prints."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import modinspect
import runlogs
from conftest import REPO, SAMPLES, invoke
from modinspect.cli.app import app
from modinspect.render import jsonout, registry
from modinspect.render.jsondoc import Doc, Schema, fields_of

COMMANDS = sorted(
    c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
)


def test_every_command_has_one_registry_entry() -> None:
    """One report type per command, but report's: one log is a RunReport, two a RunComparison."""
    commands = sorted(entry.command for entry in registry.REGISTRY.values())
    assert commands == sorted([*COMMANDS, "report"])
    assert set(jsonout.TABLES) <= set(registry.REGISTRY)


def _command_args(command: str, tmp_path: Path) -> list[str]:
    if command == "report":
        runlogs.write_run(tmp_path / "stats.jsonl")
        return ["report", str(tmp_path / "stats.jsonl")]
    return {
        "tree": ["tree", "tiny_lm.safetensors"],
        "diff": ["diff", "small_cnn.pth", "small_cnn.safetensors"],
        "load": ["load", "models.py:small_cnn", "small_cnn.safetensors", "--dry-run"],
        "stats": ["stats", "faulty.py:Net", "--input-shape", "8,16"],
        "doctor": ["doctor", "mistakes.py:Net", "--input-shape", "8,16"],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("as_json", [False, True])
def test_each_command_ends_in_emit_with_its_registered_report(
    command: str, as_json: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[type, bool]] = []
    real = registry.emit

    def spy(report: object, as_json: bool = False, **kwargs: Any) -> None:
        seen.append((type(report), as_json))
        real(report, as_json, **kwargs)

    monkeypatch.setattr(registry, "emit", spy)
    args = _command_args(command, tmp_path) + (["--json"] if as_json else [])
    result = invoke(*args, cwd=SAMPLES)
    assert result.exit_code in (0, 1), result.stderr
    assert len(seen) == 1
    report_type, json_asked = seen[0]
    assert registry.REGISTRY[report_type].command == command and json_asked == as_json
    if as_json:
        assert json.loads(result.stdout)["schema_version"] == jsonout.SCHEMA_VERSION


def test_the_cli_reaches_the_renderers_only_through_the_registry() -> None:
    """cli/ may import the registry and the plain-text helpers; never a JSON writer, a view, a page."""
    banned = {"modinspect.render.jsonout", "modinspect.render.html", "modinspect.render.sarif"}
    views = {"print_tree", "make_console"}
    for path in (REPO / "src" / "modinspect" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                assert node.module not in banned, (path.name, node.module)
                assert not {n for n in names if n.endswith("_renderable")} | (names & views), (
                    path.name,
                    names,
                )
                if node.module == "modinspect.render":
                    assert names <= {"registry"}, (path.name, names)


# ------------------------------------------------------------------ documents from fields


class Maker:
    """Builds a report with a distinct value in every str/int/float field, and remembers where each went."""

    def __init__(self) -> None:
        self.count = 0
        self.leaves: list[
            tuple[tuple[tuple[type, str], ...], object]
        ] = []  # (path of fields, value)
        self.building: list[type] = []

    def make(self, cls: type, path: tuple[tuple[type, str], ...] = ()) -> Any:
        hints = typing.get_type_hints(cls)
        self.building.append(cls)
        values = {
            f.name: self.value(hints[f.name], (*path, (cls, f.name)))
            for f in dataclasses.fields(cls)
        }
        self.building.pop()
        return cls(**values)

    def value(self, hint: Any, path: tuple[tuple[type, str], ...]) -> object:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            return self.value(next(a for a in args if a is not type(None)), path)
        if origin is typing.Literal:
            return args[0]
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                if args[0] in self.building:  # a tree of nodes: one level
                    return ()
                return (self.value(args[0], path),)
            return tuple(self.value(a, path) for a in args)
        if dataclasses.is_dataclass(hint):
            return self.make(hint, path)  # type: ignore[arg-type]
        if hint is bool:
            return True
        self.count += 1
        made: object = {str: f"s{self.count}", int: 100_000 + self.count, float: self.count + 0.25}[
            hint
        ]
        self.leaves.append((path, made))
        return made


def _leaves(value: object) -> set[object]:
    if isinstance(value, dict):
        return set(value) | {x for v in value.values() for x in _leaves(v)}
    if isinstance(value, list):
        return {x for v in value for x in _leaves(v)}
    return {value}


SCHEMAS: list[Any] = [jsonout.schema_of(report_type) for report_type in registry.REGISTRY]


def _item_docs(schema: Schema[Any]) -> list[Doc]:
    return [d for doc in schema.docs.values() for d in doc.items.values()]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.report.__name__)
def test_every_field_is_in_its_document_or_excluded_by_name(schema: Schema[Any]) -> None:
    maker = Maker()
    report = maker.make(schema.report)
    document = json.loads(json.dumps(schema.document(report), allow_nan=False))
    found = _leaves(document)
    assert all(not d.exclude for d in _item_docs(schema))  # exclusions are by type, below
    missing = [
        ".".join(f"{cls.__name__}.{name}" for cls, name in path)
        for path, value in maker.leaves
        if value not in found and not any(name in schema.doc(cls).exclude for cls, name in path)
    ]
    assert missing == []


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.report.__name__)
def test_each_table_names_only_real_fields_and_gives_each_exclusion_a_reason(
    schema: Schema[Any],
) -> None:
    reachable = fields_of(schema)
    assert set(schema.docs) <= set(reachable), "a Doc for a type the report cannot hold"
    for cls, doc in [*schema.docs.items()]:
        names = {f.name for f in dataclasses.fields(cls)}
        for table in (doc.rename, doc.exclude, doc.convert):
            assert set(table) <= names, (cls.__name__, set(table) - names)
        assert set(doc.inline) <= names and not set(doc.add) & names, cls.__name__
        assert all(reason.strip() for reason in doc.exclude.values()), cls.__name__
        keys = schema.keys(cls)
        assert len(keys) == len(set(keys)), (cls.__name__, keys)


def _key_paths(value: object, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [prefix + k, *_key_paths(v, prefix + k + ".")]]
    if isinstance(value, list) and value:
        return _key_paths(value[0], prefix[:-1] + "[].")
    return []


def test_documents_keep_their_keys_and_order(golden: Any) -> None:
    """Key names and order are API (schema_version 2): the golden was checked against the hand-written writers."""
    out = []
    for schema in SCHEMAS:
        document = schema.document(Maker().make(schema.report))
        out += [f"{schema.report.__name__}:", *(f"  {p}" for p in _key_paths(document))]
    golden("json_keys.txt", "\n".join(out) + "\n")


# ------------------------------------------------------------------ show / to_json


def _shown(report: object, **kwargs: Any) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        modinspect.show(report, **kwargs)
    return out.getvalue()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    torch.manual_seed(0)
    a = {
        "encoder.weight": torch.randn(8, 4),
        "encoder.bias": torch.zeros(8),
        "head.w": torch.ones(3),
    }
    b = {**a, "encoder.weight": a["encoder.weight"] + 0.5, "extra": torch.zeros(2)}
    del b["head.w"]
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    return str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")


@pytest.mark.parametrize("columns", ["120", "72"])
def test_show_prints_what_the_cli_prints(
    pair: tuple[str, str], columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    path = str(SAMPLES / "tiny_lm.safetensors")
    with modinspect.open_source(path) as src:
        tree = modinspect.build_tree(src)
    cli = invoke("tree", path)
    assert cli.exit_code == 0 and _shown(tree) == cli.stdout
    with modinspect.open_source(pair[0]) as a, modinspect.open_source(pair[1]) as b:
        diff = modinspect.diff_sources(a, b)
    cli = invoke("diff", *pair)
    assert cli.exit_code == 1 and _shown(diff) == cli.stdout
    assert "encoder.weight" in cli.stdout and "only in" in cli.stdout.lower()
    assert _shown(diff, json=True) == invoke("diff", *pair, "--json").stdout


def test_show_takes_a_width(pair: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with modinspect.open_source(pair[0]) as a, modinspect.open_source(pair[1]) as b:
        diff = modinspect.diff_sources(a, b)
    monkeypatch.setenv("COLUMNS", "64")
    at_64 = invoke("diff", *pair).stdout
    monkeypatch.setenv("COLUMNS", "150")
    assert _shown(diff, width=64) == at_64 != _shown(diff)
    assert max(len(line) for line in at_64.splitlines()) <= 64


def test_to_json_is_the_clis_document(pair: tuple[str, str], tmp_path: Path) -> None:
    path = str(SAMPLES / "small_cnn.pth")
    with modinspect.open_source(path) as src:
        assert modinspect.to_json(modinspect.build_tree(src)) == json.loads(
            invoke("tree", path, "--json").stdout
        )
    with modinspect.open_source(pair[0]) as a, modinspect.open_source(pair[1]) as b:
        document = modinspect.to_json(modinspect.diff_sources(a, b))
    assert document == json.loads(invoke("diff", *pair, "--json").stdout)
    assert document["only_in_a"] == ["head.w"] and document["only_in_b"] == ["extra"]
    assert [c["name"] for c in document["changed"]] == ["encoder.weight"]
    assert document["changed"][0]["max_abs_diff"] == pytest.approx(0.5)
    log = tmp_path / "stats.jsonl"
    runlogs.write_run(log)
    run = modinspect.read_run_log(log)
    assert modinspect.to_json(run) == json.loads(invoke("report", str(log), "--json").stdout)
    assert run.first_bad is not None
    assert modinspect.to_json(run)["first_bad"]["step"] == run.first_bad.step


def test_show_and_to_json_refuse_what_is_not_a_report() -> None:
    with pytest.raises(TypeError, match="Totals is not a report modinspect renders"):
        modinspect.to_json(
            modinspect.build_tree(modinspect.open_source(torch.nn.Linear(2, 2))).totals
        )
    with pytest.raises(TypeError, match="dict is not a report"):
        modinspect.show({})


# ------------------------------------------------------------------ IPython


def _python(code: str) -> str:
    env = {**os.environ, "COLUMNS": "90", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def test_import_outside_ipython_loads_no_renderer() -> None:
    out = _python(
        "import sys, modinspect; print(sorted(m for m in sys.modules if m.startswith(('modinspect.render', 'IPython', 'rich'))))"
    )
    assert out == "[]\n"


def test_ipython_displays_a_report_as_its_console_view() -> None:
    pytest.importorskip("IPython")
    path = SAMPLES / "tiny_lm.safetensors"
    shown = _python(
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "import modinspect\n"
        f"report = modinspect.build_tree(modinspect.open_source({str(path)!r}))\n"
        "data, _ = shell.display_formatter.format(report)\n"
        "print(data['text/plain'])\n"
    )
    with modinspect.open_source(str(path)) as src:
        expected = registry.view_text(modinspect.build_tree(src), width=90)
    assert shown == expected
    assert shown.startswith(f"{path}  (safetensors")
    assert max(len(line) for line in shown.splitlines()) <= 90


@dataclasses.dataclass(frozen=True)
class _Probe:
    name: str
    sizes: tuple[int, ...]
    ratio: float | None
    parts: tuple[tuple[str, int], ...]


def test_a_report_without_a_table_is_its_fields_after_the_envelope() -> None:
    document = jsonout.schema_of(_Probe).document(_Probe("x", (1, 2), float("nan"), (("a", 3),)))
    assert document == {
        "schema_version": jsonout.SCHEMA_VERSION,
        "modinspect_version": modinspect.__version__,
        "name": "x",
        "sizes": [1, 2],
        "ratio": None,
        "parts": [["a", 3]],
    }
