"""torch.distributed.checkpoint directories, written by dcp.save in one process, read without unpickling code."""

from __future__ import annotations

import dataclasses
import json
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import invoke
from models import WithBatchNorm
from modinspect import open_source
from modinspect.errors import CorruptFileError, UnsafePickleError
from modinspect.sources.dcp import DcpSource

dcp = pytest.importorskip("torch.distributed.checkpoint")


class SplitPlanner(dcp.DefaultSavePlanner):  # type: ignore[misc, name-defined]  # importorskip's module is Any to mypy
    """Saves the tensors named in `splits` as several chunks along one dimension, as a sharded save does.

    One process cannot shard a DTensor, but the chunk layout DCP writes for one (a ChunkStorageMetadata per
    piece, each piece its own torch.save record) comes from the plan: this planner asks for it directly.
    """

    def __init__(self, splits: dict[str, tuple[int, list[int]]]) -> None:
        super().__init__()
        self.splits = splits
        self.pieces: dict[tuple[str, tuple[int, ...]], tuple[int, int, int]] = {}

    def create_local_plan(self) -> Any:
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
        from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

        plan = super().create_local_plan()
        items = []
        for item in plan.items:
            if item.index.fqn not in self.splits:
                items.append(item)
                continue
            dim, parts = self.splits[item.index.fqn]
            full, start = item.tensor_data.size, 0
            for i, n in enumerate(parts):
                offsets = [0] * len(full)
                offsets[dim] = start
                sizes = list(full)
                sizes[dim] = n
                self.pieces[(item.index.fqn, tuple(offsets))] = (dim, start, n)
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
                data = TensorWriteData(
                    chunk=chunk, properties=item.tensor_data.properties, size=full
                )
                items.append(
                    WriteItem(
                        index=MetadataIndex(item.index.fqn, torch.Size(offsets), i),
                        type=WriteItemType.SHARD,
                        tensor_data=data,
                    )
                )
                start += n
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def lookup_object(self, index: Any) -> Any:
        key = (index.fqn, tuple(index.offset)) if index.offset is not None else None
        if key in self.pieces:
            dim, start, n = self.pieces[key]
            return self.state_dict[index.fqn].narrow(dim, start, n)
        return super().lookup_object(index)


def save_dcp(state: dict[str, Any], folder: Path, planner: Any = None) -> Path:
    dcp.save(state, checkpoint_id=str(folder), planner=planner)
    return folder


def test_lists_names_shapes_dtypes_and_chunks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = WithBatchNorm().state_dict()
    folder = save_dcp(dict(state), tmp_path / "ckpt")
    assert (folder / ".metadata").is_file() and (folder / "__0_0.distcp").is_file()
    with open_source(str(folder)) as src:
        assert src.format == "dcp"
        assert sorted(src.names()) == sorted(state)
        for name, t in state.items():
            info = src.info(name)
            assert info.shape == tuple(t.shape) and info.dtype == str(t.dtype).removeprefix(
                "torch."
            )
            assert info.nbytes == t.numel() * t.element_size()
            assert torch.equal(src.read_tensor(name), t)
        assert src.info("bn.running_mean").kind == "buffer"
        assert src.notes[0] == (
            f"torch.distributed.checkpoint: {len(state)} tensors in {len(state)} chunks "
            "across 1 file(s) (__0_0.distcp)"
        )


def test_nested_state_dict_and_non_tensor_entries(tmp_path: Path) -> None:
    folder = save_dcp({"model": {"w": torch.ones(2, 3)}, "step": 7}, tmp_path / "ckpt")
    with open_source(str(folder)) as src:
        assert src.names() == ["model.w"]
        assert [(e.name, e.summary) for e in src.other_entries] == [
            ("step", "pickled object (not read)")
        ]
        assert torch.equal(src.read_tensor("model.w"), torch.ones(2, 3))


def test_multi_chunk_tensors_are_reassembled(tmp_path: Path) -> None:
    w = torch.arange(35.0).reshape(7, 5)
    v = torch.randn(2, 3, 4, dtype=torch.float64)
    state = {"w": w, "v": v, "b": torch.ones(3)}
    folder = save_dcp(
        dict(state), tmp_path / "ckpt", SplitPlanner({"w": (0, [3, 4]), "v": (2, [1, 3])})
    )
    # DCP's own loader reassembles them too: the file really is chunked as declared.
    theirs = {k: torch.zeros_like(t) for k, t in state.items()}
    dcp.load(theirs, checkpoint_id=str(folder))
    with open_source(str(folder)) as src:
        assert isinstance(src, DcpSource)
        assert [len(src._chunks_of[n]) for n in ("w", "v", "b")] == [2, 2, 1]
        assert "2 tensor(s) saved in several chunks" in src.notes[1]
        for name in state:
            assert torch.equal(src.read_tensor(name), theirs[name])
            pieces = list(src.iter_chunks(name, 4))
            assert all(p.numel() == 4 for p in pieces[:-1])
            assert torch.equal(torch.cat(pieces), theirs[name].reshape(-1))


def test_safetensors_serialization_format(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.filesystem import SerializationFormat

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    writer = dcp.FileSystemWriter(
        str(tmp_path / "ckpt"), serialization_format=SerializationFormat.SAFETENSORS
    )
    dcp.save(dict(state), storage_writer=writer)
    with open_source(str(tmp_path / "ckpt")) as src:
        for name, t in state.items():
            assert torch.equal(src.read_tensor(name), t)
            assert torch.equal(torch.cat(list(src.iter_chunks(name, 2))), t.reshape(-1))


def test_diff_against_torch_save_and_load_into_a_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = WithBatchNorm().state_dict()
    folder = save_dcp(dict(state), tmp_path / "ckpt")
    torch.save(state, tmp_path / "same.pt")
    same = invoke("diff", str(folder), str(tmp_path / "same.pt"))
    assert same.exit_code == 0, same.stdout
    changed = dict(state)
    changed["fc.bias"] = state["fc.bias"] + 1
    torch.save(changed, tmp_path / "changed.pt")
    result = invoke("diff", str(folder), str(tmp_path / "changed.pt"), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [d["name"] for d in doc["changed"]] == ["fc.bias"]
    tests_dir = str(Path(__file__).parent)
    (tmp_path / "m.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {tests_dir!r})
        from models import WithBatchNorm
        def build():
            return WithBatchNorm()
    """)
    )
    out = tmp_path / "loaded.pt"
    loaded = invoke(
        "load", f"{tmp_path / 'm.py'}:build", str(folder), "--strict", "--out", str(out)
    )
    assert loaded.exit_code == 0, loaded.stdout + loaded.stderr
    back = torch.load(out, weights_only=True)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_metadata_with_a_foreign_global_is_refused_unread(tmp_path: Path) -> None:
    folder = save_dcp({"w": torch.ones(2)}, tmp_path / "ckpt")

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafePickleError, match=r"needs 'builtins\.print'"):
        open_source(str(folder))
    result = invoke("tree", str(folder))
    assert (
        result.exit_code == 2 and "builtins.print" in result.stderr and "pwned" not in result.stdout
    )


def test_chunk_outside_the_directory_or_file_is_refused(tmp_path: Path) -> None:
    folder = save_dcp({"w": torch.ones(2)}, tmp_path / "ckpt")
    raw = (folder / ".metadata").read_bytes()
    # The same length, so the pickle stays valid.
    (folder / ".metadata").write_bytes(raw.replace(b"__0_0.distcp", b"../_0.distcp"))
    with pytest.raises(CorruptFileError, match="outside its directory"):
        open_source(str(folder))
    (folder / ".metadata").write_bytes(raw)
    data = (folder / "__0_0.distcp").read_bytes()
    (folder / "__0_0.distcp").write_bytes(data[:10])
    with pytest.raises(CorruptFileError, match=r"past the end of __0_0\.distcp"):
        open_source(str(folder))


def test_unsafe_pickle_reads_metadata_with_other_globals(tmp_path: Path) -> None:
    import collections

    folder = save_dcp({"w": torch.arange(4.0)}, tmp_path / "ckpt")
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    metadata.storage_meta = collections.Counter(a=1)  # a global outside the allowlist
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    refused = invoke("tree", str(folder))
    assert refused.exit_code == 2 and "'collections.Counter'" in refused.stderr
    result = invoke("tree", str(folder), "--unsafe-pickle", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("warning: --unsafe-pickle: fully unpickling ")
    assert json.loads(result.stdout)["totals"]["tensors"] == 1
    with open_source(str(folder), unsafe_pickle=True) as src:
        assert torch.equal(src.read_tensor("w"), torch.arange(4.0))


def test_metadata_cannot_rewrite_the_allowlist(tmp_path: Path) -> None:
    """BUILD on an allowed function or shared dtype object is refused, so a file cannot alter later reads."""
    from modinspect.sources.dcp_metadata import ALLOWED

    folder = save_dcp({"w": torch.ones(2)}, tmp_path / "ckpt")
    for module, name in (("torch", "Size"), ("torch", "float32"), ("pathlib", "PosixPath")):
        # GLOBAL module name; {'__defaults__': (1,)} BUILD; STOP  (protocol 2: PROTO 2 first)
        body = (
            b"\x80\x02c"
            + f"{module}\n{name}\n".encode()
            + b"}q\x00X\x0c\x00\x00\x00__defaults__q\x01K\x01\x85"
            b"q\x02sb."
        )
        (folder / ".metadata").write_bytes(body)
        with pytest.raises(CorruptFileError, match="tries to modify"):
            open_source(str(folder))
        assert "__defaults__" not in getattr(ALLOWED[(module, name)], "__dict__", {})


def test_extension_transforms_and_short_chunks_are_named(tmp_path: Path) -> None:
    folder = save_dcp({"w": torch.arange(6.0), "b": torch.ones(2)}, tmp_path / "ckpt")
    real = (folder / ".metadata").read_bytes()
    metadata = pickle.loads(real)
    for info in metadata.storage_data.values():
        if info.relative_path and metadata.state_dict_metadata:
            info.transform_descriptors = ["zstd"]
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with open_source(str(folder)) as src:
        assert src.info("w").shape == (6,)  # listing needs no data
        from modinspect.errors import UnknownFormatError

        with pytest.raises(
            UnknownFormatError, match=r"'w' is stored through DCP extensions \(zstd\)"
        ):
            src.read_tensor("w")
    metadata = pickle.loads(real)
    metadata.state_dict_metadata["w"].size = torch.Size([7])
    metadata.state_dict_metadata["w"].chunks[0].sizes = torch.Size([5])
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CorruptFileError, match="the chunks of 'w' hold 5 elements, not 7"):
        open_source(str(folder))
