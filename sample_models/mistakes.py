"""A small classifier with three classic mistakes, for `modinspect doctor` (README)."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.blocks = [
            nn.Linear(32, 32) for _ in range(2)
        ]  # a plain list: never trained, never saved
        self.head = nn.Linear(32, 10)
        self.aux = nn.Linear(32, 10)  # defined, never called

    def forward(self, x):
        h = torch.relu(self.embed(x))
        for block in self.blocks:
            h = torch.relu(block(h))
        return torch.softmax(
            self.head(h), dim=-1
        )  # probabilities, then nn.CrossEntropyLoss in the training loop
