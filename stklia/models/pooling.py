"""Temporal pooling: (batch, channels, frames) -> (batch, out_channels), one class per mode.

Each layer exposes `out_channels` so that a model can size its embedding layer for any mode.
`forward(x, mask)` takes an optional (batch, frames) bool mask of the valid frames, so that
padded batches of utterances of different lengths pool exactly like one utterance at a time.
Moments are computed in at least float32 (half-precision x**4 overflows), on x's device.
Register new modes in POOLINGS; docs/heads.md describes them.

The keyword options of `build_pooling` (a model's `pooling_options`) reproduce how other toolkits compute the
same statistics, for the models stklia imports from them (docs/pretrained.md): the standard deviation biased or
unbiased, its variance floored (`std_floor`) and offset (`std_offset`: WeSpeaker's sqrt(var + 1e-7)); the
attention of attentive pooling through a ReLU and a batch norm (`attention_bn`, SpeechBrain's), its weighted
variance as E[x^2] - mean^2 (`raw_moments`, WeSpeaker's) floored at `weighted_floor`. The defaults are stklia's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stklia.core.errors import InputError


def floored(variance: torch.Tensor) -> torch.Tensor:
    """Variances floored at 1e-10, so that sqrt and divisions by them keep finite gradients.

    (A function, not a module constant: TorchScript, used by stklia.export, cannot read float globals.)
    """
    return variance.clamp(min=1e-10)


def _valid(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x in at least float32 with padded frames zeroed, and the number of valid frames (batch, 1)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    if mask is None:
        return x, torch.full((x.shape[0], 1), x.shape[-1], dtype=x.dtype, device=x.device)
    return x.masked_fill(~mask[:, None, :], 0.0), mask.sum(dim=1, keepdim=True).to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid frames."""
    x, n = _valid(x, mask)
    return x.sum(dim=-1) / n


def masked_segment_mean(x: torch.Tensor, mask: torch.Tensor | None, segment_frames: int) -> torch.Tensor:
    """(batch, channels, frames): each frame's mean over its segment of `segment_frames` frames (the last
    segment may be shorter), over the valid frames only (CAM++'s segment pooling; F.avg_pool1d with
    ceil_mode=True for one whole utterance)."""
    x, _ = _valid(x, mask)
    batch, channels, frames = x.shape
    segments = (frames + segment_frames - 1) // segment_frames
    tail = segments * segment_frames - frames
    weights = x.new_ones(1, 1, frames) if mask is None else mask[:, None, :].to(x.dtype)
    sums = F.pad(x, (0, tail)).reshape(batch, channels, segments, segment_frames).sum(dim=-1)
    counts = F.pad(weights, (0, tail)).reshape(weights.shape[0], 1, segments, segment_frames).sum(dim=-1)
    return (sums / counts.clamp(min=1)).repeat_interleave(segment_frames, dim=-1)[..., :frames]


def central_moments(x: torch.Tensor, mask: torch.Tensor | None,
                    orders: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The number of valid frames, and the biased central moments mean((x - mean)**k) over them for each k.

    Written for TorchScript too (stklia.export): lists, no tuple unpacking of results.
    """
    centred, n = _valid(x - masked_mean(x, mask)[..., None], mask)
    return n, [(centred**k).sum(dim=-1) / n for k in orders]


def masked_std(x: torch.Tensor, mask: torch.Tensor | None, unbiased: bool = True, floor: float = 1e-10,
               offset: float = 0.0) -> torch.Tensor:
    """Standard deviation over valid frames, unbiased (as torch.std) or not, sqrt(max(variance, floor) + offset)."""
    n, moments = central_moments(x, mask, [2])
    variance = moments[0] * n / (n - 1).clamp(min=1) if unbiased else moments[0]
    variance = variance.clamp(min=floor)
    return (variance + offset if offset != 0.0 else variance).sqrt()


def masked_skewness(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sample skewness m3 / m2**1.5 (scipy.stats.skew with bias=True); 0 for constant frames."""
    _, moments = central_moments(x, mask, [2, 3])
    m2, m3 = moments[0], moments[1]
    return m3 / floored(m2) ** 1.5


def masked_kurtosis(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Excess kurtosis m4 / m2**2 - 3 (scipy.stats.kurtosis, fisher=True, bias=True)."""
    _, moments = central_moments(x, mask, [2, 4])
    m2, m4 = moments[0], moments[1]
    return m4 / floored(m2) ** 2 - 3


class Pooling(nn.Module):
    """Base class: `expansion` statistics of `channels` channels each; how the standard deviation is computed
    (masked_std's `unbiased`, `floor` and `offset`, for the modes that use it)."""

    expansion = 1

    def __init__(self, channels: int, std_unbiased: bool = True, std_floor: float = 1e-10, std_offset: float = 0.0):
        super().__init__()
        self.out_channels = channels * self.expansion
        self.std_unbiased, self.std_floor, self.std_offset = bool(std_unbiased), float(std_floor), float(std_offset)

    def std(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return masked_std(x, mask, self.std_unbiased, self.std_floor, self.std_offset)


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
        return self.std(x, mask)


class StatisticalPooling(Pooling):
    """Mean and standard deviation concatenated (x-vector statistics pooling)."""

    expansion = 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([masked_mean(x, mask), self.std(x, mask)], dim=1)


class StdSkewPooling(Pooling):
    """Standard deviation and skewness concatenated (the seed's std_skew, differentiable here)."""

    expansion = 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([self.std(x, mask), masked_skewness(x, mask)], dim=1)


class StdKurtosisPooling(Pooling):
    """Standard deviation and excess kurtosis concatenated (the seed's std_kurtosis, differentiable here)."""

    expansion = 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([self.std(x, mask), masked_kurtosis(x, mask)], dim=1)


class AttentiveStatisticsPooling(Pooling):
    """Attentive statistics pooling (Okabe et al., 2018): attention-weighted mean and standard deviation.

    Frame t gets the score e_t = v^T tanh(W h_t + b) + k (a 1x1 convolution of `attention_channels`
    units then one of 1 unit), weights alpha = softmax_t(e) over the valid frames (padded frames get
    weight 0), mean mu = sum_t alpha_t h_t and std sqrt(sum_t alpha_t (h_t - mu)**2).

    `channel_dependent`: one score per channel and frame (v_c, k_c: a last convolution of `channels`
    units); `global_context`: the attention also sees the utterance's mean and standard deviation
    over its valid frames, [h_t; mean; std] (ECAPA-TDNN, Desplanques et al., 2020, section 3.3).
    `attention_bn`: W h_t + b goes through a ReLU and a batch norm before tanh (SpeechBrain's ECAPA-TDNN);
    `raw_moments`: the variance is sum_t alpha_t h_t**2 - mu**2 (WeSpeaker's); it is floored at `weighted_floor`.
    """

    expansion = 2

    def __init__(self, channels: int, attention_channels: int = 128, channel_dependent: bool = False,
                 global_context: bool = False, attention_bn: bool = False, raw_moments: bool = False,
                 weighted_floor: float = 1e-10, **std_options: float | bool):
        super().__init__(channels, **std_options)
        self.global_context, self.raw_moments, self.weighted_floor = global_context, raw_moments, float(weighted_floor)
        first = nn.Conv1d(channels * 3 if global_context else channels, attention_channels, kernel_size=1)
        squash = [nn.ReLU(), nn.BatchNorm1d(attention_channels), nn.Tanh()] if attention_bn else [nn.Tanh()]
        self.attention = nn.Sequential(
            first, *squash, nn.Conv1d(attention_channels, channels if channel_dependent else 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x
        if self.global_context:
            frames = x.shape[-1]
            stats = [masked_mean(x, mask), self.std(x, mask)]
            context = torch.cat([x] + [s.to(x.dtype)[..., None].expand(-1, -1, frames) for s in stats], dim=1)
        scores = self.attention(context)  # (batch, 1 or channels, frames)
        x, _ = _valid(x, mask)
        scores = scores.to(x.dtype)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], -torch.inf)
        alpha = scores.softmax(dim=-1)
        mean = (alpha * x).sum(dim=-1)
        if self.raw_moments:
            var = (alpha * x**2).sum(dim=-1) - mean**2
        else:
            var = (alpha * (x - mean[..., None]) ** 2).sum(dim=-1)
        return torch.cat([mean, var.clamp(min=self.weighted_floor).sqrt()], dim=1)


class ChannelContextAttentivePooling(AttentiveStatisticsPooling):
    """ECAPA-TDNN's channel- and context-dependent attentive statistics pooling (bottleneck of 128)."""

    def __init__(self, channels: int, attention_channels: int = 128, **options: float | bool):
        super().__init__(channels, attention_channels, channel_dependent=True, global_context=True, **options)


POOLINGS: dict[str, type[Pooling]] = {
    "min": MinPooling,
    "max": MaxPooling,
    "mean": MeanPooling,
    "std": StdPooling,
    "statistical": StatisticalPooling,
    "std_skew": StdSkewPooling,
    "std_kurtosis": StdKurtosisPooling,
    "attentive": AttentiveStatisticsPooling,
    "channel_context_attentive": ChannelContextAttentivePooling,
}


def build_pooling(mode: str, channels: int, options: dict | None = None) -> Pooling:
    """The pooling layer called `mode` for inputs of `channels` channels, with its keyword `options` (see the
    module's docstring)."""
    if mode not in POOLINGS:
        raise InputError("model.pooling", f"unknown pooling '{mode}', choose one of: {', '.join(POOLINGS)}")
    try:
        return POOLINGS[mode](channels, **(options or {}))
    except TypeError as err:
        raise InputError("model.pooling_options", f"{dict(options or {})} for pooling '{mode}': {err}") from None
