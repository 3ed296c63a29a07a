"""The smaller promises of the second hostile-files round: say what is imported, say what is missing,
one stderr line per error."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from conftest import invoke
from hostile import write_victim


def test_the_default_model_is_announced_before_it_is_imported(tmp_path: Path) -> None:
    write_victim(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.modinspect]\nmodel = "victim.py:build"\n')
    result = invoke("tree", cwd=tmp_path)
    assert result.exit_code == 0
    assert result.stderr == (
        f"note: importing victim.py:build, the model [tool.modinspect] names in {tmp_path / 'pyproject.toml'}\n"
    )


def test_a_checkpoint_as_the_model_of_the_table_is_not_announced(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    (tmp_path / "pyproject.toml").write_text('[tool.modinspect]\nmodel = "w.pt"\n')
    result = invoke("tree", cwd=tmp_path)
    assert (result.exit_code, result.stderr) == (0, "")  # nothing is imported: nothing to announce


def test_load_with_one_argument_says_where_model_comes_from(tmp_path: Path) -> None:
    write_victim(tmp_path)
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "fc.pt")
    result = invoke("load", "fc.pt", cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: load takes MODEL CHECKPOINT; with only fc.pt, MODEL would come from [tool.modinspect], and there "
        "is none here: pass both, e.g. modinspect load models.py:build fc.pt\n"
    )
    (tmp_path / "pyproject.toml").write_text('[tool.modinspect]\nmodel = "victim.py:build"\n')
    torch.save({"fc.weight": torch.ones(3, 4), "fc.bias": torch.ones(3)}, tmp_path / "fc.pt")
    result = invoke("load", "fc.pt", "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "note: load takes MODEL CHECKPOINT; fc.pt is the CHECKPOINT, MODEL comes from [tool.modinspect]",
        f"note: importing victim.py:build, the model [tool.modinspect] names in {tmp_path / 'pyproject.toml'}",
    ]


def test_a_missing_checkpoint_with_a_colon_is_missing_not_a_module(tmp_path: Path) -> None:
    result = invoke("tree", "model.ckpt:latest", cwd=tmp_path)
    assert (result.exit_code, result.stderr) == (2, "error: model.ckpt:latest does not exist\n")
    result = invoke("tree", "weights.safetensors:ema", cwd=tmp_path)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: weights.safetensors:ema does not exist\n",
    )
    # a real package.module:NAME still is an entry point
    result = invoke("tree", "nosuchpkg.models:build", cwd=tmp_path)
    assert result.exit_code == 2 and result.stderr.startswith(
        "error: cannot import nosuchpkg.models"
    )


def test_torch_warnings_about_an_input_file_do_not_reach_stderr(tmp_path: Path) -> None:
    """A quantized batch makes torch.load warn (TypedStorage is deprecated): only modinspect's line remains."""
    (tmp_path / "net.py").write_text(
        "import torch\ndef build():\n    return torch.nn.Linear(4, 4)\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.quantize_per_tensor(torch.rand(2, 4), 0.1, 0, torch.qint8)
    torch.save({"input": batch}, tmp_path / "batch.pt")
    result = invoke("stats", "net.py:build", "--input", "batch.pt", cwd=tmp_path)
    # The batch loads quietly; a Linear cannot take a quantized input, and that is the one line.
    assert result.exit_code == 2
    assert result.stderr == (
        "error: the model raised RuntimeError: mat1 and mat2 must have the same dtype, but got QInt8 and Float in "
        "(model) (Linear)\n"
    )


def test_a_refused_rebuild_reads_as_a_sentence(tmp_path: Path) -> None:
    """`_rebuild_from_type_v2` handed a number as its rebuild function: the one error line is a sentence."""
    path = tmp_path / "odd.pkl"
    path.write_bytes(b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(K\x01N(K\x00t}tR.")
    result = invoke("tree", str(path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {path} is not a valid torch checkpoint: it rebuilds a tensor with an unexpected "
        "function\n"
    )
