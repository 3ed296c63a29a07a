"""torch.save files through the weights-only gate: listing, exact values, checkpoints, unsafe pickles."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models import Tied, TwoLayer, WithBatchNorm
from modinspect.errors import CorruptFileError, UnknownFormatError, UnsafePickleError
from modinspect.run.source import open_source
from modinspect.sources import Source
from modinspect.sources.base import tied_groups
from modinspect.sources.kinds import checkpoint_kind
from modinspect.sources.module import module_tensor_infos
from modinspect.sources.pickle.gate import Gate, RestrictedUnpickler, storage_from_pid
from modinspect.sources.pickle.standins import StandIn, standin_name


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (self.command,))


def save(obj: object, path: Path, **kwargs: Any) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def assert_lists(src: Source, sd: dict[str, torch.Tensor]) -> None:
    assert src.names() == list(sd)
    for name, t in sd.items():
        info = src.info(name)
        assert info.shape == tuple(t.shape), name
        assert info.dtype == dtype_name(t), name
        assert info.nbytes == t.numel() * t.element_size(), name


def assert_values(src: Source, reference: dict[str, torch.Tensor]) -> None:
    for name, want in reference.items():
        got = src.read_tensor(name)
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert torch.equal(got, want), name


# ---------------------------------------------------------------- plain state dicts


@pytest.mark.parametrize("model_type", [TwoLayer, WithBatchNorm])
def test_zip_state_dict_lists_and_reads(tmp_path: Path, model_type: type[nn.Module]) -> None:
    torch.manual_seed(0)
    sd = model_type().state_dict()
    path = save(sd, tmp_path / "sd.pt")
    reference = torch.load(path, weights_only=True)
    with open_source(str(path)) as src:
        assert src.format == "torch-zip"
        assert src.label == str(path)
        assert src.state_dict_key is None and src.other_entries == []
        assert src.modules is None and src.module is None and src.warnings == []
        assert_lists(src, sd)
        assert len(src.tensors) == len(sd)
        assert all(
            t.kind == checkpoint_kind(t.name) and t.requires_grad is None for t in src.tensors
        )
        assert_values(src, reference)
        assert tied_groups(src.tensors) == []


def test_batchnorm_int64_counter(tmp_path: Path) -> None:
    model = WithBatchNorm()
    assert model.bn.num_batches_tracked is not None  # BatchNorm2d tracks by default
    model.bn.num_batches_tracked += 7
    path = save(model.state_dict(), tmp_path / "bn.pt")
    with open_source(str(path)) as src:
        info = src.info("bn.num_batches_tracked")
        assert (info.shape, info.dtype, info.nbytes) == ((), "int64", 8)
        assert src.read_tensor("bn.num_batches_tracked").item() == 7


def test_dtypes_views_and_shared_storages(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    flat = torch.arange(30, dtype=torch.float64) * 0.5
    sd = {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "f16": torch.randn(5).to(torch.float16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "flags": torch.tensor([True, False, True]),
        "c64": torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
        "scalar": torch.tensor(4.5),
        "empty": torch.zeros(0, 3),
        "col": base[:, 1],  # stride 6, offset 1
        "transposed": base.T,  # non-contiguous
        "head": flat[2:10],  # two views of one storage at different offsets
        "tail": flat[5:20:3],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),  # stride 0
    }
    path = save(sd, tmp_path / "views.pt")
    reference = torch.load(path, weights_only=True)
    with open_source(str(path)) as src:
        assert_lists(src, sd)
        assert_values(src, reference)
        for name, t in sd.items():
            got = src.read_tensor(name)
            assert torch.equal(got, t), name
            # A copy of its own elements, not a window on the whole shared storage.
            assert got.untyped_storage().nbytes() == t.numel() * t.element_size(), name
        assert src.info("col").nbytes == 4 * 4
        assert src.info("transposed").shape == (6, 4)
        assert src.info("expanded").nbytes == 6 * 4
        assert src.info("empty").storage is None
        # Views of one storage at different places are not the same data.
        storages = [src.info(n).storage for n in ("col", "transposed", "head", "tail")]
        assert None not in storages and len(set(storages)) == 4
        assert tied_groups(src.tensors) == []
        # Alternating between views of one storage reads the right bytes every time.
        for name in ["head", "col", "tail", "transposed", "head"]:
            assert torch.equal(src.read_tensor(name), sd[name]), name


def test_tied_state_dict_shares_storage(tmp_path: Path) -> None:
    model = Tied()
    sd = model.state_dict()
    path = save(sd, tmp_path / "tied.pt")
    with open_source(str(path)) as src:
        assert_lists(src, sd)
        embed, head = src.info("embed.weight"), src.info("head.weight")
        assert embed.storage is not None and embed.storage == head.storage
        assert tied_groups(src.tensors) == [["embed.weight", "head.weight"]]
        assert torch.equal(src.read_tensor("head.weight"), model.embed.weight.detach())


def test_parameters_keep_their_kind_and_requires_grad(tmp_path: Path) -> None:
    sd = {
        "trained": nn.Parameter(torch.ones(2, 2)),
        "frozen": nn.Parameter(torch.zeros(3), requires_grad=False),
        "plain": torch.full((2,), 7.0),
    }
    path = save(sd, tmp_path / "params.pt")
    with open_source(str(path)) as src:
        assert [(t.name, t.kind, t.requires_grad) for t in src.tensors] == [
            ("trained", "parameter", True),
            ("frozen", "parameter", False),
            ("plain", "unknown", None),
        ]
        assert torch.equal(src.read_tensor("trained"), torch.ones(2, 2))
        assert torch.equal(src.read_tensor("plain"), torch.full((2,), 7.0))


def test_extra_state_entries_are_skipped(tmp_path: Path) -> None:
    sd = {"w": torch.ones(2), "layer._extra_state": {"version": 3}}
    path = save(sd, tmp_path / "extra.pt")
    with open_source(str(path)) as src:
        assert src.names() == ["w"]


# ---------------------------------------------------------------- training checkpoints


def _trained() -> tuple[TwoLayer, torch.optim.Optimizer]:
    torch.manual_seed(1)
    model = TwoLayer()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model", "module"])
def test_training_checkpoint_finds_state_dict(tmp_path: Path, key: str) -> None:
    model, opt = _trained()
    sd = model.state_dict()
    path = save(
        {"epoch": 3, key: sd, "optimizer_state_dict": opt.state_dict(), "loss": 0.5},
        tmp_path / "ckpt.pt",
    )
    with open_source(str(path)) as src:
        assert src.state_dict_key == key
        assert_lists(src, sd)
        assert_values(src, sd)
        # 4 parameters x (step, exp_avg, exp_avg_sq)
        assert [(e.name, e.summary) for e in src.other_entries] == [
            ("epoch", "3"),
            ("optimizer_state_dict", "dict (2 keys, 12 tensors)"),
            ("loss", "0.5"),
        ]


def test_nested_state_dict_key(tmp_path: Path) -> None:
    model, _ = _trained()
    sd = model.state_dict()
    ckpt = {
        "model": {"state_dict": sd, "arch": "two-layer"},
        "epoch": 9,
        "notes": "x" * 50,
        "extra": None,
        "history": [1, 2, 3],
    }
    path = save(ckpt, tmp_path / "nested.pt")
    with open_source(str(path)) as src:
        assert src.state_dict_key == "model.state_dict"
        assert_values(src, sd)
        assert [(e.name, e.summary) for e in src.other_entries] == [
            ("epoch", "9"),
            ("notes", repr("x" * 40) + "…"),
            ("extra", "None"),
            ("history", "[1, 2, 3]"),
        ]


def test_unnamed_state_dict_is_the_largest_non_optimizer_tensor_dict(tmp_path: Path) -> None:
    small = {"a": torch.ones(1)}
    weights = TwoLayer().state_dict()
    optim = {f"m{i}": torch.zeros(1) for i in range(20)}
    path = save(
        {"ema": small, "weights": weights, "optim_moments": optim, "step": 100}, tmp_path / "c.pt"
    )
    with open_source(str(path)) as src:
        assert src.state_dict_key == "weights"
        assert src.names() == list(weights)
        assert [e.name for e in src.other_entries] == ["ema", "optim_moments", "step"]
        assert (
            dict((e.name, e.summary) for e in src.other_entries)["ema"]
            == "dict (1 keys, 1 tensors)"
        )


@pytest.mark.parametrize(
    ("obj", "what"),
    [
        ({"epoch": 1, "note": "x"}, "{epoch: 1, note: 'x'}"),
        ([torch.ones(2), torch.zeros(1)], "[tensor [2] float32, tensor [1] float32]"),
        ({"optimizer": {"exp_avg": torch.ones(2)}}, "dict (1 keys, 1 tensors)"),
        (torch.ones(3), "tensor [3] float32"),
        ({}, "{}"),
    ],
)
def test_file_without_state_dict(tmp_path: Path, obj: object, what: str) -> None:
    path = save(obj, tmp_path / "none.pt")
    with pytest.raises(CorruptFileError) as info:
        open_source(str(path))
    assert str(info.value) == (
        f"{path} holds no state dict ({what}); expected a dict of tensors, a pickled nn.Module, or a checkpoint "
        "with one under 'model_state_dict', 'state_dict', 'model', 'module'"
    )


# ---------------------------------------------------------------- legacy and raw pickles


def test_legacy_format(tmp_path: Path) -> None:
    model = Tied()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd = {
        **model.state_dict(),
        "bf16": torch.randn(2, 3).to(torch.bfloat16),
        "col": base[:, 2],
        "t": base.T,
        "i64": torch.tensor([5, -5]),
    }
    path = save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    with open_source(str(path)) as src:
        assert src.format == "torch-legacy"
        assert_lists(src, sd)
        assert_values(src, torch.load(path, weights_only=True))
        assert_values(src, sd)
        assert tied_groups(src.tensors) == [["embed.weight", "head.weight"]]


def test_legacy_training_checkpoint(tmp_path: Path) -> None:
    model, _ = _trained()
    path = save(
        {"state_dict": model.state_dict(), "epoch": 2},
        tmp_path / "legacy.pt",
        _use_new_zipfile_serialization=False,
    )
    with open_source(str(path)) as src:
        assert (src.format, src.state_dict_key) == ("torch-legacy", "state_dict")
        assert [(e.name, e.summary) for e in src.other_entries] == [("epoch", "2")]
        assert_values(src, model.state_dict())


def test_truncated_legacy_file(tmp_path: Path) -> None:
    path = save(
        TwoLayer().state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False
    )
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match="is truncated"):
        open_source(str(path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_raw_pickle_of_ints_is_a_clear_error(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "ints.pkl"
    path.write_bytes(pickle.dumps({"a": 1, "b": 2}, protocol=protocol))
    with pytest.raises(CorruptFileError, match=r"holds no state dict \(\{a: 1, b: 2\}\)"):
        open_source(str(path))


def test_raw_pickle_of_tensors_is_refused(tmp_path: Path) -> None:
    # Plain pickle rebuilds tensors through torch.storage._load_from_bytes, which is torch.load itself.
    path = tmp_path / "tensors.pkl"
    path.write_bytes(pickle.dumps({"w": torch.ones(2)}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"'torch\.storage\._load_from_bytes'"):
        open_source(str(path))


def test_protocol_0_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "p0.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=0))
    with pytest.raises(UnknownFormatError, match="is not a checkpoint modinspect reads"):
        open_source(str(path))


# ---------------------------------------------------------------- unsafe pickles


def test_reduce_to_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = save(
        {"state_dict": TwoLayer().state_dict(), "payload": Evil(f"touch {marker}")},
        tmp_path / "evil.pt",
    )
    with pytest.raises(UnsafePickleError) as info:
        open_source(str(path))
    message = str(info.value)
    assert "'posix.system'" in message or "'os.system'" in message, message
    assert message.startswith(f"{path} needs ")
    assert "could run arbitrary code" in message
    assert "--unsafe-pickle" in message
    assert not marker.exists()
    assert info.value.globals in (["posix.system"], ["os.system"])


def test_reduce_to_os_system_in_legacy_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = save(
        {"payload": Evil(f"touch {marker}")},
        tmp_path / "evil.pt",
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(UnsafePickleError, match=r"'(posix|os)\.system'.*--unsafe-pickle"):
        open_source(str(path))
    assert not marker.exists()


def test_pickled_module_shows_its_real_tree_without_its_code(tmp_path: Path) -> None:
    """torch.save(model): class names from the pickle, tensors from _parameters/_buffers, nothing imported."""
    torch.manual_seed(0)
    model = TwoLayer()
    path = save(model, tmp_path / "module.pt")
    with open_source(str(path)) as src:
        assert src.module is None and src.format == "torch-zip-module"
        assert src.standins == [
            "models.TwoLayer",
            "torch.nn.modules.linear.Linear",
            "torch.nn.modules.activation.ReLU",
        ]
        assert len(src.notes) == 1 and src.notes[0].startswith(
            "read without importing models.TwoLayer, torch.nn.modules.linear.Linear, torch.nn.modules.activation.ReLU"
        )
        assert src.modules is not None
        assert [(m.name, m.type, m.training) for m in src.modules] == [
            ("", "TwoLayer", True),
            ("fc1", "Linear", True),
            ("act", "ReLU", True),
            ("fc2", "Linear", True),
        ]
        # The live module's own view, non-persistent buffer included.
        live: dict[str, tuple[str, bool | None]] = {
            n: ("parameter", None) for n, _ in model.named_parameters()
        }
        live.update({n: ("buffer", n != "cache") for n, _ in model.named_buffers()})
        assert {t.name: (t.kind, t.persistent) for t in src.tensors} == live
        assert src.names() == [
            t.name for t in module_tensor_infos(model)
        ]  # the live module's order
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            assert torch.equal(src.read_tensor(name), tensor.detach()), name
            assert src.info(name).requires_grad == (
                True if name in dict(model.named_parameters()) else None
            )


def test_pickled_module_opens_with_unsafe_pickle(tmp_path: Path) -> None:
    model = TwoLayer()
    path = save(model, tmp_path / "module.pt")
    with open_source(str(path), unsafe_pickle=True) as src:
        assert src.format == "torch-pickled-module"
        assert isinstance(src.module, TwoLayer)
        assert len(src.warnings) == 1
        assert src.warnings[0].startswith(
            f"--unsafe-pickle: fully unpickling {path}, which imports models.TwoLayer"
        )
        assert src.warnings[0].endswith("this runs code from the file")
        assert sorted(src.names()) == sorted([*model.state_dict(), "cache"])
        assert src.modules is not None
        assert [(m.name, m.type) for m in src.modules] == [
            ("", "TwoLayer"),
            ("fc1", "Linear"),
            ("act", "ReLU"),
            ("fc2", "Linear"),
        ]
        assert_values(src, model.state_dict())


def test_unsafe_pickle_flag_on_a_safe_file_changes_nothing(tmp_path: Path) -> None:
    sd = TwoLayer().state_dict()
    path = save(sd, tmp_path / "sd.pt")
    with open_source(str(path), unsafe_pickle=True) as src:
        assert src.format == "torch-zip" and src.warnings == []
        assert_values(src, sd)


def test_unsafe_pickle_with_a_non_module_object(tmp_path: Path) -> None:
    import collections

    sd = TwoLayer().state_dict()
    # A Counter is outside the allowlist but harmless: a stand-in by default, the real thing when trusted.
    path = save({"state_dict": sd, "counts": collections.Counter("aab")}, tmp_path / "c.pt")
    with open_source(str(path)) as src:
        assert (src.format, src.state_dict_key, src.standins) == (
            "torch-zip",
            "state_dict",
            ["collections.Counter"],
        )
        assert [(e.name, e.summary) for e in src.other_entries] == [
            ("counts", "collections.Counter({a: 2, b: 1})")
        ]
        assert src.warnings == []
    with open_source(str(path), unsafe_pickle=True) as src:
        assert (src.format, src.state_dict_key) == ("torch-unsafe", "state_dict")
        assert [(e.name, e.summary) for e in src.other_entries] == [("counts", "{a: 2, b: 1}")]
        assert_values(src, sd)
        assert len(src.warnings) == 1 and "collections.Counter" in src.warnings[0]


def _payload(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _short(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def global_pickle(marker: Path, func: str = "exec", protocol: int = 0) -> bytes:
    """builtins.<func>(<payload>) spelled with GLOBAL (protocol 0 or 2)."""
    body = f"cbuiltins\n{func}\n(V{_payload(marker)}\ntR.".encode()
    return body if protocol == 0 else b"\x80\x02" + body


def stack_global_pickle(marker: Path, func: str = "eval") -> bytes:
    """builtins.<func>(<payload>) spelled with STACK_GLOBAL (protocol 4)."""
    return (
        b"\x80\x04"
        + _short("builtins")
        + b"\x94"
        + _short(func)
        + b"\x94"
        + b"\x93\x94"
        + _short(_payload(marker))
        + b"\x85R."
    )


def memo_stack_global_pickle(marker: Path, func: str = "exec") -> bytes:
    """The same, with the names parked in the memo and fetched back before STACK_GLOBAL."""
    return (
        b"\x80\x04"
        + _short("builtins")
        + b"q\x00"
        + b"0"
        + _short(func)
        + b"q\x01"
        + b"0"
        + b"h\x00h\x01\x93"
        + _short(_payload(marker))
        + b"\x85R."
    )


PAYLOADS = {
    "global-p0-exec": (lambda m: global_pickle(m, "exec", 0), "builtins.exec"),
    "global-p0-eval": (lambda m: global_pickle(m, "eval", 0), "builtins.eval"),
    "global-p2-exec": (lambda m: global_pickle(m, "exec", 2), "builtins.exec"),
    "stack-global-p4-eval": (lambda m: stack_global_pickle(m, "eval"), "builtins.eval"),
    "stack-global-p4-exec": (lambda m: stack_global_pickle(m, "exec"), "builtins.exec"),
    "memo-stack-global-p4": (lambda m: memo_stack_global_pickle(m, "exec"), "builtins.exec"),
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_hand_written_payloads_really_run_when_unpickled(tmp_path: Path, kind: str) -> None:
    """Control: each payload does create its marker under plain pickle, so the refusals below mean something."""
    build, dotted = PAYLOADS[kind]
    marker = tmp_path / "CONTROL"
    data = build(marker)
    with pytest.raises(UnsafePickleError) as info:
        Gate("evil").load(data)
    assert info.value.globals == [dotted] and not marker.exists()
    pickle.loads(data)
    assert marker.exists()


def _write_zip(path: Path, data_pkl: bytes, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", b"little")
        for name, data in (extra or {}).items():
            zf.writestr(f"archive/{name}", data)
    return path


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_hand_written_payload_in_zip_is_refused(tmp_path: Path, kind: str) -> None:
    build, dotted = PAYLOADS[kind]
    marker = tmp_path / "MARKER"
    path = _write_zip(tmp_path / "evil.pt", build(marker))
    with pytest.raises(UnsafePickleError) as info:
        open_source(str(path))
    assert info.value.globals == [dotted]
    assert f"'{dotted}'" in str(info.value) and "--unsafe-pickle" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", [k for k in sorted(PAYLOADS) if "p0" not in k])
def test_hand_written_payload_as_raw_file_is_refused(tmp_path: Path, kind: str) -> None:
    build, dotted = PAYLOADS[kind]
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.bin"
    path.write_bytes(build(marker))
    with pytest.raises(UnsafePickleError, match=f"'{dotted}'"):
        open_source(str(path))
    assert not marker.exists()


def test_protocol_0_payload_as_raw_file_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.bin"
    path.write_bytes(global_pickle(marker, "exec", 0))
    with pytest.raises(UnknownFormatError):
        open_source(str(path))
    assert not marker.exists()


def test_payload_in_torchscript_shaped_zip_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = _write_zip(
        tmp_path / "evil.pt", pickle.dumps({}), {"constants.pkl": stack_global_pickle(marker)}
    )
    with pytest.raises(UnsafePickleError, match=r"'builtins\.eval'"):
        open_source(str(path))
    assert not marker.exists()


def test_unresolvable_stack_global_is_refused(tmp_path: Path) -> None:
    # The module name comes from a tuple element: the unpickler refuses it before any lookup.
    data = b"\x80\x04" + _short("builtins") + b"\x85" + b"\x8c\x04eval" + b"\x93" + b"N\x85R."
    path = _write_zip(tmp_path / "dyn.pt", data)
    with pytest.raises(CorruptFileError, match="STACK_GLOBAL requires str"):
        open_source(str(path))


def test_restricted_unpickler_refuses_on_its_own() -> None:
    """Without the gate around it, the unpickler still calls nothing and records what it refused."""
    unpickler = RestrictedUnpickler(
        io.BytesIO(global_pickle(Path("/nonexistent/x"), "exec", 2)), storage_from_pid
    )
    result = unpickler.load()
    assert unpickler.refused == ["builtins.exec"]
    # exec's stand-in, "called": a record of the call, and the marker was never written.
    assert isinstance(result, StandIn) and standin_name(result) == "builtins.exec"
    assert len(result.args) == 1 and "open(" in str(result.args[0])


def test_bytes_spelled_with_codecs_encode_are_allowed_but_other_codecs_are_not(
    tmp_path: Path,
) -> None:
    good = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00latin1\x86R."
    assert RestrictedUnpickler(io.BytesIO(good), storage_from_pid).load() == b"abc"
    bad = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R."
    path = _write_zip(tmp_path / "codec.pt", bad)
    with pytest.raises(CorruptFileError, match="asks for an unexpected codec"):
        open_source(str(path))


# ---------------------------------------------------------------- damaged zips, lazy reads


def test_truncated_zip_file(tmp_path: Path) -> None:
    path = save(TwoLayer().state_dict(), tmp_path / "sd.pt")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match=f"^{path} is a damaged zip file"):
        open_source(str(path))


def test_corrupted_storage_bytes_fail_the_crc_on_read(tmp_path: Path) -> None:
    sd = {"a": torch.full((16,), 1.5), "b": torch.full((4,), 2.5)}
    path = save(sd, tmp_path / "sd.pt")
    raw = bytearray(path.read_bytes())
    at = raw.find(struct.pack("<f", 1.5) * 16)
    assert at > 0
    raw[at + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with open_source(str(path)) as src:  # listing reads no storage, so it still works
        assert src.names() == ["a", "b"]
        assert torch.equal(src.read_tensor("b"), sd["b"])
        with pytest.raises(CorruptFileError, match="is a damaged zip file"):
            src.read_tensor("a")


def test_zip_missing_a_storage_entry(tmp_path: Path) -> None:
    path = save({"a": torch.ones(2), "b": torch.zeros(3)}, tmp_path / "sd.pt")
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    prefix = next(n for n in members if n.endswith("/data.pkl"))[: -len("data.pkl")]
    del members[f"{prefix}data/1"]
    stripped = tmp_path / "stripped.pt"
    with zipfile.ZipFile(stripped, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with open_source(str(stripped)) as src:
        assert torch.equal(src.read_tensor("a"), torch.ones(2))
        with pytest.raises(CorruptFileError, match=f"is a zip file without {prefix}data/1"):
            src.read_tensor("b")


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(UnknownFormatError, match="is a zip file but not a torch checkpoint"):
        open_source(str(path))


def test_big_endian_archive_is_refused(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "be.pt", pickle.dumps({}, protocol=2))
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["archive/byteorder"] = b"big"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(CorruptFileError, match="saved on a big-endian machine"):
        open_source(str(path))


def test_listing_reads_only_the_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = WithBatchNorm().state_dict()
    path = save(sd, tmp_path / "sd.pt")
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(
        self: zipfile.ZipFile, name: str | zipfile.ZipInfo, *args: Any, **kwargs: Any
    ) -> object:
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    src = open_source(str(path))
    try:
        assert sorted(n.split("/", 1)[1] for n in opened) == ["byteorder", "data.pkl"]
        opened.clear()
        src.read_tensor("bn.running_var")
        assert len(opened) == 1 and opened[0].split("/", 1)[1].startswith("data/")
    finally:
        src.close()


# ---------------------------------------------------------------- BUILD cannot rewrite the gate's objects


def _x(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _build(attr: str, value: bytes) -> bytes:
    return b"}" + _x(attr) + value + b"sb"  # EMPTY_DICT, key, value, SETITEM, BUILD


def minimal_checkpoint(
    path: Path, after_storage_type: bytes = b"", after_tensor: bytes = b""
) -> Path:
    """A hand-assembled torch zip file holding {'w': tensor([1.0, 2.0])}, with optional opcodes spliced in."""
    pkl = (
        b"\x80\x02}"
        + _x("w")
        + b"ctorch._utils\n_rebuild_tensor_v2\n"
        + b"(("
        + _x("storage")
        + b"ctorch\nFloatStorage\n"
        + after_storage_type
        + _x("0")
        + _x("cpu")
        + b"K\x02tQ"
        + b"K\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR"
        + after_tensor
        + b"s."
    )
    return _write_zip(path, pkl, {"data/0": struct.pack("<2f", 1.0, 2.0), "version": b"3\n"})


def test_minimal_checkpoint_reads(tmp_path: Path) -> None:
    path = minimal_checkpoint(tmp_path / "ok.pt")
    assert torch.load(path, weights_only=True)["w"].tolist() == [1.0, 2.0]
    with open_source(str(path)) as src:
        assert [(t.name, t.shape, t.dtype, t.nbytes) for t in src.tensors] == [
            ("w", (2,), "float32", 8)
        ]
        assert src.read_tensor("w").tolist() == [1.0, 2.0]


@pytest.mark.parametrize("value", [_x("abc"), b"(J\xff\xff\xff\xfft", b"(K\x00t"])
def test_build_cannot_rewrite_a_tensor_description(tmp_path: Path, value: bytes) -> None:
    path = minimal_checkpoint(tmp_path / "bad.pt", after_tensor=_build("shape", value))
    with pytest.raises(
        CorruptFileError, match="tries to modify an object the weights-only gate created"
    ):
        open_source(str(path))


def test_build_cannot_poison_the_allowlist_for_later_files(tmp_path: Path) -> None:
    bad = minimal_checkpoint(tmp_path / "bad.pt", after_storage_type=_build("dtype", _x("int8")))
    with pytest.raises(
        CorruptFileError, match="tries to modify an object the weights-only gate created"
    ):
        open_source(str(bad))
    good = minimal_checkpoint(tmp_path / "good.pt")
    with open_source(str(good)) as src:
        assert src.info("w").dtype == "float32"
        assert src.read_tensor("w").tolist() == [1.0, 2.0]


def test_state_dict_metadata_is_still_built(tmp_path: Path) -> None:
    # torch state dicts carry `_metadata` on the OrderedDict: BUILD on it stays allowed.
    sd = WithBatchNorm().state_dict()
    assert hasattr(sd, "_metadata")
    path = save(sd, tmp_path / "sd.pt")
    with open_source(str(path)) as src:
        assert src.names() == list(sd)
