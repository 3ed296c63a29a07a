"""The library's surface: what `modinspect` exports, that it stays lazy, typed and documented, and short reprs."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import modinspect
from conftest import REPO

INIT = REPO / "src" / "modinspect" / "__init__.py"


def test_dir_lists_every_public_name_and_each_resolves() -> None:
    names = dir(modinspect)
    assert len(modinspect.__all__) == len(set(modinspect.__all__))
    missing = [n for n in modinspect.__all__ if n not in names]
    assert missing == []
    for name in modinspect.__all__:
        value = getattr(modinspect, name)
        assert value is not None, name
        if name != "__version__":
            assert value.__name__ == name, name  # the object itself, not a module or an alias
    # nothing private or imported for typing leaks into tab completion
    assert [n for n in names if not n.startswith("__") and n not in modinspect.__all__] == []


def test_all_and_the_lazy_table_name_the_same_things() -> None:
    lazy = modinspect._LAZY
    assert set(modinspect.__all__) - {"__version__"} == set(lazy)
    for name, module in lazy.items():
        assert getattr(sys.modules.get(module) or __import__(module, fromlist=[name]), name) is (
            getattr(modinspect, name)
        )


def test_type_checking_imports_match_the_lazy_table() -> None:
    """What mypy and editors see (the TYPE_CHECKING block) is what `__getattr__` imports at run time."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    seen = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == modinspect._LAZY


def test_unknown_names_raise_attribute_error() -> None:
    try:
        modinspect.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert str(exc) == "module 'modinspect' has no attribute 'no_such_thing'"
    else:
        raise AssertionError("no AttributeError")


def test_import_and_dir_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import modinspect\n"
        "names = dir(modinspect)\n"
        "print('torch' in sys.modules, 'rich' in sys.modules, 'typer' in sys.modules)\n"
        "types = [getattr(modinspect, n) for n in modinspect.__all__ if n[0].isupper()]\n"
        "print(len(types), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    classes = sum(1 for n in modinspect.__all__ if n[0].isupper())
    # the report, request and error types are plain data: using them does not need torch either
    assert out.stdout == f"False False False\n{classes} False\n"


# A row's own few values (a shape, its flags) stay in its repr; every other variable-length field is hidden.
SMALL_FIELDS = {
    ("TensorRow", "shape"),
    ("TensorRow", "logical_shape"),
    ("QuantLayer", "shape"),
    ("QuantLayer", "aux"),  # a quantized layer's few auxiliary tensors (scales, zeros)
    ("ModuleShapes", "output_shapes"),  # the tensors of one module's output
    ("ModuleShapes", "output_dtypes"),
    ("ModuleStats", "flags"),
    ("ModuleSeries", "flags"),
    ("TensorDiff", "shape"),
    ("QuantModuleError", "schemes"),  # the few schemes of one module's quantized tensors
}


def test_every_report_hides_its_variable_length_fields_from_repr() -> None:
    import dataclasses
    import inspect

    import modinspect.reports as reports
    import modinspect.reports.doctor as doctor_reports

    shown = []
    for module in (reports, doctor_reports):
        for name, cls in vars(module).items():
            if not (inspect.isclass(cls) and dataclasses.is_dataclass(cls)):
                continue
            if cls.__module__ != module.__name__:
                continue
            for f in dataclasses.fields(cls):
                kind = str(f.type)
                variable = kind.startswith(("tuple[", "list[", "dict[")) and (
                    kind.startswith(("list[", "dict[")) or "..." in kind
                )
                if f.repr and variable and (name, f.name) not in SMALL_FIELDS:
                    shown.append(f"{name}.{f.name}")
    assert shown == []


def _gpt2() -> torch.nn.Module:
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model: torch.nn.Module = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2))
    return model


def test_tree_report_repr_is_a_short_line_that_names_the_totals() -> None:
    model = _gpt2()
    source = modinspect.open_source(model)
    report = modinspect.build_tree(source)
    text = repr(report)
    # torch's own count: each parameter once (GPT-2 ties lm_head.weight to wte.weight)
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert report.totals.params == sum(unique.values())
    assert len(text) < 600, len(text)
    assert "\n" not in text
    assert text.startswith("TreeReport(source='GPT2LMHeadModel', format='module', ")
    assert f"params={sum(unique.values())}," in text
    assert f"tensors=<{len(report.tensors)} items>" in text
    assert f"modules=<{len(report.modules)} items>" in text
    assert "tied=<1 item>" in text and "root=<ModuleNode>" in text
    # the rows are still all there
    assert len(report.tensors) == len(model.state_dict())
    source_text = repr(source)
    assert len(source_text) < 300, source_text
    assert source_text.startswith("ModuleSource(label='GPT2LMHeadModel', format='module', ")
    assert f"tensors=<{len(source.tensors)} items>" in source_text
    assert "module=<GPT2LMHeadModel>" in source_text


def test_diff_repr_stays_short_however_many_tensors_changed() -> None:
    changed = _gpt2()
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(1.0)
    a, b = modinspect.open_source(_gpt2()), modinspect.open_source(changed)
    report = modinspect.diff_sources(a, b)
    text = repr(report)
    assert len(report.changed) == len(a.tensors) == report.compared  # every name, the tied one too
    assert len(text) < 600, text
    assert f"changed=<{len(report.changed)} items>" in text
    assert f"compared={report.compared}," in text and "equal=0," in text


def test_the_wheel_ships_py_typed(tmp_path: Path) -> None:
    """PEP 561: without py.typed in the installed package, users' type checkers ignore its annotations."""
    import shutil
    import zipfile

    assert (REPO / "src" / "modinspect" / "py.typed").is_file()
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, tree / name)
    shutil.copytree(
        REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    out = subprocess.run(
        [*pip, "-q", "-w", str(tmp_path / "dist"), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("modinspect-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "modinspect/py.typed" in names
    assert "modinspect/reports/__init__.py" in names  # the packages themselves, found under src/


def _sections(doc: str) -> dict[str, str]:
    """Google-style sections ("Args:", "Returns:", ...) of a cleaned docstring, each its indented body."""
    found: dict[str, list[str]] = {}
    current = None
    for line in doc.splitlines():
        heading = re.fullmatch(r"([A-Z][a-z]+):", line)
        if heading:
            current = heading.group(1)
            found[current] = []
        elif current is not None and (line.startswith("    ") or not line.strip()):
            found[current].append(line)
        else:
            current = None
    return {name: textwrap.dedent("\n".join(body)) for name, body in found.items()}


FUNCTIONS = [n for n in modinspect.__all__ if inspect.isfunction(getattr(modinspect, n))]
CLASSES = [n for n in modinspect.__all__ if inspect.isclass(getattr(modinspect, n))]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_exported_functions_document_args_returns_and_an_example(name: str) -> None:
    function = getattr(modinspect, name)
    doc = inspect.getdoc(function)
    assert doc, f"{name} has no docstring"
    sections = _sections(doc)
    signature = inspect.signature(function)
    if signature.parameters:
        assert "Args" in sections, f"{name}'s docstring has no Args: section"
        documented = re.findall(r"^(\w+):", sections["Args"], re.MULTILINE)
        assert documented == list(signature.parameters), f"{name}: Args: lists {documented}"
    if signature.return_annotation not in ("None", None, inspect.Signature.empty):
        assert sections.get("Returns", "").strip(), f"{name}'s docstring has no Returns: section"
    assert ">>> " in sections.get("Example", ""), f"{name}'s docstring has no Example: section"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_examples_in_docstrings_print_what_they_show(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each docstring's Example runs as a doctest, from the repository root (sample_models/ is there)."""
    import doctest

    monkeypatch.chdir(REPO)
    doc = inspect.getdoc(getattr(modinspect, name)) or ""
    globs = {"modinspect": modinspect, "torch": torch}
    test = doctest.DocTestParser().get_doctest(doc, globs, name, None, 0)
    if not test.examples:
        pytest.skip(f"{name}'s example is not a doctest")
    out: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=out.append)
    assert result.failed == 0, "".join(out)
    assert result.attempted >= 1


@pytest.mark.parametrize("name", CLASSES)
def test_exported_classes_have_their_own_docstring(name: str) -> None:
    cls = getattr(modinspect, name)
    doc = cls.__dict__.get("__doc__")
    assert doc and doc.strip(), f"{name} has no docstring of its own"
    assert not doc.startswith(f"{name}("), f"{name}'s docstring is the one dataclass generates"


# What a caller builds: every field is described under Attributes:.
BUILT_BY_CALLERS = [
    "DiffOptions",
    "DiffRequest",
    "DoctorRequest",
    "InputSpec",
    "KeyMap",
    "LoadRequest",
    "ReportRequest",
    "StatsOptions",
    "StatsRequest",
    "TreeRequest",
]


@pytest.mark.parametrize("name", BUILT_BY_CALLERS)
def test_request_and_option_types_document_every_field(name: str) -> None:
    import dataclasses

    cls = getattr(modinspect, name)
    sections = _sections(inspect.getdoc(cls) or "")
    assert "Attributes" in sections, f"{name} has no Attributes: section"
    documented = re.findall(r"^(\w+):", sections["Attributes"], re.MULTILINE)
    assert documented == [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


@pytest.mark.parametrize(
    "name", [n for n in CLASSES if not issubclass(getattr(modinspect, n), Exception)]
)
def test_public_methods_and_properties_of_exported_classes_have_docstrings(name: str) -> None:
    cls = getattr(modinspect, name)
    undocumented = []
    for attribute, member in vars(cls).items():
        if attribute.startswith("_"):
            continue
        function = member.fget if isinstance(member, property) else member
        if inspect.isfunction(function) and not (function.__doc__ or "").strip():
            undocumented.append(attribute)
    assert undocumented == []
