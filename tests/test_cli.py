"""The CLI through Typer's runner: exact exit codes, exact error lines, golden renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import REPO, SAMPLES, Golden, invoke
from models import TwoLayer
from modinspect import __version__


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"modinspect {__version__}\n"


def test_python_dash_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modinspect", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == f"modinspect {__version__}\n"


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("tree_small_cnn_pth.txt", ["tree", "small_cnn.pth"]),
        ("tree_tiny_lm_pth.txt", ["tree", "tiny_lm.pth"]),
        ("tree_tiny_lm_safetensors.txt", ["tree", "tiny_lm.safetensors"]),
        (
            "tree_tiny_lm_entry.txt",
            ["tree", "models.py:tiny_lm", "--weights", "tiny_lm.safetensors"],
        ),
        ("tree_training_checkpoint_depth1.txt", ["tree", "training_checkpoint.pt", "--depth", "1"]),
        ("tree_scripted.txt", ["tree", "small_cnn_scripted.pt", "--filter", "features.1*"]),
        ("tree_default_config.txt", ["tree"]),
    ],
)
def test_golden_trees(name: str, args: list[str], golden: Golden) -> None:
    result = invoke(*args, cwd=SAMPLES)
    assert result.exit_code == 0, result.stderr
    # The default model is imported from [tool.modinspect]: the one stderr line says so, before it runs.
    assert result.stderr == (
        ""
        if args != ["tree"]
        else f"note: importing models.py:small_cnn, the model [tool.modinspect] names in "
        f"{SAMPLES / 'pyproject.toml'}\n"
    )
    golden(name, result.stdout)


def test_tree_json_document() -> None:
    result = invoke("tree", "tiny_lm.safetensors", "--json", cwd=SAMPLES)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["source"] == "tiny_lm.safetensors"
    assert doc["format"] == "safetensors"
    assert set(doc["totals"]) >= {"params", "trainable", "frozen", "buffers", "bytes"}
    assert doc["totals"]["params"] == 100 * 32 + 3 * (2 * 32 + 64 * 32 + 64 + 32 * 64 + 32) + 64
    assert doc["totals"]["trainable"] is None and doc["totals"]["buffers"] is None
    assert doc["modules"][0] == {
        "name": "",
        "type": None,
        "params": doc["totals"]["params"],
        "bytes": doc["totals"]["bytes"],
        "trainable": None,
        "training": None,
        "extra_repr": None,
        "scheme": None,
        "bits_per_weight": None,
    }
    tensor = next(t for t in doc["tensors"] if t["name"] == "lm_head.weight")
    assert (
        tensor["shape"] == [100, 32]
        and tensor["dtype"] == "float32"
        and tensor["kind"] == "unknown"
    )
    assert tensor["alias_of"] == "embed.weight"
    assert doc["tied"] == [["embed.weight", "lm_head.weight"]]


def test_tree_json_of_live_module_has_kinds() -> None:
    result = invoke("tree", "models.py:tiny_lm", "--json", cwd=SAMPLES)
    doc = json.loads(result.stdout)
    kinds = {t["name"]: t["kind"] for t in doc["tensors"]}
    assert kinds["position_ids"] == "buffer" and kinds["embed.weight"] == "parameter"
    assert doc["totals"]["buffers"] == 16 and doc["totals"]["non_persistent_buffers"] == 16
    assert doc["modules"][0]["type"] == "TinyTiedLM"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "nope.pt", "error: {d}/nope.pt does not exist\n"),
        (
            lambda d: write(d / "notes.txt", b"hello"),
            "error: {d}/notes.txt is not a checkpoint modinspect reads (safetensors, GGUF, torch .pt/.pth/.bin, "
            "TorchScript, or a sharded index)\n",
        ),
        (lambda d: write(d / "empty.pt", b""), "error: {d}/empty.pt is empty\n"),
        (
            lambda d: write(d / "bad.safetensors", (10).to_bytes(8, "little") + b"{not json}"),
            "error: {d}/bad.safetensors is not a valid safetensors file: it has a header that is not valid JSON "
            "(JSONDecodeError)\n",
        ),
        (
            lambda d: write(d / "short.safetensors", (500).to_bytes(8, "little") + b"{}"),
            "error: {d}/short.safetensors is not a valid safetensors file: it declares a 500-byte header but the file "
            "holds 2 bytes after it\n",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    tmp_path: Path, setup: Callable[[Path], Path], message: str
) -> None:
    path = setup(tmp_path)
    result = invoke("tree", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == message.format(d=tmp_path)


def test_whole_pickled_model_lists_without_its_code(tmp_path: Path) -> None:
    torch.save(TwoLayer(), tmp_path / "whole.pt")
    result = invoke("tree", tmp_path / "whole.pt", "--json")
    # torch.load would call the model's own class (NEWOBJ); torch.nn's layers are known data classes.
    assert (result.exit_code, result.stderr) == (
        0,
        (
            "warning: torch.load would call models.TwoLayer: shown as stand-ins here, nothing ran; fully unpickling "
            "the file (torch.load without weights_only=True, or --unsafe-pickle) runs it\n"
        ),
    )
    doc = json.loads(result.stdout)
    assert doc["would_call"] == ["models.TwoLayer"]
    assert doc["format"] == "torch-zip-module" and doc["totals"]["params"] == 58
    assert doc["notes"][0].startswith(
        "read without importing models.TwoLayer, torch.nn.modules.linear.Linear"
    )
    allowed = invoke("tree", tmp_path / "whole.pt", "--unsafe-pickle", "--json")
    assert allowed.exit_code == 0
    assert allowed.stderr.startswith(
        f"warning: --unsafe-pickle: fully unpickling {tmp_path}/whole.pt, which imports "
    )
    doc = json.loads(allowed.stdout)
    assert doc["format"] == "torch-pickled-module" and doc["totals"]["params"] == 58


def test_code_execution_global_is_refused_with_the_globals_named(tmp_path: Path) -> None:
    import os

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"state_dict": TwoLayer().state_dict(), "x": Evil()}, tmp_path / "evil.pt")
    result = invoke("tree", tmp_path / "evil.pt")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {tmp_path}/evil.pt needs '{os.system.__module__}.system' to unpickle, which could run arbitrary "
        "code; pass --unsafe-pickle only if you trust the file\n"
    )
    assert not (tmp_path / "PWNED").exists()


def test_weights_on_a_checkpoint_is_a_usage_error() -> None:
    result = invoke("tree", "small_cnn.pth", "--weights", "small_cnn.pth", cwd=SAMPLES)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --weights needs a SOURCE that builds a model (an entry point or TorchScript); small_cnn.pth is a "
        "checkpoint: inspect it directly, or pair it with an entry point\n"
    )


def test_strict_weights_mismatch_names_the_keys() -> None:
    result = invoke("tree", "models.py:small_cnn", "--weights", "tiny_lm.safetensors", cwd=SAMPLES)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: tiny_lm.safetensors does not match models.py:small_cnn: 16 missing ("
    )
    assert "22 unexpected (" in result.stderr and result.stderr.endswith(
        "pass --no-strict to load what matches (every key's status: modinspect load models.py:small_cnn "
        "tiny_lm.safetensors --dry-run)\n"
    )
    loose = invoke(
        "tree",
        "models.py:small_cnn",
        "--weights",
        "tiny_lm.safetensors",
        "--no-strict",
        cwd=SAMPLES,
    )
    assert loose.exit_code == 0
    assert loose.stderr.startswith("warning: --weights loaded 0 tensors; 16 missing (")


def test_entry_point_errors(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def boom():\n    raise ValueError('bad config')\nx = 3\n")
    cases = {
        "m.py:boom": "error: m.py:boom raised ValueError: bad config while building the model\n",
        "m.py:x": "error: m.py:x is a int, not an nn.Module, a Module class or a function\n",
        "m.py:nothing": "error: m.py has no attribute 'nothing'\n",
        "missing.py:x": "error: entry point file missing.py does not exist\n",
        "no_such_pkg.mod:x": "error: cannot import no_such_pkg.mod: ModuleNotFoundError: No module named 'no_such_pkg'\n",
    }
    for spec, message in cases.items():
        result = invoke("tree", spec, cwd=tmp_path)
        assert (result.exit_code, result.stderr) == (2, message), spec


def test_no_source_and_no_config(tmp_path: Path) -> None:
    result = invoke("tree", cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: no SOURCE given and no pyproject.toml found in {tmp_path.resolve()} or above"
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = invoke("--debug", "tree", tmp_path / "missing.pt")
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.endswith(f"error: {tmp_path}/missing.pt does not exist\n")


def test_bad_option_value_is_a_usage_error() -> None:
    result = invoke("tree", "small_cnn.pth", "--depth", "-1", cwd=SAMPLES)
    assert result.exit_code == 2
    assert "--depth" in result.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["report", "run.jsonl", "--width", "200"],
            "error: No such option: --width (Possible options: --wide) (see `modinspect report -h`)",
        ),
        (["report"], "error: Missing argument 'LOG [OTHER]'. (see `modinspect report -h`)"),
        (
            ["tree", "small_cnn.pth", "--max-layers", "many"],
            "error: Invalid value for '--max-layers': Input should be a valid integer, unable to parse "
            "string as an integer (see `modinspect tree -h`)",
        ),
        (
            ["tre\x1b[31m"],
            "error: No such command 'tre\\x1b[31m'. (see `modinspect -h`)",
        ),
    ],
)
def test_command_line_mistakes_are_one_plain_line_and_exit_2(args: list[str], line: str) -> None:
    """click's own usage errors (unknown option, missing argument, bad value, unknown command) read like every
    other user error: one line on stderr, control characters escaped, no box, nothing on stdout."""
    result = invoke(*args, cwd=SAMPLES)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == line + "\n"


def test_command_line_mistakes_through_the_installed_entry_point() -> None:
    out = _run(["-m", "modinspect", "tree", "--no-such-flag"])
    assert out.returncode == 2
    assert (
        out.stderr == "error: No such option: --no-such-flag (see `python -m modinspect tree -h`)\n"
    )
    assert out.stdout == ""


def _run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path = SAMPLES
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=full_env, cwd=cwd
    )


PROBE = (
    "import sys\n"
    "from modinspect.cli.app import app\n"
    "try:\n"
    "    app(sys.argv[1:])\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr)\n"
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["tree", "--help"],
        ["tree", "small_cnn.safetensors"],
        ["tree", "tiny_lm.safetensors", "--json"],
    ],
)
def test_help_and_safetensors_tree_never_import_torch(args: list[str]) -> None:
    out = _run(["-c", PROBE, *args])
    assert "TORCH_IMPORTED=False" in out.stderr, out.stderr
    assert out.stdout


def test_piped_output_has_no_colour_codes() -> None:
    out = _run(["-m", "modinspect", "tree", "tiny_lm.safetensors"], env={"TERM": "xterm-256color"})
    assert out.returncode == 0
    assert "\x1b[" not in out.stdout
    assert "lm_head" in out.stdout and "= embed.weight" in out.stdout


def test_no_color_is_respected_on_a_forced_terminal() -> None:
    forced = _run(["-m", "modinspect", "tree", "tiny_lm.safetensors"], env={"FORCE_COLOR": "1"})
    assert "\x1b[" in forced.stdout
    plain = _run(
        ["-m", "modinspect", "tree", "tiny_lm.safetensors"],
        env={"FORCE_COLOR": "1", "NO_COLOR": "1"},
    )
    assert "\x1b[31m" not in plain.stdout and "\x1b[32m" not in plain.stdout


def test_readme_commands_exist() -> None:
    readme = (REPO / "README.md").read_text()
    assert "bash .ci/run" in readme or "pytest" in readme
    assert "modinspect tree sample_models/" in readme
