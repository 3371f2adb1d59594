"""Temporal pooling: (batch, channels, frames) -> (batch, out_channels), one class per mode.

Each layer exposes `out_channels` so the ResNet can size its embedding layer for any mode.
Register new modes in POOLINGS.
"""

from __future__ import annotations

import torch
from torch import nn


def _std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation over frames (as torch.std), floored so its gradient stays finite."""
    return x.var(dim=-1).clamp(min=1e-10).sqrt()


class Pooling(nn.Module):
    """Base class: `expansion` statistics of `channels` channels each."""

    expansion = 1

    def __init__(self, channels: int):
        super().__init__()
        self.out_channels = channels * self.expansion


class MinPooling(Pooling):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amin(dim=-1)


class MaxPooling(Pooling):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=-1)


class MeanPooling(Pooling):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1)


class StdPooling(Pooling):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _std(x)


class StatisticalPooling(Pooling):
    """Mean and standard deviation concatenated (x-vector statistics pooling)."""

    expansion = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=-1), _std(x)], dim=1)


POOLINGS: dict[str, type[Pooling]] = {
    "min": MinPooling,
    "max": MaxPooling,
    "mean": MeanPooling,
    "std": StdPooling,
    "statistical": StatisticalPooling,
}


def build_pooling(mode: str, channels: int) -> Pooling:
    """The pooling layer called `mode` for inputs of `channels` channels."""
    if mode not in POOLINGS:
        raise ValueError(f"unknown pooling '{mode}', choose one of: {', '.join(POOLINGS)}")
    return POOLINGS[mode](channels)
