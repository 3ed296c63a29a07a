"""The library's surface: what `modinspect` exports, that it stays lazy, typed and documented, and short reprs."""

from __future__ import annotations

import ast
import subprocess
import sys

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
    lazy = modinspect._LAZY  # type: ignore[attr-defined]
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
    assert seen == modinspect._LAZY  # type: ignore[attr-defined]


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
