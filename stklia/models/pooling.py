"""Temporal pooling: (batch, channels, frames) -> (batch, out_channels), one class per mode.

Each layer exposes `out_channels` so the ResNet can size its embedding layer for any mode.
`forward(x, mask)` takes an optional (batch, frames) bool mask of the valid frames, so that
padded batches of utterances of different lengths pool exactly like one utterance at a time.
Register new modes in POOLINGS.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid frames."""
    if mask is None:
        return x.mean(dim=-1)
    m = mask[:, None, :].to(x.dtype)
    return (x * m).sum(dim=-1) / m.sum(dim=-1)


def masked_std(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Unbiased standard deviation over valid frames (as torch.std), floored so its gradient stays finite."""
    if mask is None:
        var = x.var(dim=-1)
    else:
        m = mask[:, None, :].to(x.dtype)
        n = m.sum(dim=-1)
        var = (((x - masked_mean(x, mask)[..., None]) * m) ** 2).sum(dim=-1) / (n - 1).clamp(min=1)
    return var.clamp(min=1e-10).sqrt()


class Pooling(nn.Module):
    """Base class: `expansion` statistics of `channels` channels each."""

    expansion = 1

    def __init__(self, channels: int):
        super().__init__()
        self.out_channels = channels * self.expansion


class MinPooling(Pooling):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return (x if mask is None else x.masked_fill(~mask[:, None, :], torch.inf)).amin(dim=-1)


class MaxPooling(Pooling):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return (x if mask is None else x.masked_fill(~mask[:, None, :], -torch.inf)).amax(dim=-1)


class MeanPooling(Pooling):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(x, mask)


class StdPooling(Pooling):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_std(x, mask)


class StatisticalPooling(Pooling):
    """Mean and standard deviation concatenated (x-vector statistics pooling)."""

    expansion = 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([masked_mean(x, mask), masked_std(x, mask)], dim=1)


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
