"""Ordinary checkpoints that the first gate refused: each now opens, with nothing imported or run.

Every file here is written by the library that writes it in real use (torch.save, Lightning's
Trainer, numpy, OmegaConf). The gate calls only its allowlist; anything else is an inert stand-in
that the listing names, and whose module is never imported.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import enum
import functools
import json
import pathlib
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import invoke
from models import TwoLayer
from modinspect.errors import UnsafePickleError, UsageError
from modinspect.run.source import open_source
from modinspect.sources.pickle.gate import Gate, GatePolicy
from modinspect.sources.pickle.standins import StandIn, standin_name


class Color(enum.Enum):
    RED = 1


def _save(tmp_path: Path, obj: object, name: str = "ckpt.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TwoLayer().state_dict()


def test_builtin_values_torch_allows(tmp_path: Path) -> None:
    """complex (spelled __builtin__.complex by protocol 2), frozenset and slice: torch's weights_only accepts them."""
    path = _save(
        tmp_path, {"state_dict": _sd(), "c": 1 + 2j, "f": frozenset({3}), "s": slice(1, 9, 2)}
    )
    with open_source(str(path)) as src:
        assert src.standins == [] and src.notes == []
        assert {e.name: e.summary for e in src.other_entries} == {
            "c": "(1+2j)",
            "f": "frozenset({3})",
            "s": "slice",
        }


@pytest.mark.parametrize(
    "dtype", [torch.uint16, torch.uint32, torch.float8_e4m3fn, torch.float8_e5m2]
)
def test_dtypes_without_a_typed_storage(tmp_path: Path, dtype: torch.dtype) -> None:
    """_rebuild_tensor_v3 on an untyped, byte-counted storage."""
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3).to(dtype)
    path = _save(tmp_path, {"t": tensor, "view": tensor[:, 1:]})
    with open_source(str(path)) as src:
        assert src.info("t").dtype == str(dtype).removeprefix("torch.")
        assert src.info("t").nbytes == tensor.numel() * tensor.element_size()
        assert torch.equal(src.read_tensor("t").view(torch.uint8), tensor.view(torch.uint8))
        assert torch.equal(
            src.read_tensor("view").view(torch.uint8), tensor[:, 1:].contiguous().view(torch.uint8)
        )
        chunks = list(src.iter_chunks("t", 4))
        assert torch.equal(
            torch.cat(chunks).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        )


def _quantized() -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torch deprecates its quantized tensors, not what is tested
        return {
            "per_tensor": torch.quantize_per_tensor(torch.linspace(-1, 1, 8), 0.05, 3, torch.qint8),
            "per_channel": torch.quantize_per_channel(
                torch.rand(3, 4),
                torch.tensor([0.1, 0.2, 0.3]),
                torch.tensor([0, 1, 2]),
                0,
                torch.quint8,
            ),
        }


def test_quantized_tensors_list_and_read_back(tmp_path: Path) -> None:
    tensors = _quantized()
    path = _save(tmp_path, tensors)
    with open_source(str(path)) as src:
        assert [(t.name, t.dtype, t.shape, t.nbytes) for t in src.tensors] == [
            ("per_tensor", "qint8", (8,), 8),
            (
                "per_channel",
                "quint8",
                (3, 4),
                12 + 3 * 8 + 3 * 8,
            ),  # its float64 scales, int64 zero points
        ]
        for name, tensor in tensors.items():
            read = src.read_tensor(name)
            assert read.is_quantized and read.qscheme() == tensor.qscheme()
            assert torch.equal(read.int_repr(), tensor.int_repr())
            assert torch.equal(read.dequantize(), tensor.dequantize())
            assert torch.equal(
                torch.cat(list(src.iter_chunks(name, 5))), tensor.dequantize().reshape(-1)
            )


def test_dynamically_quantized_state_dict(tmp_path: Path) -> None:
    """quantize_dynamic's Linear saves (weight, bias) as a tuple and its dtype as torch.qint8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(4, 3)), {nn.Linear}, dtype=torch.qint8
        )
    sd = model.state_dict()
    path = _save(tmp_path, sd)
    with open_source(str(path)) as src:
        assert src.names() == [
            "0.scale",
            "0.zero_point",
            "0._packed_params._packed_params.0",
            "0._packed_params._packed_params.1",
        ]
        weight, bias = sd["0._packed_params._packed_params"]
        assert torch.equal(
            src.read_tensor("0._packed_params._packed_params.0").int_repr(), weight.int_repr()
        )
        assert torch.equal(src.read_tensor("0._packed_params._packed_params.1"), bias)


def test_sparse_tensors(tmp_path: Path) -> None:
    dense = torch.tensor([[0.0, 2.0, 0.0], [1.5, 0.0, 0.0], [0.0, 0.0, -3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        coo, csr = dense.to_sparse(), dense.to_sparse_csr()
        path = _save(tmp_path, {"coo": coo, "csr": csr})
    with open_source(str(path)) as src:
        assert [(t.name, t.shape, t.dtype) for t in src.tensors] == [
            ("coo", (3, 3), "float32"),
            ("csr", (3, 3), "float32"),
        ]
        # stored bytes: COO indices int64 [2, 3] + values [3]; CSR crow [4] + col [3] int64 + values [3]
        assert (
            src.info("coo").nbytes == 2 * 3 * 8 + 3 * 4
            and src.info("csr").nbytes == (4 + 3) * 8 + 3 * 4
        )
        assert torch.equal(src.read_tensor("coo"), dense) and torch.equal(
            src.read_tensor("csr"), dense
        )


def test_python_objects_training_scripts_save(tmp_path: Path) -> None:
    path = _save(
        tmp_path,
        {
            "state_dict": _sd(),
            "args": argparse.Namespace(lr=0.001, width=16),
            "counts": collections.Counter("aab"),
            "queue": collections.deque([1, 2]),
            "by_name": collections.defaultdict(list, {"a": [1]}),
            "out": pathlib.PurePosixPath("/runs/7"),
            "when": datetime.date(2024, 1, 2),
            "color": Color.RED,
            "schedule": functools.partial(max, 1),
        },
    )
    with open_source(str(path)) as src:
        assert src.state_dict_key == "state_dict"
        assert src.standins == [
            "argparse.Namespace",
            "collections.Counter",
            "collections.deque",
            "collections.defaultdict",
            "pathlib.PurePosixPath",
            "datetime.date",
            f"{__name__}.Color",
            "functools.partial",
            "builtins.max",
        ]
        assert src.notes[0].startswith(
            "read without importing argparse.Namespace, collections.Counter"
        )
        entries = {e.name: e.summary for e in src.other_entries}
    assert entries == {
        "args": "argparse.Namespace(lr=0.001, width=16)",
        "counts": "collections.Counter({a: 2, b: 1})",
        "queue": "collections.deque([1, 2])",
        "by_name": "collections.defaultdict(list, a=[1])",
        "out": "pathlib.PurePosixPath('/', 'runs', '7')",
        "when": "datetime.date(bytes (4 bytes))",
        "color": f"{__name__}.Color(1)",
        # partial's state is (func, args, kwargs, dict); the summary stops at 80 characters.
        "schedule": "functools.partial(builtins.max, state=(builtins.max, tuple (1 items), dict (0 k…",
    }


def test_numpy_state_and_arrays(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    path = _save(
        tmp_path,
        {
            "state_dict": _sd(),
            "rng": np.random.get_state(),
            "x": np.float32(1.5),
            "arr": np.arange(3),
        },
    )
    with open_source(str(path)) as src:
        assert {n.split(".")[0] for n in src.standins} == {"numpy"}
        entries = {e.name: e.summary for e in src.other_entries}
        assert entries["rng"].startswith("('MT19937', ")
        assert src.state_dict_key == "state_dict"


def test_lightning_checkpoints_show_their_hyper_parameters(tmp_path: Path) -> None:
    """Real Trainer.save_checkpoint files, with Namespace and OmegaConf hyper-parameters."""
    lightning = pytest.importorskip("lightning")
    omegaconf = pytest.importorskip("omegaconf")

    class Lit(lightning.LightningModule):  # type: ignore[misc, name-defined]  # importorskip's module is Any to mypy
        def __init__(self, cfg: object) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=8
    )
    configs = {
        "ns": argparse.Namespace(lr=0.001, width=16),
        "omega": omegaconf.OmegaConf.create({"lr": 0.001, "model": {"width": 16}}),
    }
    expected = {
        "ns": "{lr: 0.001, width: 16}",
        "omega": "omegaconf.dictconfig.DictConfig(lr=0.001, model=DictConfig(width=16))",
    }
    for name, cfg in configs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = lightning.Trainer(
                max_epochs=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            module = Lit(cfg)
            trainer.fit(module, data)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        with open_source(str(tmp_path / f"{name}.ckpt")) as src:
            assert src.state_dict_key == "state_dict"
            assert src.names() == list(module.state_dict())
            for key, tensor in module.state_dict().items():
                assert torch.equal(src.read_tensor(key), tensor), key
            entries = {e.name: e.summary for e in src.other_entries}
            assert entries["hyper_parameters"] == expected[name]
            assert entries["epoch"] == "1" and entries["global_step"] == "2"


def test_a_standin_never_imports_its_module(tmp_path: Path) -> None:
    """The pickle names a module whose import writes a file: listing never imports it."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "sideeffect.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "class Config:\n    def __setstate__(self, state):\n        open(state['path'], 'w').close()\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import sideeffect  # type: ignore[import-not-found]  # written by this test

        cfg = sideeffect.Config()
        cfg.__dict__["path"] = str(tmp_path / "SETSTATE")
        path = _save(tmp_path, {"state_dict": _sd(), "cfg": cfg})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sideeffect", None)
    marker.unlink()
    result = invoke("tree", path, "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    (entry,) = doc["other_entries"]
    assert entry["name"] == "cfg" and entry["summary"].startswith("sideeffect.Config(path='/")
    assert doc["notes"][0].startswith("read without importing sideeffect.Config:")
    assert not marker.exists() and not (tmp_path / "SETSTATE").exists()
    assert "sideeffect" not in sys.modules


def test_reduce_and_build_on_a_standin_give_standins() -> None:
    """Every way a pickle can use a stand-in ends in a record: call, NEWOBJ, BUILD, SETITEMS, APPENDS."""
    # mod.Cls(1, 2) -> BUILD {'a': 3}; then that instance called with ('x',); a NEWOBJ instance with items
    pickle_bytes = (
        b"\x80\x02cmod\nCls\nK\x01K\x02\x86R}X\x01\x00\x00\x00aK\x03sb"  # Cls(1, 2), state {'a': 3}
        b"X\x01\x00\x00\x00x\x85R"  # ... called with ('x',)
        b"cmod\nCls\n)\x81(X\x01\x00\x00\x00kK\x07u"  # Cls.__new__(Cls), SETITEMS {'k': 7}
        b"(K\x08K\x09e"  # APPENDS [8, 9]
        b"\x86."
    )
    called, built = Gate("t").load(pickle_bytes)[0]
    assert isinstance(called, StandIn) and standin_name(called) == "<call>"
    inner = called.args[0]
    assert isinstance(inner, StandIn) and standin_name(inner) == "mod.Cls"
    assert inner.args == (1, 2) and inner.state == {"a": 3} and called.args[1:] == ("x",)
    assert isinstance(built, StandIn) and standin_name(built) == "mod.Cls"
    assert built.args == () and built.items == [("k", 7)] and built.elements == [8, 9]
    assert type(built) is type(inner)  # one stand-in class per name


def test_allow_global_builds_the_real_object(tmp_path: Path) -> None:
    path = _save(tmp_path, {"state_dict": _sd(), "args": argparse.Namespace(lr=0.001)})
    with open_source(str(path), allow_globals=("argparse.Namespace",)) as src:
        assert src.standins == [] and src.notes == []
        assert [e.summary for e in src.other_entries] == ["Namespace"]
    policy = GatePolicy(allow_globals=frozenset({"nosuchmodule.Thing"}))
    with pytest.raises(
        UsageError, match=r"^--allow-global nosuchmodule\.Thing: no such importable object"
    ):
        Gate("x", policy).load(b"\x80\x02cnosuchmodule\nThing\n.", 0)
    result = invoke("tree", path, "--allow-global", "not a name")
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --allow-global 'not a name' is not a dotted name like argparse.Namespace\n",
    )


def test_code_execution_globals_stay_refused_even_beside_standins(tmp_path: Path) -> None:
    import os

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    path = _save(tmp_path, {"state_dict": _sd(), "args": argparse.Namespace(lr=1), "evil": Evil()})
    with pytest.raises(UnsafePickleError) as info:
        open_source(str(path))
    assert info.value.globals == [f"{os.system.__module__}.system"]
    assert not (tmp_path / "PWNED").exists()


def test_whole_pickled_bert_lists_its_real_tree(tmp_path: Path) -> None:
    """torch.save(BertModel): refused before over torch._C._nn.gelu, a function GELUActivation keeps as data."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=99,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    torch.save(model, tmp_path / "bert.pt")
    result = invoke("tree", tmp_path / "bert.pt", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "torch-zip-module"
    assert doc["totals"]["params"] == sum(p.numel() for p in model.parameters())
    assert doc["totals"]["buffers"] == sum(b.numel() for b in model.buffers())
    assert [m["name"] for m in doc["modules"]] == [n for n, _ in model.named_modules()]
    assert [m["type"] for m in doc["modules"]] == [
        type(m).__name__ for _, m in model.named_modules()
    ]
    assert {t["name"] for t in doc["tensors"]} == {
        n for n, _ in [*model.named_parameters(), *model.named_buffers()]
    }
    # gelu is data (never called); the model's own classes are what torch.load would call.
    assert "torch._C._nn.gelu" not in doc["would_call"]
    assert doc["would_call"][0] == "transformers.models.bert.modeling_bert.BertModel"
    assert result.stderr.startswith(
        "warning: torch.load would call transformers.models.bert.modeling_bert.BertModel"
    )
    with open_source(str(tmp_path / "bert.pt")) as src:
        assert "torch._C._nn.gelu" in src.standins
        for name, tensor in model.state_dict().items():
            assert torch.equal(src.read_tensor(name), tensor), name


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"ctorch.storage\n_load_from_bytes\nC\x01x\x85R", "torch.storage._load_from_bytes"),
        (b"ctorch\nload\nX\x04\x00\x00\x00x.pt\x85R", "torch.load"),
        (b"ctorch._C\nimport_ir_module\n)R", "torch._C.import_ir_module"),
    ],
    ids=["load-from-bytes", "torch-load", "torch-c"],
)
def test_torch_code_globals_are_refused_when_called(body: bytes, named: str) -> None:
    data = b"\x80\x02}X\x01\x00\x00\x00k" + body + b"s."
    with pytest.raises(UnsafePickleError) as info:
        Gate("x.pkl").load(data)
    assert info.value.globals == [named]
    # Named but not called (kept as a value), the same global is a stand-in class: nothing to run.
    module, _, name = named.rpartition(".")
    obj, _ = Gate("x.pkl").load(
        b"\x80\x02}X\x01\x00\x00\x00kc" + f"{module}\n{name}\n".encode() + b"s."
    )
    assert issubclass(obj["k"], StandIn) and obj["k"].qualname == named
