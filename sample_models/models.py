"""Small models behind the files in sample_models/, and entry points for them.

modinspect tree sample_models/models.py:small_cnn
modinspect tree sample_models/models.py:tiny_lm --weights sample_models/tiny_lm.safetensors
modinspect load sample_models/models.py:small_cnn_int8 sample_models/small_cnn_int8.pth --dry-run
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv-BatchNorm-ReLU stages and a classifier: BatchNorm brings buffers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class QuantizableSmallCNN(SmallCNN):
    """SmallCNN between torch.ao's QuantStub and DeQuantStub, as eager-mode static quantization needs it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        self.quant = torch.ao.quantization.QuantStub()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(super().forward(self.quant(x)))


def quantize_cnn(float_state: dict[str, torch.Tensor]) -> nn.Module:
    """SmallCNN with `float_state`, statically quantized to int8 by torch.ao: each conv-BatchNorm-ReLU fused
    into one ConvReLU2d, calibrated on 8 fixed random batches, converted (per-channel int8 weights)."""
    tq = torch.ao.quantization
    model = QuantizableSmallCNN().eval()
    model.load_state_dict(float_state)
    model.qconfig = tq.get_default_qconfig("x86")
    fused = tq.fuse_modules(
        model,
        [["features.0", "features.1", "features.2"], ["features.3", "features.4", "features.5"]],
    )
    prepared = tq.prepare(fused)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(8):
            prepared(torch.randn(4, 3, 8, 8, generator=generator))
    return tq.convert(prepared).eval()


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.act(self.up(self.norm(x))))


class TinyTiedLM(nn.Module):
    """A language model whose output head shares the embedding's weight (tied weights)."""

    def __init__(self, vocab: int = 100, dim: int = 32, layers: int = 3, context: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight
        self.register_buffer("position_ids", torch.arange(context), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


def tiny_lm() -> TinyTiedLM:
    torch.manual_seed(0)
    return TinyTiedLM().eval()


def small_cnn_int8() -> nn.Module:
    """small_cnn() quantized to int8 (random weights: a model to load small_cnn_int8.pth into)."""
    return quantize_cnn(small_cnn().state_dict())
