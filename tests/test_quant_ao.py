"""torch.ao static quantization: convolutions quantized by the real prepare / calibrate / convert flow, and the
bytes of per-channel scales and zero points.

The CNN below goes through torch.ao.quantization's eager-mode flow (fuse_modules, prepare, a few calibration
batches, convert): Conv1d/2d/3d, a fused ConvReLU2d, a grouped Conv2d without bias, a ConvTranspose2d and a
Linear. Every count is checked against the float model it came from and every byte against the quantized
tensors themselves (`int_repr()`, `q_per_channel_scales()`, `q_per_channel_zero_points()`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from modinspect.analysis.tree import build_tree
from modinspect.reports import TreeReport
from modinspect.run.source import open_source
from modinspect.sources.module import ModuleSource

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CONVS = ("c1", "c2", "c1d", "ct", "c3d")


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        tq = torch.ao.quantization
        self.quant = tq.QuantStub()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 16, 3, groups=2, bias=False)
        self.c1d = nn.Conv1d(16, 4, 1)
        self.ct = nn.ConvTranspose2d(16, 4, 2)
        self.c3d = nn.Conv3d(2, 2, 1)
        self.fc = nn.Linear(4, 5)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.c2(self.r1(self.c1(self.quant(x))))
        y = self.ct(x)
        z = self.c1d(x.flatten(2))
        w = self.c3d(x[:, :2].unsqueeze(2))
        return self.dequant(self.fc(z.mean(2))), self.dequant(y), self.dequant(w)


def float_and_quantized(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The float CNN and its static-quantized conversion (per-channel weights, ConvTranspose per-tensor)."""
    tq = torch.ao.quantization
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm", "qnnpack"):
        pytest.skip(f"no quantized CPU engine here ({engine})")
    torch.manual_seed(seed)
    model = SmallCNN().eval()
    float_model = SmallCNN().eval()
    float_model.load_state_dict(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.qconfig = tq.get_default_qconfig(engine)
        setattr(model.ct, "qconfig", tq.default_qconfig)  # noqa: B010  # per-channel has no transposed conv
        fused = tq.fuse_modules(model, [["c1", "r1"]])
        prepared = tq.prepare(fused)
        for _ in range(3):
            prepared(torch.randn(2, 3, 12, 12))
        quantized = tq.convert(prepared)
    return float_model, quantized


def weight_bias(model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A quantized conv's weight and bias, unpacked from its packed params."""
    layer = model.get_submodule(name)
    assert isinstance(layer, torch.ao.nn.quantized.modules.conv._ConvNd)
    weight, bias = layer._weight_bias()
    return weight, bias


def qparams_bytes(w: torch.Tensor) -> int:
    """What a quantized tensor stores beside its values: per-channel scales and zero points as tensors."""
    if w.qscheme() != torch.per_channel_affine:
        return 0
    scales, zeros = w.q_per_channel_scales(), w.q_per_channel_zero_points()
    return scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()


def check_report(
    report: TreeReport, float_model: nn.Module, quantized: nn.Module, script: bool
) -> None:
    """Counts as the float model's; each conv's weight a parameter at the float shape, its scheme, its bytes."""
    assert report.totals.params == sum(p.numel() for p in float_model.parameters())
    rows = {r.name: r for r in report.tensors}
    modules = {m.name: m for m in report.modules}
    for name in CONVS:
        conv = getattr(float_model, name)
        w, _b = weight_bias(quantized, name)
        scheme = (
            "qint8 per-channel" if w.qscheme() == torch.per_channel_affine else "qint8 per-tensor"
        )
        row = rows[f"{name}.weight"]
        assert (row.shape, row.dtype, row.kind, row.scheme) == (
            tuple(conv.weight.shape),
            "qint8",
            "parameter",
            scheme,
        )
        assert row.nbytes == w.int_repr().numel() + qparams_bytes(w)
        if conv.bias is None:
            assert f"{name}.bias" not in rows
        else:
            assert rows[f"{name}.bias"].kind == "parameter"
        # scale and zero_point (the output's): auxiliary tensors in a state dict, plain numbers in TorchScript
        aux = 0 if script else 4 + 8
        if not script:
            assert rows[f"{name}.scale"].kind == rows[f"{name}.zero_point"].kind == "quant-aux"
        module = modules[name]
        assert module.scheme == scheme and module.params == sum(
            p.numel() for p in conv.parameters()
        )
        assert module.bits_per_weight == (row.nbytes + aux) * 8 / conv.weight.numel()


def test_state_dict_of_a_static_quantized_cnn_counts_the_float_model(tmp_path: Path) -> None:
    float_model, quantized = float_and_quantized()
    state = quantized.state_dict()
    assert state["c2.bias"] is None  # a conv without bias saves None: still a state dict
    torch.save(state, tmp_path / "q.pth")
    with open_source(str(tmp_path / "q.pth")) as source:
        report = build_tree(source)
        check_report(report, float_model, quantized, script=False)
        # QuantStub's scale and zero point (the input's) are auxiliary, not parameters
        rows = {r.name: r for r in report.tensors}
        assert rows["quant.scale"].kind == rows["quant.zero_point"].kind == "quant-aux"
        assert report.totals.buffers is None
        stored = source.read_tensor("c1.weight")
        w, _b = weight_bias(quantized, "c1")
        assert torch.equal(stored.int_repr(), w.int_repr())
        assert torch.equal(stored.q_per_channel_scales(), w.q_per_channel_scales())


def test_torchscript_of_a_static_quantized_cnn_names_weight_and_bias(tmp_path: Path) -> None:
    """A scripted quantized conv pickles its __getstate__ tuple (weight at 10, bias at 11): listed as data under
    the names its state_dict gives them, never by running __setstate__."""
    float_model, quantized = float_and_quantized()
    torch.jit.save(torch.jit.script(quantized), tmp_path / "q.pt")
    with open_source(str(tmp_path / "q.pt")) as source:
        assert source.format == "torchscript"
        report = build_tree(source)
        check_report(report, float_model, quantized, script=True)
        assert {m.name: m.type for m in report.modules if m.name in CONVS} == {
            "c1": "ConvReLU2d",
            "c2": "Conv2d",
            "c1d": "Conv1d",
            "ct": "ConvTranspose2d",
            "c3d": "Conv3d",
        }
        for name in CONVS:
            w, b = weight_bias(quantized, name)
            stored = source.read_tensor(f"{name}.weight")
            assert torch.equal(stored.int_repr(), w.int_repr())
            assert stored.qscheme() == w.qscheme()
            if b is not None:
                assert torch.equal(source.read_tensor(f"{name}.bias"), b)
        assert not any("custom __setstate__" in n for n in source.notes)


def test_live_static_quantized_cnn_and_load_into_it(tmp_path: Path) -> None:
    """The live quantized model counts as its saved state dict does, and `load` plans what load_state_dict
    (strict) accepts: every key, none 'unexpected', the bias-less conv's None among them."""
    from modinspect.commands.load import perform_load

    float_model, quantized = float_and_quantized(seed=1)
    _, target = float_and_quantized(seed=0)
    torch.save(quantized.state_dict(), tmp_path / "q.pth")
    float_and_quantized(seed=0)[1].load_state_dict(torch.load(tmp_path / "q.pth"), strict=True)
    live = ModuleSource(target, "cnn", "entrypoint")
    check_report(build_tree(live), float_model, quantized, script=False)
    with open_source(str(tmp_path / "q.pth")) as checkpoint:
        saved = {t.name: t.nbytes for t in checkpoint.tensors}
        assert {t.name: t.nbytes for t in live.tensors} == saved
        report = perform_load(live, checkpoint, strict=True)
    assert report.plan.strict_ok and report.performed
    assert sorted(report.plan.loaded) == sorted(saved)
    for name in CONVS:
        assert torch.equal(
            weight_bias(target, name)[0].int_repr(), weight_bias(quantized, name)[0].int_repr()
        )


# ---------------------------------------------------------------- per-channel scales and zero points


def test_per_channel_scales_and_zero_points_are_stored_bytes(tmp_path: Path) -> None:
    """A per-channel tensor's bytes: its values, its float64 scales and its int64 zero points (torch.save stores
    the three); a per-tensor one's scale and zero point are numbers in the pickle."""
    w = torch.randn(6, 5)
    per_channel = torch.quantize_per_channel(
        w, torch.rand(6, dtype=torch.float64) + 0.01, torch.arange(6), 0, torch.qint8
    )
    per_tensor = torch.quantize_per_tensor(w, 0.1, 3, torch.quint8)
    torch.save({"pc": per_channel, "pt": per_tensor}, tmp_path / "q.pth")
    with open_source(str(tmp_path / "q.pth")) as source:
        assert source.info("pc").nbytes == 30 + 6 * 8 + 6 * 8
        assert source.info("pc").nbytes == 30 + qparams_bytes(per_channel)
        assert source.info("pt").nbytes == 30
        assert torch.equal(source.read_tensor("pc").int_repr(), per_channel.int_repr())


def test_per_channel_dynamic_linear_bits_per_weight_include_its_scales(tmp_path: Path) -> None:
    """quantize_dynamic per-channel: the same bytes in a state dict, TorchScript and the live model."""
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    quantized = torch.ao.quantization.quantize_dynamic(
        float_model, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    )
    torch.save(quantized.state_dict(), tmp_path / "pc.pth")
    torch.jit.save(torch.jit.script(quantized), tmp_path / "pc.pt")
    name = "_packed_params._packed_params.0"
    expected = {
        f"{i}.{name}": quantized[i].weight().numel() + qparams_bytes(quantized[i].weight())
        for i in (0, 2)
    }
    assert expected == {f"0.{name}": 512 + 32 * 16, f"2.{name}": 256 + 8 * 16}
    # the layer's own scale (float32) and zero_point (int64) are tensors in a state dict, numbers in TorchScript
    for path, aux in (("pc.pth", 4 + 8), ("pc.pt", 0)):
        with open_source(str(tmp_path / path)) as source:
            assert {n: source.info(n).nbytes for n in expected} == expected, path
            module = {m.name: m for m in build_tree(source).modules}["0"]
            assert module.bits_per_weight == (expected[f"0.{name}"] + aux) * 8 / 512, path
    live = build_tree(ModuleSource(quantized, "m", "entrypoint"))
    assert {r.name: r.nbytes for r in live.tensors if r.name in expected} == expected


# ---------------------------------------------------------------- the shipped sample


def test_the_int8_sample_is_what_make_samples_writes(tmp_path: Path) -> None:
    """sample_models/small_cnn_int8.pth: small_cnn.pth through the real static flow, written by make_samples.py
    (in its own process: its `models` is not the tests'); counted as the float model less its BatchNorms."""
    import subprocess
    import sys

    from conftest import SAMPLES

    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        pytest.skip("the sample was quantized with the x86 engine")
    written = tmp_path / "small_cnn_int8.pth"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import make_samples; "
        "model, _ = make_samples._trained_cnn(); "
        "make_samples._small_cnn_int8(model.state_dict(), Path(sys.argv[2]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(SAMPLES), str(written)], check=True, capture_output=True
    )
    shipped = torch.load(SAMPLES / "small_cnn_int8.pth", weights_only=False)
    fresh = torch.load(written, weights_only=False)
    assert list(shipped) == list(fresh)
    for key, value in shipped.items():
        other = fresh[key]
        if isinstance(value, torch.Tensor) and value.is_quantized:
            assert torch.equal(value.int_repr(), other.int_repr()), key
            assert torch.equal(value.q_per_channel_scales(), other.q_per_channel_scales()), key
        elif isinstance(value, tuple):
            assert torch.equal(value[0].int_repr(), other[0].int_repr()), key
            assert torch.equal(value[1], other[1]), key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        else:
            assert value == other, key
    float_state = torch.load(SAMPLES / "small_cnn.pth", weights_only=True)
    folded = sum(
        v.numel()
        for k, v in float_state.items()
        if k.startswith("classifier.")
        or (k.split(".")[1] in ("0", "3") and k.endswith(("weight", "bias")))
    )
    with open_source(str(SAMPLES / "small_cnn_int8.pth")) as source:
        report = build_tree(source)
    assert report.totals.params == folded
    assert sum(r.numel for r in report.tensors if r.kind != "quant-aux") == folded == 1562
    assert [(m.name, m.scheme) for m in report.modules if m.scheme] == [
        ("features.0", "qint8 per-channel"),
        ("features.3", "qint8 per-channel"),
        ("classifier", "qint8 per-channel"),
    ]


@pytest.mark.parametrize("command", [["tree"], ["diff", "small_cnn.pth"]])
def test_the_int8_sample_prints_no_torch_warning(command: list[str]) -> None:
    """torch 2.13 warns that creating quantized tensors is deprecated: the file holds them, so modinspect
    rebuilds them without passing the warning on (a fresh process, where it would print once)."""
    import os
    import subprocess
    import sys

    from conftest import SAMPLES

    env = dict(os.environ, COLUMNS="100", PYTHONWARNINGS="default")
    out = subprocess.run(
        [sys.executable, "-m", "modinspect", *command, "small_cnn_int8.pth"],
        cwd=SAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == (0 if command == ["tree"] else 1), out.stderr
    assert out.stderr == ""
    if command != ["tree"]:
        assert "B's 3 quantized tensors dequantised and compared with A's floats" in out.stdout
