"""[tool.modinspect]: discovery from subdirectories, paths relative to the pyproject, strict keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modinspect.config import KNOWN_KEYS, load_config
from modinspect.errors import ConfigError
from modinspect.run.source import open_source

NET_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
"""


def make_project(root: Path, table: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "demo"\n\n[tool.modinspect]\n{table}\n'
    )
    return root / "pyproject.toml"


def checkpoint(path: Path) -> dict[str, torch.Tensor]:
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {
        "0.weight": torch.full((4, 3), 0.5),
        "0.bias": torch.arange(4.0),
        "2.weight": torch.ones(2, 4),
        "2.bias": torch.tensor([-1.0, 1.0]),
    }
    torch.save(sd, path)
    return sd


def test_discovery_from_nested_subdirectory(chdir: Path) -> None:
    pyproject = make_project(
        chdir, 'model = "net.py:build"\nweights = "ckpt/w.pt"\ninput_shape = [1, 3]'
    )
    nested = chdir / "a" / "b" / "c"
    nested.mkdir(parents=True)
    config = load_config(nested)
    assert config.path == pyproject.resolve()
    assert config.root == chdir.resolve()
    assert config.model == "net.py:build"
    assert config.weights == "ckpt/w.pt"
    assert config.extra == {"input_shape": [1, 3]}


def test_discovery_defaults_to_cwd(chdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_project(chdir, 'model = "net.py:build"')
    nested = chdir / "sub"
    nested.mkdir()
    monkeypatch.chdir(nested)
    assert load_config().root == chdir.resolve()


def test_nearest_pyproject_wins(tmp_path: Path) -> None:
    make_project(tmp_path, 'model = "outer.py:build"')
    inner = make_project(tmp_path / "pkg", 'model = "inner.py:build"')
    config = load_config(tmp_path / "pkg")
    assert (config.path, config.model) == (inner.resolve(), "inner.py:build")


def test_model_and_weights_resolve_against_the_pyproject_dir(
    chdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(chdir, 'model = "src/net.py:build"\nweights = "ckpt/w.pt"')
    (chdir / "src").mkdir()
    (chdir / "src" / "net.py").write_text(NET_PY)
    sd = checkpoint(chdir / "ckpt" / "w.pt")
    deep = chdir / "docs" / "deeper"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    with open_source(None) as src:
        assert src.format == "entrypoint"
        assert src.label == "src/net.py:build"
        assert src.modules is not None
        assert [m.type for m in src.modules] == ["Sequential", "Linear", "ReLU", "Linear"]
        for name, t in sd.items():
            assert torch.equal(src.read_tensor(name), t), name
        assert src.notes == ["weights: 4 tensors loaded from ckpt/w.pt"]


def test_base_argument_instead_of_cwd(tmp_path: Path) -> None:
    make_project(tmp_path, 'model = "net.py:build"\nweights = "w.pt"')
    (tmp_path / "net.py").write_text(NET_PY)
    sd = checkpoint(tmp_path / "w.pt")
    (tmp_path / "x" / "y").mkdir(parents=True)
    with open_source(None, base=tmp_path / "x" / "y") as src:
        assert torch.equal(src.read_tensor("2.bias"), sd["2.bias"])


def test_config_model_can_be_a_checkpoint_path(tmp_path: Path) -> None:
    make_project(tmp_path, 'model = "ckpt/w.pt"')
    sd = checkpoint(tmp_path / "ckpt" / "w.pt")
    (tmp_path / "sub").mkdir()
    with open_source(None, base=tmp_path / "sub") as src:
        assert src.format == "torch-zip"
        assert src.names() == list(sd)


def test_explicit_weights_override_the_config_and_resolve_against_cwd(
    chdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(chdir, 'model = "net.py:build"\nweights = "missing.pt"')
    (chdir / "net.py").write_text(NET_PY)
    sub = chdir / "runs"
    sd = checkpoint(sub / "mine.pt")
    monkeypatch.chdir(sub)
    with open_source(None, weights="mine.pt") as src:
        assert torch.equal(src.read_tensor("0.weight"), sd["0.weight"])
        assert src.notes == ["weights: 4 tensors loaded from mine.pt"]


def test_config_without_weights(tmp_path: Path) -> None:
    make_project(tmp_path, 'model = "net.py:build"')
    (tmp_path / "net.py").write_text(NET_PY)
    config = load_config(tmp_path)
    assert config.weights is None and config.extra == {}
    with open_source(None, base=tmp_path) as src:
        assert src.notes == []


def test_every_known_key_is_accepted(tmp_path: Path) -> None:
    make_project(
        tmp_path,
        'model = "m.py:x"\nweights = "w.pt"\ninput = "i.pt"\ninput_shape = [2, 3]\n'
        'input_dtype = "float16"\ndevice = "cpu"\ndtype = "bfloat16"',
    )
    config = load_config(tmp_path)
    assert set(config.extra) == KNOWN_KEYS - {"model", "weights"}
    assert config.extra["input_shape"] == [2, 3]


# ---------------------------------------------------------------- errors


def test_missing_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing above tmp_path may hold a pyproject.toml for this test to mean anything.
    from modinspect import config as config_module

    monkeypatch.setattr(config_module, "find_pyproject", lambda start: None)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == (
        f"no SOURCE given and no pyproject.toml found in {tmp_path.resolve()} or above; "
        'pass a SOURCE or add a [tool.modinspect] table with model = "file.py:NAME"'
    )


def test_find_pyproject_stops_at_the_filesystem_root(tmp_path: Path) -> None:
    from modinspect.config import find_pyproject

    found = find_pyproject(tmp_path)
    assert found is None or found.parent in tmp_path.parents
    (tmp_path / "pyproject.toml").mkdir()  # a directory of that name is not a pyproject
    assert find_pyproject(tmp_path) == found


def test_missing_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.ruff]\nline-length = 100\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == (
        f"no SOURCE given and {tmp_path.resolve() / 'pyproject.toml'} has no [tool.modinspect] table; "
        'pass a SOURCE or add one with model = "file.py:NAME"'
    )


def test_missing_table_through_open_source(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"has no \[tool.modinspect\] table"):
        open_source(None, base=tmp_path)


def test_unknown_keys(tmp_path: Path) -> None:
    pyproject = make_project(tmp_path, 'model = "m.py:x"\nwieghts = "w.pt"\nshape = [1]')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == (
        f"[tool.modinspect] in {pyproject.resolve()} has unknown key(s) shape, wieghts; "
        "known keys: device, dtype, input, input_dtype, input_shape, model, weights"
    )


@pytest.mark.parametrize("value", ["42", '""', '["m.py:x"]', "{ a = 1 }", "true"])
def test_model_must_be_a_non_empty_string(tmp_path: Path, value: str) -> None:
    pyproject = make_project(tmp_path, f"model = {value}")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert (
        str(info.value)
        == f'[tool.modinspect] in {pyproject.resolve()} needs model = "file.py:NAME" (a string)'
    )


def test_model_missing(tmp_path: Path) -> None:
    make_project(tmp_path, 'weights = "w.pt"')
    with pytest.raises(ConfigError, match=r'needs model = "file.py:NAME" \(a string\)$'):
        load_config(tmp_path)


@pytest.mark.parametrize("value", ["1", '["w.pt"]', "false"])
def test_weights_must_be_a_string(tmp_path: Path, value: str) -> None:
    pyproject = make_project(tmp_path, f'model = "m.py:x"\nweights = {value}')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"[tool.modinspect] weights in {pyproject.resolve()} must be a string"


def test_table_that_is_not_a_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool]\nmodinspect = "m.py:x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert (
        str(info.value)
        == f"[tool.modinspect] in {tmp_path.resolve() / 'pyproject.toml'} must be a table"
    )


def test_tool_that_is_not_a_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('tool = "x"\n')
    with pytest.raises(ConfigError, match=r"has no \[tool\.modinspect\] table"):
        load_config(tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.modinspect\nmodel = 1\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml is not valid TOML: "):
        load_config(tmp_path)


def test_non_utf8_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_bytes(b'[tool.modinspect]\nmodel = "\xff"\n')
    with pytest.raises(ConfigError, match=r"pyproject.toml is not valid TOML: "):
        load_config(tmp_path)
