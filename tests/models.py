"""Small named nn.Modules shared by the tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TwoLayer(nn.Module):
    """Linear-ReLU-Linear with a persistent and a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 2)
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("cache", torch.zeros(3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))) * self.scale


class Tied(nn.Module):
    """Embedding and head sharing one weight; three identical blocks."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class PartlyFrozen(TwoLayer):
    def __init__(self) -> None:
        super().__init__()
        self.fc1.requires_grad_(False)


# ---------------------------------------------------------------- planted faults for stats


class SqrtShift(nn.Module):
    """sqrt of a negative number: NaN in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x - 10.0)


class NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class BadGrad(nn.Module):
    """A custom autograd.Function whose backward returns NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NaNBackward.apply(x)


class Block(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class FaultyNet(nn.Module):
    """Four blocks, the third carrying `faulty`; optionally a BatchNorm for buffers; a head."""

    def __init__(self, faulty: nn.Module, norm: bool = False, inplace_last: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(Block(nn.ReLU()), Block(nn.ReLU()), Block(faulty), Block(nn.ReLU(inplace_last)))
        self.norm: nn.Module = nn.BatchNorm1d(8) if norm else nn.Identity()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(x)))
