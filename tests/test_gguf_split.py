"""GGUF split files, written by gguf-py's GGUFWriter with split_max_tensors / split_max_size (the writer
llama.cpp's convert_hf_to_gguf.py --split-max-tensors uses), and part by part with the split.* keys exactly
as llama.cpp's gguf-split sets them (examples/gguf-split/gguf-split.cpp: split.no and split.count uint16,
split.tensors.count int32, the model's metadata in the first part only)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

import ggufs
from conftest import invoke
from modinspect.run.source import open_source
from modinspect.sources.gguf import GGUFSource

Tensors = Sequence[tuple[str, tuple[int, ...], T]]
SPLIT = gguf.Keys.Split


def parts_of(folder: Path, stem: str, count: int) -> list[Path]:
    return [folder / f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


@pytest.fixture
def split3(tmp_path: Path) -> tuple[Path, list[Path]]:
    """The same tiny Llama whole (whole.gguf) and split by gguf-py into 3 files of at most 8 tensors."""
    ggufs.llama(tmp_path / "whole.gguf")
    ggufs.llama(tmp_path / "m.gguf", split_max_tensors=8)
    parts = parts_of(tmp_path, "m", 3)
    assert all(p.is_file() for p in parts) and not (tmp_path / "m.gguf").exists()
    return tmp_path / "whole.gguf", parts


def write_part(
    path: Path,
    tensors: Tensors,
    no: int,
    count: int,
    total: int,
    kv: Callable[[gguf.GGUFWriter], None] | None = None,
    seed: int = 0,
) -> Path:
    """One part as gguf-split writes it: its own header, its tensors, the three split keys."""

    def keys(w: gguf.GGUFWriter) -> None:
        if kv is not None:
            kv(w)
        w.add_uint16(SPLIT.LLM_KV_SPLIT_NO, no)
        w.add_uint16(SPLIT.LLM_KV_SPLIT_COUNT, count)
        w.add_int32(SPLIT.LLM_KV_SPLIT_TENSORS_COUNT, total)

    return ggufs.write(path, tensors, kv=keys, seed=seed)


def two_parts(tmp: Path, second: Tensors = (("b", (8,), T.F32),), **kw: int) -> list[Path]:
    """m-00001-of-00002.gguf (tensor 'a') and m-00002-of-00002.gguf (`second`), split keys as given."""
    p1, p2 = parts_of(tmp, "m", 2)
    write_part(p1, [("a", (4,), T.F32)], kw.get("no1", 0), kw.get("count1", 2), kw.get("total", 2))
    write_part(p2, second, kw.get("no2", 1), kw.get("count2", 2), kw.get("total2", 2), seed=5)
    return [p1, p2]


# ---------------------------------------------------------------- what a split lists


@pytest.mark.parametrize("opened", [0, 1, 2])
def test_any_part_opens_the_whole_model(split3: tuple[Path, list[Path]], opened: int) -> None:
    whole, parts = split3
    readers = [gguf.GGUFReader(p) for p in parts]
    with open_source(parts[opened]) as src, open_source(whole) as one:
        assert isinstance(src, GGUFSource) and src.format == "gguf"
        assert src.label == str(parts[opened])
        # each part's tensors, in part order, as gguf-py reads each file
        assert [(t.name, t.numel, t.nbytes) for t in src.tensors] == [
            (t.name, t.n_elements, t.n_bytes) for r in readers for t in r.tensors
        ]
        # ...and the same model as the unsplit file
        assert [(t.name, t.shape, t.dtype, t.nbytes) for t in src.tensors] == [
            (t.name, t.shape, t.dtype, t.nbytes) for t in one.tensors
        ]
        assert [len(r.tensors) for r in readers] == [8, 8, 5]
        # the model's metadata is the first part's (split.no, which says where part 1 is, left out)
        assert src.metadata == {k: v for k, v in one.metadata.items()} | {
            "split.count": "3",
            "split.tensors.count": "21",
        }
        assert src.notes == [
            f"one model in 3 GGUF files ({parts[0].name} to {parts[2].name}): all their tensors are listed"
        ]


def test_bytes_are_read_from_the_part_holding_them(split3: tuple[Path, list[Path]]) -> None:
    _whole, parts = split3
    with open_source(parts[0]) as src:
        assert isinstance(src, GGUFSource)
        for i, part in enumerate(parts):
            reader = gguf.GGUFReader(part)
            for t in reader.tensors:
                assert src.byte_range(t.name) == (part, int(t.data_offset), int(t.n_bytes)), t.name
                assert src.byte_ranges([t.name]) == [src.byte_range(t.name)]
                assert src.ggml_type(t.name) == t.tensor_type.name
            if i == 2:  # output_norm (F32) and output (BF16) are in the last part
                norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
                torch.testing.assert_close(
                    src.read_tensor("output_norm.weight"), torch.from_numpy(np.array(norm.data))
                )
                chunks = list(src.iter_chunks("output_norm.weight", 100))
                assert [c.numel() for c in chunks] == [100, 100, 56]
                torch.testing.assert_close(torch.cat(chunks), torch.from_numpy(np.array(norm.data)))


def test_split_by_size_lists_what_the_whole_file_does(tmp_path: Path) -> None:
    ggufs.llama(tmp_path / "whole.gguf", blocks=3)
    ggufs.llama(tmp_path / "s.gguf", blocks=3, split_max_size=300_000)
    parts = sorted(tmp_path.glob("s-*-of-*.gguf"))
    assert len(parts) > 2
    with open_source(parts[-1]) as src, open_source(tmp_path / "whole.gguf") as one:
        assert [(t.name, t.shape, t.dtype, t.nbytes) for t in src.tensors] == [
            (t.name, t.shape, t.dtype, t.nbytes) for t in one.tensors
        ]


def test_tree_and_diff_of_a_split_are_the_whole_files(split3: tuple[Path, list[Path]]) -> None:
    whole, parts = split3
    split_doc = json.loads(invoke("tree", parts[1], "--json").stdout)
    whole_doc = json.loads(invoke("tree", whole, "--json").stdout)
    for key in ("totals", "by_dtype", "by_scheme", "modules", "tensors"):
        assert split_doc[key] == whole_doc[key], key
    out = invoke("diff", whole, parts[2])
    assert out.exit_code == 0, out.stderr
    assert "21 compared: 21 equal, 0 changed; 0 only in A, 0 only in B" in out.stdout


def test_hf_names_apply_to_a_split(split3: tuple[Path, list[Path]]) -> None:
    _whole, parts = split3
    out = invoke("tree", parts[2], "--hf-names", "--json")
    assert out.exit_code == 0, out.stderr
    names = [t["name"] for t in json.loads(out.stdout)["tensors"]]
    assert "model.layers.1.mlp.down_proj.weight" in names and "lm_head.weight" in names


def test_parts_as_gguf_split_writes_them(tmp_path: Path) -> None:
    """Written part by part: metadata in part 1 only, the split keys' types as gguf-split's."""
    p1, p2 = parts_of(tmp_path, "x", 2)
    write_part(p1, [("a", (32,), T.Q8_0)], 0, 2, 2, kv=lambda w: w.add_name("two"))
    write_part(p2, [("b", (4, 32), T.F16)], 1, 2, 2)
    with open_source(p2) as src:
        assert [(t.name, t.shape, t.dtype) for t in src.tensors] == [
            ("a", (32,), "Q8_0"),
            ("b", (4, 32), "float16"),
        ]
        assert src.metadata["general.name"] == "two"


def test_a_merged_file_is_one_file(tmp_path: Path) -> None:
    """gguf-split --merge leaves split.count 0 in the merged file: not a split."""
    path = ggufs.write(
        tmp_path / "m-00001-of-00002.gguf",
        [("a", (4,), T.F32)],
        kv=lambda w: w.add_uint16(SPLIT.LLM_KV_SPLIT_COUNT, 0),
    )
    with open_source(path) as src:
        assert src.names() == ["a"] and src.notes == []


def test_a_renamed_part_is_listed_alone_with_a_note(tmp_path: Path) -> None:
    p1, _p2 = two_parts(tmp_path)
    renamed = p1.rename(tmp_path / "model.gguf")
    with open_source(renamed) as src:
        assert src.names() == ["a"]
        assert src.notes == [
            "part 1 of a GGUF split into 2 files, but not named *-00001-of-00002.gguf as the parts "
            "must be: only this file's tensors are listed"
        ]


# ---------------------------------------------------------------- sets that do not add up: one error line


def error_of(path: Path) -> str:
    out = invoke("tree", path)
    assert out.exit_code == 2 and out.stderr.count("\n") == 1, (out.exit_code, out.stderr)
    assert out.stderr.startswith("error: ")
    return out.stderr.removeprefix("error: ").rstrip("\n")


def test_a_missing_part(split3: tuple[Path, list[Path]]) -> None:
    _whole, parts = split3
    parts[2].unlink()
    assert error_of(parts[0]) == (
        f"{parts[0]} is part 1 of a GGUF split into 3 files, but part 3 ({parts[2]}) is missing"
    )


def test_a_part_that_is_a_dangling_link(tmp_path: Path) -> None:
    p1, p2 = two_parts(tmp_path)
    p2.unlink()
    p2.symlink_to(tmp_path / "gone.gguf")
    assert error_of(p1).endswith(f"but part 2 ({p2}) is a link that leads nowhere")


def test_a_part_whose_count_differs(tmp_path: Path) -> None:
    p1, p2 = two_parts(tmp_path, count2=3, no2=1)
    assert error_of(p1) == f"{p2} is named part 2 of 2, but its header says it is part 2 of 3"


def test_a_part_that_is_not_part_of_a_split(tmp_path: Path) -> None:
    p1, p2 = two_parts(tmp_path)
    ggufs.write(p2, [("b", (8,), T.F32)])
    assert (
        error_of(p1) == f"{p2} is named part 2 of 2, but its header says it is not part of a split"
    )


def test_name_and_header_disagree(tmp_path: Path) -> None:
    p1, p2 = two_parts(tmp_path, no2=0)  # part 2 says it is part 1
    assert error_of(p2) == (
        f"{p2} is named part 2 of 2, but its header says part 1 of 2 (split.no 0, split.count 2)"
    )
    assert error_of(p1) == f"{p2} is named part 2 of 2, but its header says it is part 1 of 2"


def test_a_tensor_in_two_parts(tmp_path: Path) -> None:
    p1, p2 = two_parts(tmp_path, second=[("a", (4,), T.F32)])
    assert error_of(p2) == f"{p2} holds the tensor 'a', which {p1} holds too"


def test_tensor_count_differs_from_the_declared(tmp_path: Path) -> None:
    p1, _p2 = two_parts(tmp_path, total=3, total2=3)
    assert error_of(p1) == (
        f"{p1}'s split declares 3 tensors (split.tensors.count), but its 2 files hold 2"
    )


def test_parts_that_disagree_on_the_tensor_count(tmp_path: Path) -> None:
    p1, p2 = two_parts(tmp_path, total2=5)
    assert error_of(p1) == f"{p2} disagrees with {p1} on split.tensors.count: '5' against '2'"


def test_parts_that_disagree_on_the_model(tmp_path: Path) -> None:
    p1, p2 = parts_of(tmp_path, "m", 2)
    write_part(p1, [("a", (4,), T.F32)], 0, 2, 2)

    def keys(w: gguf.GGUFWriter) -> None:
        w.add_uint16(SPLIT.LLM_KV_SPLIT_NO, 1)
        w.add_uint16(SPLIT.LLM_KV_SPLIT_COUNT, 2)
        w.add_int32(SPLIT.LLM_KV_SPLIT_TENSORS_COUNT, 2)

    ggufs.write(p2, [("b", (4,), T.F32)], arch="qwen2", kv=keys)
    assert error_of(p1) == (
        f"{p2} disagrees with {p1} on general.architecture: 'qwen2' against 'llama'"
    )


def test_a_part_linked_to_another(tmp_path: Path) -> None:
    p1, p2 = two_parts(tmp_path)
    p2.unlink()
    os.link(p1, p2)
    assert error_of(p1) == (
        f"{p2} is the same file as part 1 of the split ({p1}): a link, not a part of its own"
    )


def test_a_damaged_part_is_named(split3: tuple[Path, list[Path]]) -> None:
    _whole, parts = split3
    parts[1].write_bytes(parts[1].read_bytes()[:-1])
    assert error_of(parts[0]).startswith(f"{parts[1]} is not a valid GGUF file: it places ")
