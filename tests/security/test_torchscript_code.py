"""TorchScript archives whose code runs on load: no command runs it without --unsafe-pickle.

`torch.jit.load` compiles the archive's code and calls TorchScript `__setstate__` methods, which can
call `torch.save(obj, path)`: a write to any file the user can write. modinspect reads archives as
data (data.pkl through the weights-only gate, code/ as text), so the writer never runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import invoke
from hostile import clean_checkpoint, setstate_shards, setstate_torchscript, write_victim


def test_the_archive_really_writes_when_torch_jit_load_opens_it(tmp_path: Path) -> None:
    """Control: the attack is real."""
    marker = tmp_path / "WRITTEN"
    path = setstate_torchscript(tmp_path, marker)
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(path))
    assert marker.exists()


def _commands(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    entry = write_victim(tmp_path)
    clean = clean_checkpoint(tmp_path)
    return {
        "tree": ["tree", str(path)],
        "tree --json": ["tree", str(path), "--json"],
        "diff A": ["diff", str(path), str(clean)],
        "diff B": ["diff", str(clean), str(path)],
        "load CHECKPOINT": ["load", entry, str(path), "--dry-run"],
        "load CHECKPOINT --out": [
            "load",
            entry,
            str(path),
            "--out",
            str(tmp_path / "out.safetensors"),
        ],
        "tree --weights": ["tree", entry, "--weights", str(path)],
        "stats --weights": ["stats", entry, "--weights", str(path), "--input-shape", "2,4"],
    }


@pytest.mark.parametrize("shape", ["file", "shard"])
def test_no_command_runs_the_archive_code(tmp_path: Path, shape: str) -> None:
    marker = tmp_path / "WRITTEN"
    path = (
        setstate_torchscript(tmp_path, marker)
        if shape == "file"
        else setstate_shards(tmp_path, marker)
    )
    for what, args in _commands(path, tmp_path).items():
        result = invoke(*args, cwd=tmp_path)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, (
            what,
            result.stderr,
        )
        assert not marker.exists(), what
        if (
            shape == "shard"
        ):  # a TorchScript archive is not a state-dict shard: refused, after being read as data
            assert result.exit_code == 2 and "which is not a state dict" in result.stderr, (
                what,
                result.stderr,
            )
        else:  # read as data, the archive is an ordinary checkpoint of fc.weight and fc.bias
            assert result.exit_code in (0, 1), (what, result.stderr)


def test_the_archive_lists_as_data_and_names_the_setstate_module(tmp_path: Path) -> None:
    marker = tmp_path / "WRITTEN"
    path = setstate_torchscript(tmp_path, marker)
    result = invoke("tree", path, "--json")
    assert result.exit_code == 0, result.stderr
    import json

    doc = json.loads(result.stdout)
    assert doc["format"] == "torchscript" and doc["totals"]["params"] == 15
    assert doc["notes"] == [
        "SetstateWriter has a custom __setstate__, which only --unsafe-pickle runs: any tensors it restores are not "
        "listed"
    ]
    assert not marker.exists()


def test_load_into_a_torchscript_model_names_the_flag(tmp_path: Path) -> None:
    marker = tmp_path / "WRITTEN"
    path = setstate_torchscript(tmp_path, marker)
    clean = clean_checkpoint(tmp_path)
    result = invoke("load", path, clean, "--dry-run")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: load needs the live module of {path}, a TorchScript archive, which only torch.jit.load builds, and "
        "that runs the archive's code; pass --unsafe-pickle only if you trust the file\n"
    )
    assert not marker.exists()


def test_stats_on_a_torchscript_archive_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "WRITTEN"
    path = setstate_torchscript(tmp_path, marker)
    result = invoke("stats", path, "--input-shape", "2,4")
    assert result.exit_code == 2 and "whose modules take no Python hooks" in result.stderr
    assert not marker.exists()


def test_unsafe_pickle_runs_it_and_says_so(tmp_path: Path) -> None:
    """The flag is the one way to torch.jit.load, and the warning says what that means."""
    marker = tmp_path / "WRITTEN"
    path = setstate_torchscript(tmp_path, marker)
    result = invoke("tree", path, "--unsafe-pickle")
    assert result.exit_code == 0
    assert result.stderr == (
        f"warning: --unsafe-pickle: torch.jit.load runs the code of {path} (its TorchScript __setstate__ methods)\n"
    )
    assert marker.exists()
    marker.unlink()
    result = invoke("load", path, clean_checkpoint(tmp_path), "--dry-run", "--unsafe-pickle")
    assert result.exit_code == 0, result.stderr
    assert marker.exists()


# ---------------------------------------------------------------- the code/ lexer on hostile text

LINEAR_TEXT = (
    "class Linear(Module):\n"
    '  __parameters__ = ["weight", "bias", ]\n'
    "  __buffers__ = []\n"
    "  weight : Tensor\n"
    "  def forward(self: __torch__.torch.nn.modules.linear.Linear,\n"
    "    input: Tensor) -> Tensor:\n"
    "    return torch.linear(input, self.weight, self.bias)\n"
)


def test_declarations_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from modinspect.errors import CorruptFileError
    from modinspect.sources import torchscript_code

    assert torchscript_code.parse_code({"m": LINEAR_TEXT})["m.Linear"].parameters == (
        "weight",
        "bias",
    )
    monkeypatch.setattr(torchscript_code, "MAX_DECLARATIONS", 4)  # a class, two lists, two names: 5
    with pytest.raises(CorruptFileError) as caught:
        torchscript_code.parse_code({"m": LINEAR_TEXT}, "x.pt")
    assert str(caught.value) == (
        "x.pt declares more than 4 classes, parameter and buffer lists and names in its TorchScript code/"
    )


PIECES = [
    '"',
    "'",
    '"""',
    "'''",
    "\\",
    "\n",
    "  ",
    "\t",
    "#",
    "# type:",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "x",
    "class Linear(Module):\n",
    "  __parameters__ = ",
    "  __buffers__ = ",
    '["a", ]',
    "\\\n",
    "\\145",
    ":",
]


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60), st.integers(0, len(LINEAR_TEXT)))
def test_lexer_raises_only_its_own_error(pieces: list[str], at: int) -> None:
    """Any text spliced into real code: classes, or one CorruptFileError, never another exception."""
    from modinspect.errors import CorruptFileError
    from modinspect.sources.torchscript_code import parse_code

    text = LINEAR_TEXT[:at] + "".join(pieces) + LINEAR_TEXT[at:]
    try:
        classes = parse_code({"m": text})
    except CorruptFileError:
        return
    assert all(isinstance(n, str) for c in classes.values() for n in (*c.parameters, *c.buffers))
