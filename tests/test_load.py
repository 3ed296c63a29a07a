"""`modinspect load`: statuses, key mapping, strictness, dry runs, safe atomic writes, round trips."""

from __future__ import annotations

import importlib.util
import json
import re
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import SAMPLES, invoke

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.classifier = nn.Linear(4, classes)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    def net():
        torch.manual_seed(123)
        return Net()

    def five():
        torch.manual_seed(123)
        return Net(classes=5)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(123)
            self.model = Net()

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(7)
            self.embed = nn.Embedding(20, 4)
            self.head = nn.Linear(4, 20, bias=False)
            self.head.weight = self.embed.weight

    class RowView(nn.Module):
        # A buffer that views row 0 of a parameter (one storage, two names, neither a copy).
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.fc = nn.Linear(4, 4)
            self.register_buffer("row", self.fc.weight.data[0])

    class Sliced(nn.Module):
        # A buffer sliced from a table that no name holds: safetensors' save_model refuses it.
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.fc = nn.Linear(2, 2)
            self.register_buffer("pe", torch.arange(16.0).reshape(8, 2)[2:6])
    """
)


def user_models(project: Path) -> ModuleType:
    """The project's models.py under a private name (tests/models.py owns the name 'models')."""
    spec = importlib.util.spec_from_file_location(
        f"user_models_{id(project)}", project / "models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    torch.manual_seed(0)
    trained = user_models(tmp_path).Net()
    with torch.no_grad():
        trained.features[1].running_mean.fill_(0.5)
        trained.features[1].running_var.fill_(2.0)
        trained.features[1].num_batches_tracked.fill_(9)
    torch.save(trained.state_dict(), tmp_path / "ckpt.pth")
    return tmp_path


def load_json(*args: str, cwd: Path) -> tuple[int, dict[str, Any], str]:
    result = invoke("load", *args, "--json", cwd=cwd)
    return (
        result.exit_code,
        json.loads(result.stdout) if result.stdout.strip() else {},
        result.stderr,
    )


def test_full_load_with_batchnorm_buffers_round_trips(project: Path) -> None:
    code, doc, err = load_json("models.py:net", "ckpt.pth", "--out", "out.safetensors", cwd=project)
    assert (code, err) == (0, "")
    assert (
        len(doc["loaded"]) == 9
        and doc["missing"] == doc["unexpected"] == doc["mismatched"] == doc["cast"] == []
    )
    assert doc["performed"] and doc["written"] == "out.safetensors"
    written = load_file(str(project / "out.safetensors"))
    ckpt = torch.load(project / "ckpt.pth", weights_only=True)
    for name, value in ckpt.items():
        assert torch.equal(written[name], value), name
    assert written["features.1.num_batches_tracked"].item() == 9
    assert torch.all(written["features.1.running_var"] == 2.0)


def test_dataparallel_prefix(project: Path) -> None:
    ckpt = torch.load(project / "ckpt.pth", weights_only=True)
    torch.save({f"module.{k}": v for k, v in ckpt.items()}, project / "ddp.pt")
    code, doc, _ = load_json(
        "models.py:net", "ddp.pt", "--strict", "--out", "never.pt", cwd=project
    )
    assert code == 1
    assert not (project / "never.pt").exists()
    assert len(doc["missing"]) == 9 and doc["unexpected"][0].startswith("module.")
    assert doc["hints"] == [
        "9 checkpoint keys match the model once the prefix 'module.' "
        "(DataParallel/DistributedDataParallel) is removed: pass --strip-prefix module."
    ]
    code, doc, _ = load_json(
        "models.py:net", "ddp.pt", "--strict", "--strip-prefix", "module.", cwd=project
    )
    assert code == 0 and len(doc["loaded"]) == 9 and doc["strict_ok"]


def test_wrapped_model_suggests_add_prefix(project: Path) -> None:
    code, doc, _ = load_json("models.py:Wrapped", "ckpt.pth", cwd=project)
    assert code == 0 and doc["loaded"] == []
    assert doc["hints"] == [
        "9 model keys match the checkpoint once the prefix 'model.' is added to its keys: "
        "pass --add-prefix model."
    ]
    code, doc, _ = load_json(
        "models.py:Wrapped", "ckpt.pth", "--add-prefix", "model.", "--strict", cwd=project
    )
    assert code == 0 and len(doc["loaded"]) == 9


def test_classifier_of_another_size(project: Path) -> None:
    result = invoke("load", "models.py:five", "ckpt.pth", "--out", "head.pt", cwd=project)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: 2 tensor(s) have another shape in the checkpoint (classifier.weight [5, 4] in the model vs "
        "[10, 4], classifier.bias [5] in the model vs [10]); nothing was loaded: pass --skip-mismatched to load "
        "the rest\n"
    )
    assert not (project / "head.pt").exists()
    code, doc, _ = load_json(
        "models.py:five", "ckpt.pth", "--skip-mismatched", "--out", "head.pt", cwd=project
    )
    assert code == 0 and doc["mismatched"] == ["classifier.weight", "classifier.bias"]
    assert doc["mismatched_shapes"][0] == {
        "name": "classifier.weight",
        "model": "[5, 4]",
        "checkpoint": "[10, 4]",
    }
    # Round trip: checkpoint values where loaded, the model's own initialisation elsewhere.
    written = torch.load(project / "head.pt", weights_only=True)
    ckpt = torch.load(project / "ckpt.pth", weights_only=True)
    assert torch.equal(written["features.0.weight"], ckpt["features.0.weight"])
    torch.manual_seed(123)
    fresh_head = torch.nn.Linear(4, 5)
    own = user_models(project).five().state_dict()
    assert written["classifier.weight"].shape == fresh_head.weight.shape
    assert torch.equal(written["classifier.weight"], own["classifier.weight"])
    # ... and the written file loads back into the model strictly.
    back = invoke("tree", "models.py:five", "--weights", "head.pt", "--json", cwd=project)
    assert back.exit_code == 0 and back.stderr == ""
    assert json.loads(back.stdout)["notes"] == ["weights: 9 tensors loaded from head.pt"]


def test_renamed_submodule(project: Path) -> None:
    ckpt = torch.load(project / "ckpt.pth", weights_only=True)
    torch.save(
        {k.replace("features.", "backbone."): v for k, v in ckpt.items()}, project / "renamed.pt"
    )
    code, doc, _ = load_json("models.py:net", "renamed.pt", cwd=project)
    assert code == 0 and len(doc["missing"]) == 7 and len(doc["unexpected"]) == 7
    code, doc, _ = load_json(
        "models.py:net", "renamed.pt", "--rename", r"^backbone\.=features.", "--strict", cwd=project
    )
    assert code == 0 and len(doc["loaded"]) == 9
    assert {"model": "features.0.weight", "checkpoint": "backbone.0.weight"} in doc["renamed"]


def test_include_exclude(project: Path) -> None:
    code, doc, _ = load_json(
        "models.py:net",
        "ckpt.pth",
        "--include",
        "features.*",
        "--exclude",
        "*.num_batches_tracked",
        cwd=project,
    )
    assert code == 0
    assert sorted(doc["loaded"]) == sorted(
        [
            "features.0.weight",
            "features.0.bias",
            "features.1.weight",
            "features.1.bias",
            "features.1.running_mean",
            "features.1.running_var",
        ]
    )
    assert sorted(doc["missing"]) == [
        "classifier.bias",
        "classifier.weight",
        "features.1.num_batches_tracked",
    ]


def test_dtype_cast_is_reported_and_applied(project: Path) -> None:
    ckpt = torch.load(project / "ckpt.pth", weights_only=True)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt.items()}
    save_file(half, str(project / "half.safetensors"))
    code, doc, _ = load_json("models.py:net", "half.safetensors", "--out", "cast.pt", cwd=project)
    assert code == 0 and len(doc["cast"]) == 8
    # float16 -> float32 is exact: the cast cost nothing, and the document says so.
    assert doc["cast_dtypes"][0] == {
        "name": "features.0.weight",
        "model": "float32",
        "checkpoint": "float16",
        "max_abs_error": 0.0,
    }
    written = torch.load(project / "cast.pt", weights_only=True)
    assert written["features.0.weight"].dtype == torch.float32
    assert torch.equal(written["features.0.weight"], half["features.0.weight"].float())
    text = invoke("load", "models.py:net", "half.safetensors", cwd=project)
    assert "copy_ converts silently" in text.stdout


def test_cast_lists_collapse_and_show_the_size_of_the_error(tmp_path: Path) -> None:
    """A float64 checkpoint into the float32 SmallCNN: cast rows collapse by layer index and state copy_'s error."""
    torch.manual_seed(5)
    sd = torch.load(SAMPLES / "small_cnn.pth", weights_only=True)
    wide = {
        k: (torch.randn(v.shape, dtype=torch.float64) if v.is_floating_point() else v)
        for k, v in sd.items()
    }
    save_file(wide, str(tmp_path / "wide.safetensors"))
    model = str(SAMPLES / "models.py") + ":small_cnn"
    code, doc, _ = load_json(model, "wide.safetensors", cwd=tmp_path)
    errors = {c["name"]: c["max_abs_error"] for c in doc["cast_dtypes"]}
    expected = {
        k: float((v - v.float().double()).abs().max())
        for k, v in wide.items()
        if v.is_floating_point()
    }
    assert code == 0 and errors == expected and all(e > 0 for e in errors.values())
    text = invoke("load", model, "wide.safetensors", cwd=tmp_path).stdout
    for group, members in (
        ("features.{0-1,3-4}.weight", "0134"),
        ("features.{0-1,3-4}.bias", "0134"),
    ):
        size = max(expected[group.replace("{0-1,3-4}", i)] for i in members)
        assert f"{group} (float64 → float32, max |Δ| {size:.2e}: copy_ converts silently)" in text
    assert "features.0.weight" not in text  # collapsed, not listed one by one
    dry = invoke("load", model, "wide.safetensors", "--dry-run", cwd=tmp_path).stdout
    assert (
        "features.{0-1,3-4}.weight (float64 → float32: copy_ converts silently)" in dry
    )  # nothing copied: no size


def test_load_says_what_was_kept_and_what_would_load(project: Path) -> None:
    kept = invoke("load", "models.py:net", "ckpt.pth", cwd=project).stdout
    assert kept.splitlines()[-1] == (
        "Loaded 9 tensors into the model; nothing was kept: the model lives only in "
        "this process (pass --out FILE to write it)."
    )
    assert kept.splitlines()[4].startswith("loaded ")
    written = invoke(
        "load", "models.py:net", "ckpt.pth", "--out", "w.safetensors", cwd=project
    ).stdout
    assert written.splitlines()[-1] == "Loaded 9 tensors into the model; wrote w.safetensors."
    for flags in (["--dry-run"], ["--meta"]):
        planned = invoke("load", "models.py:net", "ckpt.pth", *flags, cwd=project).stdout
        assert re.match(r"would load +9   features\.", planned.splitlines()[4])
        assert "\nloaded " not in planned
    blocked = invoke("load", "models.py:five", "ckpt.pth", cwd=project)
    assert (
        blocked.exit_code == 2
        and "would load" in blocked.stdout
        and "Nothing was loaded." in blocked.stdout
    )
    strict = invoke("load", "models.py:five", "ckpt.pth", "--strict", cwd=project)
    assert strict.exit_code == 1 and "would load" in strict.stdout


def test_tied_weights(project: Path) -> None:
    tied = user_models(project).Tied()
    save_file({"embed.weight": tied.embed.weight.detach()}, str(project / "untied.safetensors"))
    code, doc, _ = load_json(
        "models.py:Tied", "untied.safetensors", "--strict", "--out", "tied.safetensors", cwd=project
    )
    assert code == 0 and doc["loaded"] == ["embed.weight"] and doc["missing"] == []
    assert doc["tied"] == [{"name": "head.weight", "via": "embed.weight"}]
    tree = json.loads(invoke("tree", "tied.safetensors", "--json", cwd=project).stdout)
    assert tree["tied"] == [["embed.weight", "head.weight"]] or tree["tied"] == [
        ["head.weight", "embed.weight"]
    ]


def test_a_buffer_viewing_part_of_a_parameter_is_written_by_save_model(project: Path) -> None:
    """`--out x.safetensors` is safetensors' save_model: the view is dropped and named in the metadata, and
    safetensors' load_model restores a fresh model whose every tensor equals torch's state_dict."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    models = user_models(project)
    trained = models.RowView()
    with torch.no_grad():
        trained.fc.weight.copy_(torch.arange(16.0).reshape(4, 4))
        trained.fc.bias.fill_(-1.5)
    assert trained.row.data_ptr() == trained.fc.weight.data_ptr()  # the view followed the parameter
    torch.save(trained.state_dict(), project / "view.pt")
    code, doc, err = load_json(
        "models.py:RowView", "view.pt", "--strict", "--out", "view.safetensors", cwd=project
    )
    assert (code, err) == (0, "") and sorted(doc["loaded"]) == ["fc.bias", "fc.weight", "row"]
    assert doc["written"] == "view.safetensors"
    with safe_open(str(project / "view.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["fc.bias", "fc.weight"]
        assert f.metadata() == {"format": "pt", "row": "fc.weight"}
    fresh = models.RowView()
    with torch.no_grad():
        fresh.fc.weight.zero_()
        fresh.fc.bias.zero_()
    # safetensors returns `missing` as a set though it annotates a list: sorted() takes either.
    missing, unexpected = load_model(fresh, str(project / "view.safetensors"))
    assert (sorted(missing), unexpected) == ([], [])
    expected = trained.state_dict()
    assert list(fresh.state_dict()) == list(expected) == ["row", "fc.weight", "fc.bias"]
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert fresh.row.data_ptr() == fresh.fc.weight.data_ptr()
    # The write is still atomic and still refuses to overwrite without --force.
    again = invoke("load", "models.py:RowView", "view.pt", "--out", "view.safetensors", cwd=project)
    assert (again.exit_code, again.stderr) == (
        2,
        "error: view.safetensors exists; pass --force to overwrite it\n",
    )
    forced = invoke(
        "load", "models.py:RowView", "view.pt", "--out", "view.safetensors", "--force", cwd=project
    )
    assert forced.exit_code == 0, forced.stderr
    missing, unexpected = load_model(models.RowView(), str(project / "view.safetensors"))
    assert (sorted(missing), unexpected) == ([], [])
    assert [p.name for p in project.iterdir() if p.name.endswith(".tmp")] == []


def test_a_buffer_sliced_from_a_table_no_name_holds_is_written_whole(project: Path) -> None:
    models = user_models(project)
    sliced = models.Sliced()
    torch.save(sliced.state_dict(), project / "sliced.pt")
    code, doc, err = load_json(
        "models.py:Sliced", "sliced.pt", "--strict", "--out", "sliced.safetensors", cwd=project
    )
    assert (code, err) == (0, "") and doc["written"] == "sliced.safetensors"
    written = load_file(str(project / "sliced.safetensors"))
    expected = sliced.state_dict()
    assert sorted(written) == sorted(expected) == ["fc.bias", "fc.weight", "pe"]
    for name, value in expected.items():
        assert torch.equal(written[name], value), name
    fresh = models.Sliced()
    fresh.load_state_dict(written)
    assert torch.equal(fresh.pe, torch.arange(4.0, 12.0).reshape(4, 2))


def test_refuses_to_overwrite_and_force(project: Path) -> None:
    (project / "keep.pt").write_bytes(b"precious")
    result = invoke("load", "models.py:net", "ckpt.pth", "--out", "keep.pt", cwd=project)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: keep.pt exists; pass --force to overwrite it\n",
    )
    assert (project / "keep.pt").read_bytes() == b"precious"
    forced = invoke("load", "models.py:net", "ckpt.pth", "--out", "keep.pt", "--force", cwd=project)
    assert forced.exit_code == 0
    assert set(torch.load(project / "keep.pt", weights_only=True)) == set(
        torch.load(project / "ckpt.pth", weights_only=True)
    )
    same = invoke("load", "models.py:net", "ckpt.pth", "--out", "ckpt.pth", "--force", cwd=project)
    assert (same.exit_code, same.stderr) == (
        2,
        "error: ckpt.pth is also an input; write the result to another file\n",
    )
    bad = invoke("load", "models.py:net", "ckpt.pth", "--out", "x.txt", cwd=project)
    assert (bad.exit_code, bad.stderr) == (
        2,
        "error: --out x.txt: use a .safetensors, .pt, .pth, .bin or .ckpt file name\n",
    )


def test_dry_run_and_meta_change_nothing(project: Path) -> None:
    code, doc, _ = load_json("models.py:net", "ckpt.pth", "--dry-run", cwd=project)
    assert code == 0 and doc["dry_run"] and not doc["performed"] and len(doc["loaded"]) == 9
    code, doc, _ = load_json("models.py:net", "ckpt.pth", "--meta", cwd=project)
    assert code == 0 and doc["dry_run"] and not doc["performed"] and len(doc["loaded"]) == 9
    result = invoke("load", "models.py:net", "ckpt.pth", "--meta", "--out", "m.pt", cwd=project)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --out needs real weights: drop --meta (which only plans)\n",
    )
    text = invoke("load", "models.py:net", "ckpt.pth", "--dry-run", cwd=project)
    assert "Dry run: 9 tensors would load; nothing was changed." in text.stdout


def test_model_from_project_config_and_errors(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.modinspect]\nmodel = "models.py:net"\nweights = "nope.pt"\n'
    )
    code, doc, _ = load_json("ckpt.pth", cwd=project)  # config weights are not applied by load
    assert code == 0 and doc["model"] == "models.py:net" and len(doc["loaded"]) == 9
    result = invoke("load", "ckpt.pth", "ckpt.pth", cwd=project)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: ckpt.pth is a checkpoint, not a model: load needs MODEL as an entry point "
        "(file.py:NAME) or a TorchScript file\n"
    )
    many = invoke("load", "a", "b", "c", cwd=project)
    assert (many.exit_code, many.stderr) == (
        2,
        "error: load takes [MODEL] CHECKPOINT: one or two SOURCEs\n",
    )
