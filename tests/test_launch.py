"""launch.py: a plain `modinspect diff A B` runs without Typer, and says exactly what the Typer command says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modinspect.cli.launch import parse_diff
from modinspect.cli.output import DiffArgs

# The same argv through each entry point: launch.main (the console script, python -m modinspect) and the Typer app.
FAST = "import sys; from modinspect.cli.launch import main; sys.argv[0] = 'modinspect'; main()"
TYPER = "import sys; from modinspect.cli.app import main; sys.argv[0] = 'modinspect'; main()"
PROBE = (
    "import sys\nfrom modinspect.cli.launch import main\nsys.argv[0] = 'modinspect'\ntry:\n    main()\n"
    "finally:\n    print('TYPER=' + str('typer' in sys.modules), 'RICH=' + str('rich' in sys.modules), "
    "file=sys.stderr)\n"
)


def _run(code: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("launch")
    g = torch.Generator().manual_seed(0)
    sd = {f"h.{i}.w": torch.randn(16, 8, generator=g) for i in range(3)} | {"step": torch.tensor(3)}
    save_file(sd, str(d / "a.safetensors"))
    save_file(sd, str(d / "a2.safetensors"))
    other = dict(sd) | {"h.1.w": sd["h.1.w"] + 1e-2, "extra": torch.zeros(2)}
    save_file(other, str(d / "b.safetensors"))
    return d


CASES = [
    (["diff", "a.safetensors", "a2.safetensors"], 0),
    (["diff", "a.safetensors", "a2.safetensors", "--json"], 0),
    (["diff", "a.safetensors", "b.safetensors"], 1),
    (
        ["diff", "--json", "a.safetensors", "b.safetensors", "--atol", "0.5", "--exclude", "extra"],
        0,
    ),
    (
        [
            "diff",
            "a.safetensors",
            "b.safetensors",
            "--json",
            "--exact",
            "--include=h.*",
            "--include",
            "step",
        ],
        1,
    ),
    (["diff", "a.safetensors", "nope.safetensors"], 2),
    (["diff", "a.safetensors", "a2.safetensors", "--rename", "(=x"], 2),
    (["diff", "a.safetensors", "a2.safetensors", "--max-pickle-size", "lots"], 2),
    (["diff", "a.safetensors", "a2.safetensors", "--bogus"], 2),
    (["diff", "a.safetensors", "a2.safetensors", "--atol", "-1"], 2),
    (["diff", "a.safetensors"], 2),
]


@pytest.mark.parametrize(("args", "code"), CASES)
def test_fast_path_says_what_the_typer_command_says(
    files: Path, args: list[str], code: int
) -> None:
    fast, typer = _run(FAST, args, files), _run(TYPER, args, files)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        typer.returncode,
        typer.stdout,
        typer.stderr,
    )
    assert fast.returncode == code
    if code == 2:
        assert fast.stdout == "" and fast.stderr


def test_user_error_is_one_line(files: Path) -> None:
    out = _run(FAST, ["diff", "a.safetensors", "nope.safetensors"], files)
    assert (
        out.stderr.count("\n") == 1
        and out.stderr.startswith("error: ")
        and "nope.safetensors" in out.stderr
    )


def test_plain_diff_imports_neither_typer_nor_rich_under_json(files: Path) -> None:
    out = _run(PROBE, ["diff", "a.safetensors", "a2.safetensors", "--json"], files)
    assert (out.returncode, out.stderr) == (0, "TYPER=False RICH=False\n")
    other = _run(PROBE, ["diff", "a.safetensors", "a2.safetensors", "--debug"], files)
    assert (other.returncode, other.stderr) == (0, "TYPER=True RICH=True\n")


def test_parse_diff_takes_diffs_own_options() -> None:
    args = parse_diff(
        [
            "diff",
            "x",
            "--atol=1e-3",
            "y",
            "--rtol",
            "0",
            "--json",
            "--strip-prefix",
            "module.",
            "--strip-prefix",
            "_orig_mod.",
            "--weights-a",
            "w.pt",
            "--weights-a",
            "v.pt",
            "--nan-unequal",
            "--allow-global",
            "argparse.Namespace",
            "--unsafe-pickle",
            "--max-pickle-size",
            "1G",
        ]
    )
    assert args == DiffArgs(
        a="x",
        b="y",
        weights_a="v.pt",
        atol=1e-3,
        rtol=0.0,
        nan_unequal=True,
        as_json=True,
        strip_prefix=("module.", "_orig_mod."),
        unsafe_pickle=True,
        allow_global=("argparse.Namespace",),
        max_pickle_size="1G",
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["tree", "x"],
        ["--debug", "diff", "x", "y"],
        ["diff", "x", "y", "--help"],
        ["diff", "x", "y", "-h"],
        ["diff", "x", "y", "--debug"],
        ["diff", "x", "y", "--"],
        ["diff", "x", "y", "--json=1"],
        ["diff", "x"],
        ["diff", "x", "y", "z"],
        ["diff", "x", "y", "--atol"],
        ["diff", "x", "y", "--atol", "-1"],
        ["diff", "x", "y", "--atol", "nan"],
        ["diff", "x", "y", "--rtol", "small"],
        ["diff", "x", "y", "--weights-a", "-w"],
        ["diff", "-", "y"],
        ["diff", "x", "y", "--jsonx"],
    ],
)
def test_anything_else_goes_to_typer(argv: list[str]) -> None:
    assert parse_diff(argv) is None
