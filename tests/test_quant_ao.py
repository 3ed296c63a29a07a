"""Per-channel quantized tensors: the bytes of their scales and zero points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modinspect.analysis.tree import build_tree
from modinspect.run.source import open_source
from modinspect.sources.module import ModuleSource

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def qparams_bytes(w: torch.Tensor) -> int:
    """What a quantized tensor stores beside its values: per-channel scales and zero points as tensors."""
    if w.qscheme() != torch.per_channel_affine:
        return 0
    scales, zeros = w.q_per_channel_scales(), w.q_per_channel_zero_points()
    return scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()


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
