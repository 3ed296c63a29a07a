"""Sharded checkpoints and model directories: index files, shard checks, reads through the shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from modinspect.errors import CorruptFileError, SourceNotFoundError, UnknownFormatError
from modinspect.run.source import open_source
from modinspect.sources import Source

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "embed.weight": torch.randn(10, 4, generator=g),
        "layers.0.weight": torch.randn(4, 4, generator=g),
        "layers.0.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "layers.1.weight": torch.randn(4, 4, generator=g),
        "layers.10.weight": torch.randn(4, 4, generator=g),
        "head.weight": torch.randn(3, 4, generator=g),
        "steps": torch.tensor([5, 6], dtype=torch.int64),
    }


SPLIT = {
    SHARD1: ["embed.weight", "layers.0.weight", "layers.0.bias", "layers.10.weight"],
    SHARD2: ["layers.1.weight", "head.weight", "steps"],
}


def write_index(folder: Path, name: str, weight_map: dict[str, str]) -> Path:
    index = folder / name
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def safetensors_dir(
    folder: Path, split: dict[str, list[str]] | None = None
) -> tuple[Path, dict[str, torch.Tensor]]:
    folder.mkdir(exist_ok=True)
    sd = tensors()
    split = split or SPLIT
    for shard, names in split.items():
        save_file({n: sd[n] for n in names}, str(folder / shard))
    write_index(
        folder, "model.safetensors.index.json", {n: s for s, names in split.items() for n in names}
    )
    return folder, sd


def bin_dir(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    folder.mkdir(exist_ok=True)
    sd = tensors()
    shards = {
        "pytorch_model-00001-of-00002.bin": SPLIT[SHARD1],
        "pytorch_model-00002-of-00002.bin": SPLIT[SHARD2],
    }
    for shard, names in shards.items():
        torch.save({n: sd[n] for n in names}, folder / shard)
    write_index(
        folder, "pytorch_model.bin.index.json", {n: s for s, names in shards.items() for n in names}
    )
    return folder, sd


def assert_source_matches(src: Source, sd: dict[str, torch.Tensor]) -> None:
    assert sorted(src.names()) == sorted(sd)
    assert len(src.tensors) == len(sd)
    for name, t in sd.items():
        info = src.info(name)
        assert (info.shape, info.dtype, info.nbytes) == (
            tuple(t.shape),
            str(t.dtype).removeprefix("torch."),
            t.numel() * t.element_size(),
        ), name
        got = src.read_tensor(name)
        assert got.dtype == t.dtype and torch.equal(got, t), name


def test_safetensors_index_directory(tmp_path: Path) -> None:
    folder, sd = safetensors_dir(tmp_path / "hf")
    with open_source(str(folder)) as src:
        assert src.format == "sharded-safetensors"
        assert src.label == str(folder)
        assert_source_matches(src, sd)
        # Shards in index order, natural name order within each shard.
        assert src.names() == [
            "embed.weight",
            "layers.0.bias",
            "layers.0.weight",
            "layers.10.weight",
            "head.weight",
            "layers.1.weight",
            "steps",
        ]
        assert src.info("steps").storage == f"{SHARD2}/{(folder / SHARD2).resolve()}:steps"
        assert len({t.storage for t in src.tensors}) == 7
        assert dict(src.iter_tensors(["steps"]))["steps"].tolist() == [5, 6]


def test_bin_index_directory(tmp_path: Path) -> None:
    folder, sd = bin_dir(tmp_path / "hf")
    with open_source(str(folder)) as src:
        assert src.format == "sharded-torch"
        assert_source_matches(src, sd)
        assert src.names()[:4] == SPLIT[SHARD1]  # torch shards keep their save order


def test_index_file_given_directly(tmp_path: Path) -> None:
    folder, sd = safetensors_dir(tmp_path / "hf")
    index = folder / "model.safetensors.index.json"
    with open_source(str(index)) as src:
        assert src.format == "sharded-safetensors"
        assert src.label == str(index)
        assert_source_matches(src, sd)


def test_relative_index_path_against_base(tmp_path: Path) -> None:
    _, sd = safetensors_dir(tmp_path / "hf")
    with open_source("hf/model.safetensors.index.json", base=tmp_path) as src:
        assert src.label == "hf/model.safetensors.index.json"
        assert_source_matches(src, sd)


def test_safetensors_index_wins_over_bin_index(tmp_path: Path) -> None:
    folder, _ = safetensors_dir(tmp_path / "hf")
    bin_dir(folder)
    with open_source(str(folder)) as src:
        assert src.format == "sharded-safetensors"


def test_other_index_name_in_directory(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    save_file({"a": torch.ones(2)}, str(folder / "part.safetensors"))
    write_index(folder, "diffusion_pytorch_model.safetensors.index.json", {"a": "part.safetensors"})
    with open_source(str(folder)) as src:
        assert src.format == "sharded-safetensors" and src.names() == ["a"]


def test_directory_with_single_safetensors(tmp_path: Path) -> None:
    folder = tmp_path / "single"
    folder.mkdir()
    sd = tensors()
    save_file(sd, str(folder / "model.safetensors"))
    with open_source(str(folder)) as src:
        assert src.format == "safetensors"
        assert src.label == str(folder)
        assert_source_matches(src, sd)


def test_directory_with_single_bin(tmp_path: Path) -> None:
    folder = tmp_path / "single"
    folder.mkdir()
    sd = tensors()
    torch.save(sd, folder / "pytorch_model.bin")
    with open_source(str(folder)) as src:
        assert src.format == "torch-zip"
        assert src.names() == list(sd)
        assert_source_matches(src, sd)


def test_directory_prefers_safetensors_to_bin(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    folder.mkdir()
    save_file({"a": torch.ones(1)}, str(folder / "model.safetensors"))
    torch.save({"b": torch.ones(1)}, folder / "pytorch_model.bin")
    with open_source(str(folder)) as src:
        assert (src.format, src.names()) == ("safetensors", ["a"])


def test_save_model_alias_inside_a_shard(tmp_path: Path) -> None:
    from models import Tied

    folder = tmp_path / "tied"
    folder.mkdir()
    model = Tied()
    save_model(model, str(folder / SHARD1))
    kept = [n for n in model.state_dict() if n != "head.weight"]
    write_index(folder, "model.safetensors.index.json", {n: SHARD1 for n in kept})
    with open_source(str(folder)) as src:
        assert sorted(src.names()) == sorted(model.state_dict())
        assert src.info("head.weight").storage == src.info("embed.weight").storage
        assert torch.equal(src.read_tensor("head.weight"), model.embed.weight.detach())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors"])
def test_shard_path_with_parent_reference_is_refused(tmp_path: Path, shard: str) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"a": torch.ones(1)}, str(tmp_path / "outside.safetensors"))
    index = write_index(folder, "model.safetensors.index.json", {"a": shard})
    with pytest.raises(CorruptFileError) as info:
        open_source(str(folder))
    assert (
        str(info.value)
        == f"{index} names shard {shard!r} outside its directory; refusing to follow it"
    )


def test_absolute_shard_path_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    outside = tmp_path / "outside.safetensors"
    save_file({"a": torch.ones(1)}, str(outside))
    write_index(folder, "model.safetensors.index.json", {"a": str(outside)})
    with pytest.raises(CorruptFileError, match="outside its directory; refusing to follow it"):
        open_source(str(folder))


def test_shard_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"a": torch.ones(1)}, str(tmp_path / "outside.safetensors"))
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    write_index(folder, "model.safetensors.index.json", {"a": "link.safetensors"})
    with pytest.raises(
        CorruptFileError,
        match=r"names shard 'link\.safetensors', which resolves outside its directory",
    ):
        open_source(str(folder))


def test_missing_shard(tmp_path: Path) -> None:
    folder, _ = safetensors_dir(tmp_path / "hf")
    (folder / SHARD2).unlink()
    with pytest.raises(CorruptFileError) as info:
        open_source(str(folder))
    assert (
        str(info.value)
        == f"{folder / 'model.safetensors.index.json'} names shard {SHARD2!r}, which is missing"
    )


def test_index_lists_tensor_the_shard_does_not_hold(tmp_path: Path) -> None:
    folder, _ = safetensors_dir(tmp_path / "hf")
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    weight_map["ghost.weight"] = SHARD2
    weight_map["ghost.bias"] = SHARD2
    write_index(folder, index.name, weight_map)
    with pytest.raises(CorruptFileError) as info:
        open_source(str(folder))
    assert (
        str(info.value)
        == f"{index} places 'ghost.bias' in {SHARD2}, which does not hold it (1 more missing)"
    )


def test_shard_holds_tensor_the_index_does_not_list(tmp_path: Path) -> None:
    folder, _ = safetensors_dir(tmp_path / "hf")
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    del weight_map["steps"]
    write_index(folder, index.name, weight_map)
    with pytest.raises(CorruptFileError) as info:
        open_source(str(folder))
    assert (
        str(info.value)
        == f"{SHARD2} holds 'steps', which model.safetensors.index.json does not list"
    )


def test_shard_holds_tensor_the_index_places_elsewhere(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    split = {SHARD1: ["embed.weight", "head.weight"], SHARD2: ["head.weight", "steps"]}
    safetensors_dir(folder, split)
    # The index maps head.weight to SHARD2 (the last writer wins), but SHARD1 holds it too.
    with pytest.raises(CorruptFileError) as info:
        open_source(str(folder))
    assert (
        str(info.value)
        == f"{SHARD1} holds 'head.weight', which model.safetensors.index.json places in {SHARD2}"
    )


def test_directory_with_nothing_recognisable(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "weights.npz").write_bytes(b"PK\x03\x04junk")
    (folder / "config.json").write_text("{}")
    with pytest.raises(UnknownFormatError) as info:
        open_source(str(folder))
    assert str(info.value) == (
        f"{folder} is a directory without a checkpoint: expected model.safetensors.index.json, "
        "pytorch_model.bin.index.json, model.safetensors or pytorch_model.bin"
    )


@pytest.mark.parametrize(
    "content",
    ['{"weight_map": ["a"]}', '{"metadata": {}}', "[1, 2]", "not json", '{"weight_map": {"a": 1}}'],
)
def test_index_without_a_usable_weight_map(tmp_path: Path, content: str) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(content)
    with pytest.raises(
        CorruptFileError, match=r"is not a readable JSON index|has no weight_map of tensor names"
    ):
        open_source(str(tmp_path))


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"^nope/model.safetensors does not exist$"):
        open_source("nope/model.safetensors", base=tmp_path)


def test_torchscript_shard_is_refused(tmp_path: Path) -> None:
    import warnings

    from models import TwoLayer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript itself is deprecated
        torch.jit.save(torch.jit.script(TwoLayer()), tmp_path / "scripted.pt")
    write_index(tmp_path, "pytorch_model.bin.index.json", {"fc1.weight": "scripted.pt"})
    with pytest.raises(
        CorruptFileError, match=r"names shard 'scripted\.pt', which is not a state dict"
    ):
        open_source(str(tmp_path))
