"""torchao tensor subclasses in pickles: each quantized weight is ONE logical parameter at the float layer's
shape, with the bytes of its inner tensors, a scheme and bits per weight, read without importing torchao.

The files are written by torchao itself (`quantize_` then `torch.save(model.state_dict())`) with the configs
that run on a CPU here; the expected figures come from the float model and from the live torchao tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from modinspect.analysis.tree import build_tree
from modinspect.reports import TreeReport
from modinspect.run.source import open_source

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def _quantized(config: str, seed: int = 0) -> tuple[nn.Sequential, nn.Sequential]:
    """(the float model, a copy quantized by torchao with `config`)."""
    quantization = pytest.importorskip("torchao.quantization")
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32))
    quantized = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32))
    quantized.load_state_dict(model.state_dict())
    configs = {
        "int8": lambda: quantization.Int8WeightOnlyConfig(),
        "fp8": lambda: quantization.Float8WeightOnlyConfig(),
        "w8a8": lambda: quantization.Int8DynamicActivationInt8WeightConfig(),
        "int4 g32": lambda: quantization.IntxWeightOnlyConfig(
            weight_dtype=torch.int4,  # type: ignore[attr-defined]
            granularity=quantization.PerGroup(32),
        ),
    }
    quantization.quantize_(quantized, configs[config]())
    return model, quantized


def _linear(model: nn.Sequential, index: int) -> nn.Linear:
    layer = model[index]
    assert isinstance(layer, nn.Linear)
    return layer


def _tree(path: Path) -> TreeReport:
    with open_source(str(path)) as source:
        return build_tree(source)


def _inner_bytes(weight: torch.Tensor) -> int:
    """The bytes of a torchao tensor's inner tensors, as torchao lists them."""
    kind = type(weight)
    names = getattr(kind, "tensor_data_names", []) + getattr(kind, "optional_tensor_data_names", [])
    inner = [getattr(weight, n) for n in names if getattr(weight, n, None) is not None]
    assert inner
    return sum(t.numel() * t.element_size() for t in inner)


@pytest.mark.parametrize(
    ("config", "scheme", "stored"),
    [
        ("int8", "torchao int8 weight-only per-channel", "int8"),
        ("fp8", "torchao fp8 e4m3 weight-only per-channel", "float8_e4m3fn"),
        ("w8a8", "torchao int8 dynamic-activation per-channel", "int8"),
        ("int4 g32", "torchao int4 weight-only g32", "int8"),
    ],
)
def test_a_torchao_state_dict_counts_the_float_model(
    tmp_path: Path, config: str, scheme: str, stored: str
) -> None:
    model, quantized = _quantized(config)
    weights = {f"{i}.weight": _linear(quantized, i).weight for i in (0, 2)}
    assert all(type(w).__module__.startswith("torchao") for w in weights.values())
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    report = _tree(tmp_path / "q.pt")
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    rows = {r.name: r for r in report.tensors}
    for name, weight in weights.items():
        row = rows[name]
        assert (row.shape, row.dtype, row.scheme) == (tuple(weight.shape), stored, scheme)
        assert row.numel == _linear(model, int(name[0])).weight.numel()
        assert row.nbytes == _inner_bytes(weight)
        layer = next(m for m in report.modules if m.name == name.split(".")[0])
        assert layer.bits_per_weight == pytest.approx(_inner_bytes(weight) * 8 / weight.numel())
    assert report.totals.bytes == sum(_inner_bytes(w) for w in weights.values()) + sum(
        _linear(quantized, i).bias.numel() * 4 for i in (0, 2)
    )


def test_a_torchao_state_dict_lists_stand_ins_and_runs_nothing(tmp_path: Path) -> None:
    _, quantized = _quantized("int8")
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    with open_source(str(tmp_path / "q.pt")) as source:
        assert "torchao.quantization.Int8Tensor" in source.standins
        info = next(t for t in source.tensors if t.name == "0.weight")
        assert info.subclass is not None
        assert [(a, s, d) for a, s, d in info.subclass.parts][:2] == [
            ("qdata", (64, 256), "int8"),
            ("scale", (64, 1), "float32"),
        ]
        values = source.read_tensor(
            "0.weight"
        )  # its stored qdata, as the other schemes' packed weights
    qdata = _linear(quantized, 0).weight.qdata  # type: ignore[attr-defined]
    assert torch.equal(values, qdata)


def test_a_torchao_state_dict_is_read_with_torchao_not_importable(tmp_path: Path) -> None:
    """The reader never imports torchao: a child where `import torchao` fails counts the same."""
    model, quantized = _quantized("int8")
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    code = (
        "import sys; sys.modules['torchao'] = None\n"
        "sys.argv[1:] = ['tree', '--json', sys.argv[1]]\n"
        "from modinspect.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
        "assert not [m for m in sys.modules if m.startswith('torchao.')]\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "q.pt")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["totals"]["params"] == sum(p.numel() for p in model.parameters())


def test_a_live_torchao_model_is_listed_as_its_saved_state_dict(tmp_path: Path) -> None:
    """A torchao-quantized live module (it used to fail on its weights' storage) lists what its file lists."""
    from modinspect.sources.module import ModuleSource

    model, quantized = _quantized("int4 g32")
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    live = build_tree(ModuleSource(quantized, "q", "entrypoint"))
    saved = _tree(tmp_path / "q.pt")
    assert live.totals.params == saved.totals.params == sum(p.numel() for p in model.parameters())

    def rows(report: TreeReport) -> list[tuple[object, ...]]:
        return [(r.name, r.shape, r.dtype, r.nbytes, r.scheme) for r in report.tensors]

    assert rows(live) == rows(saved)


def test_load_into_the_same_torchao_model_plans_and_copies_the_inner_tensors(
    tmp_path: Path,
) -> None:
    """No false 'unexpected' or 'missing': the plan loads the 4 keys load_state_dict(strict=True) accepts, and
    performing it leaves the model with the checkpoint's qdata, scales and zero points."""
    from modinspect.commands.load import perform_load
    from modinspect.sources.module import ModuleSource

    _, saved = _quantized("int8")
    torch.save(saved.state_dict(), tmp_path / "q.pt")
    _, reference = _quantized("int8", seed=1)  # another start, so that loading changes everything
    _, target = _quantized("int8", seed=1)
    assert not torch.equal(_linear(target, 0).weight.scale, _linear(saved, 0).weight.scale)  # type: ignore[attr-defined]
    target_source = ModuleSource(target, "q", "entrypoint")
    torch_says = reference.load_state_dict(
        torch.load(tmp_path / "q.pt", weights_only=False), strict=True
    )
    assert not torch_says.missing_keys and not torch_says.unexpected_keys
    with open_source(str(tmp_path / "q.pt")) as checkpoint:
        report = perform_load(target_source, checkpoint, strict=True)
    assert report.plan.strict_ok and report.performed
    assert sorted(report.plan.loaded) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert not report.plan.cast
    for layer in (0, 2):
        got, want = _linear(target, layer).weight, _linear(saved, layer).weight
        for attr in ("qdata", "scale", "zero_point"):
            assert torch.equal(getattr(got, attr), getattr(want, attr)), attr
        assert torch.equal(_linear(target, layer).bias, _linear(saved, layer).bias)


def test_load_of_a_torchao_checkpoint_into_a_float_model_is_refused(tmp_path: Path) -> None:
    from modinspect.commands.load import perform_load
    from modinspect.errors import UsageError
    from modinspect.sources.module import ModuleSource

    model, saved = _quantized("int8")
    torch.save(saved.state_dict(), tmp_path / "q.pt")
    weight = _linear(model, 0).weight.detach().clone()
    with (
        open_source(str(tmp_path / "q.pt")) as checkpoint,
        pytest.raises(
            UsageError, match=r"^0\.weight is a Int8Tensor in the checkpoint and a plain"
        ),
    ):
        perform_load(ModuleSource(model, "f", "entrypoint"), checkpoint)
    assert torch.equal(_linear(model, 0).weight, weight)  # refused before anything was copied


@pytest.mark.parametrize("config", ["int8", "fp8", "w8a8", "int4 g32"])
def test_a_torchao_weight_dequantizes_as_torchao_does(tmp_path: Path, config: str) -> None:
    """`(qdata - zero_point) * scale` from the pickle's inner tensors equals torchao's own dequantize()."""
    from modinspect.analysis.dequant import dequantized

    _, quantized = _quantized(config)
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    with open_source(str(tmp_path / "q.pt")) as source:
        view = dequantized(source)
        assert view is not None
        for i in (0, 2):
            weight = _linear(quantized, i).weight
            want = weight.dequantize().to(torch.float32)
            torch.testing.assert_close(view.read_tensor(f"{i}.weight"), want, rtol=1e-6, atol=0)


def test_diff_of_the_float_model_and_its_torchao_state_dict_measures_the_quantization(
    tmp_path: Path,
) -> None:
    """diff dequantises the torchao side under the float names: ‖w − ŵ‖ / ‖w‖ as torch computes it."""
    from modinspect.analysis.diff import diff_sources

    model, quantized = _quantized("int4 g32")
    torch.save(model.state_dict(), tmp_path / "float.pt")
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    with open_source(str(tmp_path / "float.pt")) as a, open_source(str(tmp_path / "q.pt")) as b:
        report = diff_sources(a, b)
    errors = {e.name: e for e in report.quantization}
    assert sorted(errors) == ["0.weight", "2.weight"]
    for i in (0, 2):
        w = _linear(model, i).weight.detach().double()
        deq = _linear(quantized, i).weight.dequantize().double()
        error = errors[f"{i}.weight"]
        assert error.scheme == "torchao int4 weight-only g32"
        assert error.rel_error == pytest.approx(float((w - deq).norm() / w.norm()), rel=1e-6)
    assert not report.dtype_mismatch and not report.shape_mismatch


def test_allow_global_of_the_torchao_class_reads_it_the_same_way(tmp_path: Path) -> None:
    """--allow-global imports the real class (the note suggests it): still described as data, same figures."""
    _, quantized = _quantized("fp8")
    torch.save(quantized.state_dict(), tmp_path / "q.pt")
    plain = _tree(tmp_path / "q.pt")
    with open_source(
        str(tmp_path / "q.pt"), allow_globals=("torchao.quantization.Float8Tensor",)
    ) as source:
        allowed = build_tree(source)
        assert "torchao.quantization.Float8Tensor" not in source.standins  # the real class
    assert [(r.name, r.nbytes, r.scheme) for r in allowed.tensors] == [
        (r.name, r.nbytes, r.scheme) for r in plain.tensors
    ]
    assert plain.tensors[0].scheme == "torchao fp8 e4m3 weight-only per-channel"
