"""Python entry points: file.py:NAME and package.module:NAME, --meta, --weights and their errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import live
from models import Tied, TwoLayer
from modinspect.errors import EntryPointError, UsageError, WeightsMismatchError
from modinspect.run.source import open_source
from modinspect.sources.base import tied_groups
from modinspect.sources.entrypoint import looks_like_entry_point

MODELS_PY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x):
        return self.fc2(self.fc1(x)) * self.scale


class TiedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 20, bias=False)
        self.head.weight = self.embed.weight


class NeedsArgs(nn.Module):
    def __init__(self, width):
        super().__init__()


instance = Net()


def build():
    model = Net()
    model.eval()
    return model


def build_tied():
    return TiedNet()


class Zoo:
    small = Net()

    class Inner:
        build = staticmethod(build)


def broken():
    raise RuntimeError("factory exploded\\nsecond line")


def not_a_module():
    return {"a": 1}


number = 42
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mymodels.py").write_text(MODELS_PY)
    return tmp_path


@pytest.fixture
def clean_modules() -> Iterator[None]:
    """Forget packages the test imported from tmp_path, so the next test imports its own."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("mi_pkg", "mi_broken")):
            del sys.modules[name]


def test_looks_like_entry_point(tmp_path: Path) -> None:
    assert looks_like_entry_point("models.py:build")
    assert looks_like_entry_point("dir/models.py:Net")
    assert looks_like_entry_point("pkg.sub.mod:build")
    assert looks_like_entry_point("mod:Zoo.small")
    assert not looks_like_entry_point("model.safetensors")
    assert not looks_like_entry_point("ckpt.pt:")
    assert not looks_like_entry_point(":build")
    assert not looks_like_entry_point("data/run:3/model.pt")
    assert not looks_like_entry_point("weights/model.pt:x")


@pytest.mark.parametrize(
    ("name", "training"),
    [
        ("instance", True),
        ("Net", True),
        ("build", False),
        ("Zoo.small", True),
        ("Zoo.Inner.build", False),
    ],
)
def test_file_entry_point_kinds(project: Path, name: str, training: bool) -> None:
    with open_source(f"mymodels.py:{name}", base=project) as src:
        assert src.format == "entrypoint"
        assert src.label == f"mymodels.py:{name}"
        assert type(src.module).__name__ == "Net"
        assert src.modules is not None
        assert [(m.name, m.type, m.training) for m in src.modules] == [
            ("", "Net", training),
            ("fc1", "Linear", training),
            ("fc2", "Linear", training),
        ]
        assert [(t.name, t.kind) for t in src.tensors] == [
            ("scale", "buffer"),
            ("fc1.weight", "parameter"),
            ("fc1.bias", "parameter"),
            ("fc2.weight", "parameter"),
            ("fc2.bias", "parameter"),
        ]
        assert src.info("fc1.weight").shape == (8, 4)
        assert src.info("fc1.weight").requires_grad is True
        assert src.info("scale").persistent is True
        assert src.notes == [] and src.warnings == []
        assert torch.equal(src.read_tensor("fc2.bias"), live(src).fc2.bias.detach())


def test_file_entry_point_in_a_subdirectory_imports_its_neighbours(tmp_path: Path) -> None:
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "mi_helper_layers.py").write_text("from torch import nn\nWIDTH = 5\n")
    (pkg / "net.py").write_text(
        "from torch import nn\nimport mi_helper_layers\n\n"
        "def build():\n    return nn.Linear(mi_helper_layers.WIDTH, 2)\n"
    )
    try:
        with open_source("src/net.py:build", base=tmp_path) as src:
            assert src.info("weight").shape == (2, 5)
        assert str(pkg) not in sys.path  # the folder is only on sys.path while importing
    finally:
        sys.modules.pop("mi_helper_layers", None)


def test_file_entry_point_relative_to_cwd_by_default(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    with open_source("mymodels.py:build") as src:
        assert src.modules is not None and src.modules[0].type == "Net"


def test_package_entry_point(tmp_path: Path, clean_modules: None) -> None:
    pkg = tmp_path / "mi_pkg_a"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODELS_PY)
    with open_source("mi_pkg_a.nets:build_tied", base=tmp_path) as src:
        assert src.format == "entrypoint"
        assert src.modules is not None
        assert [m.type for m in src.modules] == ["TiedNet", "Embedding", "Linear"]
        assert tied_groups(src.tensors) == [["embed.weight", "head.weight"]]
    assert str(tmp_path) not in sys.path


def test_installed_module_entry_point(tmp_path: Path) -> None:
    # tests/models.py is importable as `models` here, like any installed module.
    with open_source("models:Tied", base=tmp_path) as src:
        assert isinstance(src.module, Tied)


# ---------------------------------------------------------------- --meta


def test_meta_builds_on_meta_device_and_keeps_ties(project: Path) -> None:
    with open_source("mymodels.py:build_tied", base=project, meta=True) as src:
        assert all(p.device.type == "meta" for p in live(src).parameters())
        assert src.notes == ["built on the meta device: no tensor data"]
        embed, head = src.info("embed.weight"), src.info("head.weight")
        assert embed.storage is not None and embed.storage == head.storage
        assert tied_groups(src.tensors) == [["embed.weight", "head.weight"]]
        assert (embed.shape, embed.dtype, embed.nbytes) == ((20, 6), "float32", 20 * 6 * 4)


def test_meta_untied_tensors_do_not_share_storage(project: Path) -> None:
    with open_source("mymodels.py:Net", base=project, meta=True) as src:
        assert all(t.storage is not None for t in src.tensors)
        assert len({t.storage for t in src.tensors}) == len(src.tensors) == 5
        assert tied_groups(src.tensors) == []


def test_meta_with_a_prebuilt_instance_says_so(project: Path) -> None:
    with open_source("mymodels.py:instance", base=project, meta=True) as src:
        # An instance was built on import: --meta cannot apply, and the notes must not claim it did.
        assert all(p.device.type == "cpu" for p in live(src).parameters())
        assert src.notes == [
            "--meta has no effect: mymodels.py:instance is a model already built with its data"
        ]


def test_meta_with_weights_checks_without_loading(project: Path) -> None:
    ckpt = project / "w.pt"
    torch.save({"embed.weight": torch.ones(20, 6)}, ckpt)
    with open_source("mymodels.py:build_tied", base=project, meta=True, weights=str(ckpt)) as src:
        assert live(src).embed.weight.device.type == "meta"
        assert (
            src.notes[-1] == f"weights from {ckpt} checked against the model, not loaded (--meta)"
        )
    torch.save({"embed.weight": torch.ones(21, 6)}, ckpt)
    with pytest.raises(
        WeightsMismatchError, match=r"1 with another shape \(embed.weight \[20, 6\] vs \[21, 6\]\)"
    ):
        open_source("mymodels.py:build_tied", base=project, meta=True, weights=str(ckpt))


# ---------------------------------------------------------------- --weights


def _checkpoint(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    sd = {
        "fc1.weight": torch.randn(8, 4),
        "fc1.bias": torch.randn(8),
        "fc2.weight": torch.randn(2, 8),
        "fc2.bias": torch.randn(2),
        "scale": torch.full((2,), 3.0),
    }
    torch.save(sd, path)
    return sd


def test_weights_load_strictly(project: Path) -> None:
    sd = _checkpoint(project / "ckpt.pt")
    with open_source("mymodels.py:build", base=project, weights=str(project / "ckpt.pt")) as src:
        for name, t in sd.items():
            assert torch.equal(src.read_tensor(name), t), name
        assert torch.equal(live(src).fc1.weight.detach(), sd["fc1.weight"])
        assert src.notes == [f"weights: 5 tensors loaded from {project / 'ckpt.pt'}"]
        assert src.warnings == []


def test_weights_from_safetensors_with_dtype_cast(project: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v.to(torch.float16) for k, v in _checkpoint(project / "ckpt.pt").items()}
    save_file(sd, str(project / "half.safetensors"))
    with open_source(
        "mymodels.py:Net", base=project, weights=str(project / "half.safetensors")
    ) as src:
        assert src.info("fc1.weight").dtype == "float32"
        assert torch.equal(src.read_tensor("fc1.weight"), sd["fc1.weight"].float())


def test_weights_into_tied_model(project: Path) -> None:
    torch.save({"embed.weight": torch.arange(120.0).reshape(20, 6)}, project / "emb.pt")
    with open_source("mymodels.py:TiedNet", base=project, weights=str(project / "emb.pt")) as src:
        assert torch.equal(src.read_tensor("head.weight"), torch.arange(120.0).reshape(20, 6))
        assert src.warnings == []


def test_strict_mismatch_names_missing_and_unexpected(project: Path) -> None:
    sd = _checkpoint(project / "ckpt.pt")
    sd["extra.weight"] = sd.pop("fc2.weight")
    sd["fc1.bias"] = torch.zeros(9)
    torch.save(sd, project / "bad.pt")
    with pytest.raises(WeightsMismatchError) as info:
        open_source("mymodels.py:build", base=project, weights=str(project / "bad.pt"))
    assert str(info.value) == (
        f"{project / 'bad.pt'} does not match mymodels.py:build: 1 missing (fc2.weight); 1 unexpected (extra.weight); "
        "1 with another shape (fc1.bias [8] vs [9]); fix the key names or pass --no-strict to load what matches "
        f"(every key's status: modinspect load mymodels.py:build {project / 'bad.pt'} --dry-run)"
    )


def test_non_strict_loads_what_matches_and_warns(project: Path) -> None:
    sd = _checkpoint(project / "ckpt.pt")
    sd["extra.weight"] = sd.pop("fc2.weight")
    torch.save(sd, project / "bad.pt")
    with open_source(
        "mymodels.py:build", base=project, weights=str(project / "bad.pt"), strict=False
    ) as src:
        for name in ("fc1.weight", "fc1.bias", "fc2.bias", "scale"):
            assert torch.equal(src.read_tensor(name), sd[name]), name
        assert not torch.equal(src.read_tensor("fc2.weight"), sd["extra.weight"])
        assert src.warnings == [
            "--weights loaded 4 tensors; 1 missing (fc2.weight); 1 unexpected (extra.weight)"
        ]
        assert src.notes == [f"weights: 4 tensors loaded from {project / 'bad.pt'}"]


def test_weights_on_a_checkpoint_source_is_a_usage_error(tmp_path: Path) -> None:
    torch.save(TwoLayer().state_dict(), tmp_path / "a.pt")
    with pytest.raises(UsageError) as info:
        open_source(str(tmp_path / "a.pt"), weights=str(tmp_path / "a.pt"))
    assert str(info.value).startswith(
        f"--weights needs a SOURCE that builds a model (an entry point or TorchScript); "
        f"{tmp_path / 'a.pt'} is a checkpoint"
    )


def test_relative_weights_resolve_against_base(project: Path) -> None:
    sd = _checkpoint(project / "ckpt.pt")
    with open_source("mymodels.py:build", base=project, weights="ckpt.pt") as src:
        assert torch.equal(src.read_tensor("fc2.weight"), sd["fc2.weight"])


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        open_source("nothere.py:build", base=tmp_path)
    assert str(info.value) == "entry point file nothere.py does not exist"


@pytest.mark.parametrize("attr", ["nothing", "Zoo.missing", "Zoo.Inner.nope"])
def test_missing_attribute(project: Path, attr: str) -> None:
    with pytest.raises(EntryPointError) as info:
        open_source(f"mymodels.py:{attr}", base=project)
    assert str(info.value) == f"mymodels.py has no attribute {attr!r}"


def test_missing_module(tmp_path: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        open_source("mi_pkg_missing.nets:build", base=tmp_path)
    assert str(info.value) == (
        "cannot import mi_pkg_missing.nets: ModuleNotFoundError: No module named 'mi_pkg_missing'"
    )


def test_file_whose_import_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import torch\nraise ValueError('config missing\\nmore detail')\n"
    )
    with pytest.raises(EntryPointError) as info:
        open_source("bad.py:build", base=tmp_path)
    assert str(info.value) == "importing bad.py raised ValueError: config missing"
    assert isinstance(info.value.__cause__, ValueError)


def test_file_whose_import_fails_to_import_a_dependency(tmp_path: Path) -> None:
    (tmp_path / "dep.py").write_text("import mi_not_installed_anywhere\n")
    with pytest.raises(EntryPointError) as info:
        open_source("dep.py:build", base=tmp_path)
    assert (
        str(info.value)
        == "cannot import dep.py: ModuleNotFoundError: No module named 'mi_not_installed_anywhere'"
    )


def test_file_with_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "syn.py").write_text("def build(:\n")
    with pytest.raises(EntryPointError, match=r"^importing syn.py raised SyntaxError: "):
        open_source("syn.py:build", base=tmp_path)


def test_package_whose_import_raises(tmp_path: Path, clean_modules: None) -> None:
    pkg = tmp_path / "mi_broken_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("raise ImportError('needs CUDA')\n")
    with pytest.raises(EntryPointError) as info:
        open_source("mi_broken_pkg.nets:build", base=tmp_path)
    assert str(info.value) == "importing mi_broken_pkg.nets raised ImportError: needs CUDA"


def test_import_calling_sys_exit_is_caught(tmp_path: Path) -> None:
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(EntryPointError) as info:
        open_source("exits.py:build", base=tmp_path)
    assert str(info.value) == "importing exits.py raised SystemExit: 3"


def test_factory_raising(project: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        open_source("mymodels.py:broken", base=project)
    assert (
        str(info.value)
        == "mymodels.py:broken raised RuntimeError: factory exploded while building the model"
    )
    assert isinstance(info.value.__cause__, RuntimeError)


def test_class_needing_arguments(project: Path) -> None:
    with pytest.raises(
        EntryPointError,
        match=r"^mymodels.py:NeedsArgs raised TypeError: .*width.* while building the model$",
    ):
        open_source("mymodels.py:NeedsArgs", base=project)


def test_factory_returning_a_non_module(project: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        open_source("mymodels.py:not_a_module", base=project)
    assert str(info.value) == "mymodels.py:not_a_module returned a dict, not an nn.Module"


def test_attribute_that_is_not_callable(project: Path) -> None:
    with pytest.raises(EntryPointError) as info:
        open_source("mymodels.py:number", base=project)
    assert (
        str(info.value)
        == "mymodels.py:number is a int, not an nn.Module, a Module class or a function"
    )


def test_entry_point_file_is_not_left_on_sys_path(project: Path) -> None:
    before = list(sys.path)
    with pytest.raises(EntryPointError):
        open_source("mymodels.py:broken", base=project)
    open_source("mymodels.py:build", base=project).close()
    assert sys.path == before
