"""Small models behind the files in sample_models/, and entry points for them.

modinspect tree sample_models/models.py:small_cnn
modinspect tree sample_models/models.py:tiny_lm --weights sample_models/tiny_lm.safetensors
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
