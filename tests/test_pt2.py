"""torch.export .pt2 archives written by torch.export.save: module tree and state from JSON, no pickle loaded."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import invoke
from models import Tied
from modinspect import build_tree, open_source
from modinspect.errors import UnknownFormatError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
        self.register_buffer("scale", torch.full((5,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x))) * self.scale


def export(
    model: nn.Module, args: tuple[torch.Tensor, ...], path: Path
) -> torch.export.ExportedProgram:
    ep = torch.export.export(model.eval(), args)
    torch.export.save(ep, path)
    return ep


def test_tree_state_and_kinds_from_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = Net()
    ep = export(model, (torch.randn(2, 3, 8, 8),), tmp_path / "net.pt2")
    with zipfile.ZipFile(tmp_path / "net.pt2") as zf:
        assert any(n.endswith("/archive_format") for n in zf.namelist())
    from modinspect.sources.pickle import gate as pickle_gate

    def no_unpickling(self: object) -> None:
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle_gate.RestrictedUnpickler, "load", no_unpickling)
    with open_source(str(tmp_path / "net.pt2")) as src:
        assert src.format == "torch-export"
        report = build_tree(src)
        types = {m.name: m.type for m in report.modules}
        assert types == {
            "": "Net",
            "conv": "Conv2d",
            "bn": "BatchNorm2d",
            "head": "Sequential",
            "head.0": "Flatten",
            "head.1": "Linear",
        }
        assert report.totals.params == sum(p.numel() for p in model.parameters())
        assert report.totals.buffers == sum(b.numel() for b in model.buffers())
        assert report.totals.non_persistent_buffers == 5
        assert {t.name: t.kind for t in src.tensors} == {
            **{n: "parameter" for n, _ in model.named_parameters()},
            **{n: "buffer" for n, _ in model.named_buffers()},
        }
        assert (
            src.info("scale").persistent is False and src.info("bn.running_mean").persistent is True
        )
        state = {**ep.state_dict, **ep.constants}
        for name in src.names():
            assert torch.equal(src.read_tensor(name), state[name].detach())
            assert torch.equal(
                torch.cat(list(src.iter_chunks(name, 7))), state[name].detach().reshape(-1)
            )


def test_tied_weights_are_one_storage(tmp_path: Path) -> None:
    model = Tied()
    export(model, (torch.randint(0, 50, (2, 5)),), tmp_path / "tied.pt2")
    with open_source(str(tmp_path / "tied.pt2")) as src:
        report = build_tree(src)
    assert [set(g) for g in report.tied] == [{"embed.weight", "head.weight"}]
    assert report.totals.params == sum(
        p.numel() for p in model.parameters()
    )  # parameters() counts it once


def test_diff_and_load_read_the_archive(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    export(model, (torch.randn(1, 3, 8, 8),), tmp_path / "net.pt2")
    torch.save(model.state_dict(), tmp_path / "net.pt")
    result = invoke("diff", str(tmp_path / "net.pt2"), str(tmp_path / "net.pt"), "--json")
    doc = json.loads(result.stdout)
    # The program keeps the non-persistent buffer, which state_dict() leaves out: diff compares what
    # state_dict() holds, so it is not "only in A", and everything else is identical.
    assert result.exit_code == 0
    assert doc["only_in_a"] == [] and doc["only_in_b"] == [] and doc["changed"] == []
    assert doc["identical"] == len(model.state_dict())
    (tmp_path / "m.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_pt2 import Net\n"
        "def build():\n    return Net()\n"
    )
    out = tmp_path / "out.safetensors"
    loaded = invoke(
        "load",
        f"{tmp_path / 'm.py'}:build",
        str(tmp_path / "net.pt2"),
        "--strict",
        "--out",
        str(out),
    )
    assert loaded.exit_code == 0, loaded.stdout + loaded.stderr
    from safetensors.torch import load_file

    back = load_file(str(out))
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_archive_without_a_program_is_named(tmp_path: Path) -> None:
    export(Net(), (torch.randn(1, 3, 8, 8),), tmp_path / "net.pt2")
    with (
        zipfile.ZipFile(tmp_path / "net.pt2") as src,
        zipfile.ZipFile(tmp_path / "aoti.pt2", "w") as dst,
    ):
        for item in src.infolist():
            if "/models/" not in item.filename:
                dst.writestr(item, src.read(item))
    with pytest.raises(UnknownFormatError, match="without an exported program"):
        open_source(str(tmp_path / "aoti.pt2"))


def _rewrite(path: Path, target: Path, edit: Callable[[dict[str, dict[str, Any]]], None]) -> None:
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                edit(config["config"])
                data = json.dumps(config).encode()
            dst.writestr(item, data)


def test_lying_weight_configs_are_refused(tmp_path: Path) -> None:
    from modinspect.errors import CorruptFileError

    export(Net(), (torch.randn(1, 3, 8, 8),), tmp_path / "net.pt2")

    def escape(config: dict[str, dict[str, Any]]) -> None:
        config["conv.weight"]["path_name"] = "../../etc/passwd"

    def symbolic(config: dict[str, dict[str, Any]]) -> None:
        config["conv.bias"]["tensor_meta"]["sizes"] = [{"as_expr": {"expr_str": "s0"}}]

    def too_big(config: dict[str, dict[str, Any]]) -> None:
        config["conv.bias"]["tensor_meta"]["sizes"] = [{"as_int": 1000}]

    _rewrite(tmp_path / "net.pt2", tmp_path / "escape.pt2", escape)
    with pytest.raises(
        CorruptFileError, match=r"gives 'conv\.weight' the payload name '\.\./\.\./etc/passwd'"
    ):
        open_source(str(tmp_path / "escape.pt2"))
    _rewrite(tmp_path / "net.pt2", tmp_path / "symbolic.pt2", symbolic)
    with pytest.raises(CorruptFileError, match="symbolic or negative size"):
        open_source(str(tmp_path / "symbolic.pt2"))
    _rewrite(tmp_path / "net.pt2", tmp_path / "big.pt2", too_big)
    with (
        open_source(str(tmp_path / "big.pt2")) as src,
        pytest.raises(CorruptFileError, match=r"'conv\.bias' reaches"),
    ):
        src.read_tensor("conv.bias")
    result = invoke("diff", str(tmp_path / "big.pt2"), str(tmp_path / "big.pt2"))
    assert result.exit_code == 2 and "reaches past the end of" in result.stderr


def test_expanded_views_are_read_as_torch_export_load_reads_them(tmp_path: Path) -> None:
    """A stride-0 view is gathered a chunk at a time, values as torch's; one far larger than its storage is refused."""
    from modinspect.errors import CorruptFileError

    export(Net(), (torch.randn(1, 3, 8, 8),), tmp_path / "net.pt2")

    def expand(sizes: list[int], strides: list[int]) -> Callable[[dict[str, dict[str, Any]]], None]:
        def edit(config: dict[str, dict[str, Any]]) -> None:
            meta = config["bn.running_mean"]["tensor_meta"]
            meta["sizes"] = [{"as_int": n} for n in sizes]
            meta["strides"] = [{"as_int": n} for n in strides]

        return edit

    _rewrite(tmp_path / "net.pt2", tmp_path / "expanded.pt2", expand([3, 1000, 4], [0, 0, 1]))
    reference = torch.export.load(tmp_path / "expanded.pt2").state_dict["bn.running_mean"]
    assert reference.shape == (3, 1000, 4) and reference.stride() == (0, 0, 1)
    with open_source(str(tmp_path / "expanded.pt2")) as src:
        assert torch.equal(src.read_tensor("bn.running_mean"), reference)
        pieces = list(src.iter_chunks("bn.running_mean", 7))
        assert [p.numel() for p in pieces] == [7] * (12000 // 7) + [12000 % 7]
        assert torch.equal(torch.cat(pieces), reference.reshape(-1))
    result = invoke("diff", str(tmp_path / "expanded.pt2"), str(tmp_path / "expanded.pt2"))
    assert result.exit_code == 0, result.stderr

    _rewrite(tmp_path / "net.pt2", tmp_path / "huge.pt2", expand([2**20, 2**16], [0, 0]))
    with open_source(str(tmp_path / "huge.pt2")) as src:
        assert src.info("bn.running_mean").shape == (2**20, 2**16)  # listed as declared
        with pytest.raises(CorruptFileError) as caught:
            next(src.iter_chunks("bn.running_mean"))
    assert str(caught.value) == (
        f"{tmp_path / 'huge.pt2'}: 'bn.running_mean' claims 68,719,476,736 elements over a storage of 4 (a stride-0 "
        "or overlapping view): too large to read, and no real tensor needs it"
    )


class WithCond(nn.Module):
    """Its program nests graphs (torch.cond's branches) inside a node of the top graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda y: self.a(y), lambda y: self.b(y), (x,))


@pytest.mark.parametrize("model", [Net(), WithCond()], ids=["net", "cond"])
def test_node_arrays_are_read_as_json_loads_reads_them(tmp_path: Path, model: nn.Module) -> None:
    """The program's node arrays, cut out unparsed, give json.loads' node count and module classes."""
    from modinspect.sources.pt2 import module_types
    from modinspect.sources.pt2_program import graph_nodes, load_program

    args = (torch.randn(1, 3, 8, 8),) if isinstance(model, Net) else (torch.randn(2, 4),)
    export(model, args, tmp_path / "m.pt2")
    with zipfile.ZipFile(tmp_path / "m.pt2") as zf:
        raw = zf.read(next(n for n in zf.namelist() if n.endswith("/models/model.json")))
    full = json.loads(raw)
    program, arrays = load_program(raw, "m.pt2")
    nodes = full["graph_module"]["graph"]["nodes"]
    top = graph_nodes(program["graph_module"]["graph"], arrays)
    assert top.count == len(nodes) > 0
    stacks = [
        n["metadata"]["nn_module_stack"]
        for n in nodes
        if "nn_module_stack" in n.get("metadata", {})
    ]
    assert module_types(top.stacks) == module_types(tuple(stacks))
    assert {k: v for k, v in full.items() if k != "graph_module"} == {
        k: v for k, v in program.items() if k != "graph_module"
    }
    assert program["graph_module"]["module_call_graph"] == full["graph_module"]["module_call_graph"]
    assert program["graph_module"]["signature"] == full["graph_module"]["signature"]
    if isinstance(model, WithCond):
        assert (
            len(arrays) == 1 and b'"nodes"' in raw[raw.index(b'"nodes"') + 7 :]
        )  # nested graphs stayed inside


def test_node_arrays_are_cut_at_their_own_brackets() -> None:
    """Brackets, commas and '"nodes": [' inside strings are text; a node array nested too deep is one error."""
    from modinspect.errors import CorruptFileError
    from modinspect.sources.pt2_program import MAX_NESTING, graph_nodes, load_program

    stack = json.dumps("L__self__,,M;L__self___fc,fc,torch.nn.modules.linear.Linear")
    node = (
        b'{"target": "a, [b] \\"nodes\\": [", "metadata": {"nn_module_stack": '
        + stack.encode()
        + b"}}"
    )
    raw = (
        b'{"graph_module": {"graph": {"nodes": ['
        + b", ".join([node] * 3)
        + b'], "outputs": []}}, "v": "x"}'
    )
    program, arrays = load_program(raw, "m.json")
    assert program == {"graph_module": {"graph": {"nodes": [0], "outputs": []}}, "v": "x"}
    assert graph_nodes(program["graph_module"]["graph"], arrays).count == 3
    assert arrays[0].stacks == (json.loads(stack),)
    assert load_program(b'{"graph": {"nodes": [ ]}}', "m.json")[1][0].count == 0
    deep = b'{"graph": {"nodes": [' + b"[" * MAX_NESTING + b"]" * MAX_NESTING + b"]}}"
    with pytest.raises(CorruptFileError) as caught:
        load_program(deep, "m.json")
    assert (
        str(caught.value)
        == f"m.json is not valid JSON, or nests a node array more than {MAX_NESTING} deep"
    )
    with pytest.raises(CorruptFileError, match=r"^m\.json is not valid JSON \(JSONDecodeError\)$"):
        load_program(b'{"graph": {"nodes": []}, }', "m.json")
