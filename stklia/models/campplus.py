"""CAM++ (Wang, Zheng, Chen, Cheng and Chen, "CAM++: a fast and efficient network for speaker
verification using context-aware masking", Interspeech 2023), as 3D-Speaker defines it.

A 2-D convolutional front-end module (FCM: a 3x3 convolution, two stages of two residual blocks and
a 3x3 convolution, each halving the frequency axis only; 32 channels), folded into channels, then a
TDNN layer (kernel 5, time stride 2, 128 channels) and three densely connected TDNN blocks of 12,
24 and 16 layers (growth 32, bottleneck 4 x 32, kernel 3, dilations 1, 2, 2), each ending in a
transition layer halving the channels. Every D-TDNN layer ends in context-aware masking: its output
is gated by sigmoid(W2 relu(W1 c)), c the layer's input averaged over the utterance plus averaged
over its segment of 100 frames. Statistics pooling, then a linear layer + batch norm without learned
affine parameters give the 512-dimensional embedding: 7.18 M parameters at 80 dims (docs/models.md).

Padded batches (`forward(feats, lengths)`) embed each utterance as alone (stklia.models.masking):
frames beyond each length are zeroed before every convolution wider than one frame, the length
follows the time stride, and utterance and segment means see only the valid frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from stklia.core.errors import InputError
from stklia.models.generator import Generator
from stklia.models.masking import frame_mask, strided_length, zero_padding, zero_padding_
from stklia.models.pooling import build_pooling, masked_mean, masked_segment_mean
from stklia.models.resnet import BasicBlock, conv3x3, make_stage
from stklia.models.tdnn import check_odd


def bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(channels), nn.ReLU(inplace=True))


class FrontEnd(nn.Module):
    """FCM: features (B, T, F) -> (B, channels * F', T), F' = F halved (rounding up) 1 + len(blocks) times."""

    def __init__(self, features_per_frame: int, channels: int = 32, blocks: Sequence[int] = (2, 2)):
        super().__init__()
        self.conv1 = conv3x3(1, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.stages = nn.Sequential(*(make_stage(BasicBlock, channels, channels, n, stride=(1, 2)) for n in blocks))
        self.conv2 = conv3x3(channels, channels, stride=(1, 2))
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * math.ceil(features_per_frame / 2 ** (len(blocks) + 1))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = zero_padding(feats.unsqueeze(1), lengths)  # (B, 1, T, F), padded frames as the conv padding
        x = self.relu(zero_padding_(self.bn1(self.conv1(x)), lengths))
        for stage in self.stages:
            for block in stage:
                x = block(x, lengths)  # frequency strides only: the lengths stay
        x = self.relu(self.bn2(self.conv2(x)))  # (B, C, T, F')
        return x.permute(0, 1, 3, 2).flatten(1, 2)


class ContextAwareMasking(nn.Module):
    """A dilated convolution whose output is gated by the utterance- and segment-level context of its input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, segment_frames: int,
                 reduction: int = 2):
        super().__init__()
        self.local = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                               padding=(kernel_size - 1) // 2 * dilation, bias=False)
        self.fc1 = nn.Conv1d(in_channels, in_channels // reduction, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv1d(in_channels // reduction, out_channels, kernel_size=1)
        self.segment_frames = segment_frames

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        mask = frame_mask(lengths, x.shape[-1])
        context = masked_mean(x, mask)[..., None] + masked_segment_mean(x, mask, self.segment_frames)
        gate = torch.sigmoid(self.fc2(self.relu(self.fc1(context.to(x.dtype)))))
        return self.local(zero_padding(x, lengths)) * gate


class DenseTDNNLayer(nn.Module):
    """Batch norm, ReLU, 1x1 convolution to the bottleneck, batch norm, ReLU, context-aware masking."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck: int, kernel_size: int, dilation: int,
                 segment_frames: int):
        super().__init__()
        self.bottleneck = nn.Sequential(bn_relu(in_channels), nn.Conv1d(in_channels, bottleneck, 1, bias=False),
                                        bn_relu(bottleneck))
        self.cam = ContextAwareMasking(bottleneck, growth_rate, kernel_size, dilation, segment_frames)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.cam(self.bottleneck(x), lengths)


class DenseTDNNBlock(nn.Module):
    """Densely connected layers (each sees the block's input and every earlier layer's output), then a
    transition layer (batch norm, ReLU, 1x1 convolution) halving the channels."""

    def __init__(self, in_channels: int, layers: int, growth_rate: int, bottleneck: int, kernel_size: int,
                 dilation: int, segment_frames: int):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseTDNNLayer(in_channels + i * growth_rate, growth_rate, bottleneck, kernel_size, dilation,
                           segment_frames) for i in range(layers))
        channels = in_channels + layers * growth_rate
        self.out_channels = channels // 2
        self.transit = nn.Sequential(bn_relu(channels), nn.Conv1d(channels, self.out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x, lengths)], dim=1)
        return self.transit(x)


class CAMPPlus(Generator):
    """CAM++ generator: features (B, T, F) -> embedding of size `emb_size`.

    `block_layers` and `dilations` have one entry per D-TDNN block; each layer adds `growth_rate`
    channels through a bottleneck of `bottleneck_scale * growth_rate`.
    """

    def __init__(
        self,
        features_per_frame: int,
        front_channels: int = 32,
        front_blocks: Sequence[int] = (2, 2),
        channels: int = 128,
        block_layers: Sequence[int] = (12, 24, 16),
        dilations: Sequence[int] = (1, 2, 2),
        growth_rate: int = 32,
        bottleneck_scale: int = 4,
        kernel_size: int = 3,
        segment_frames: int = 100,
        emb_size: int = 512,
        pooling: str = "statistical",
        pooling_options: dict | None = None,
    ):
        super().__init__()
        if len(block_layers) != len(dilations) or not block_layers:
            raise InputError("model.block_layers", f"{list(block_layers)} and dilations {list(dilations)} must give "
                             "the same number (at least one) of D-TDNN blocks")
        check_odd("model.kernel_size", [kernel_size])
        if segment_frames < 1:
            raise InputError("model.segment_frames", f"must be at least 1, not {segment_frames}")
        self.features_per_frame = features_per_frame
        self.emb_size = emb_size
        self.front = FrontEnd(features_per_frame, front_channels, front_blocks)
        self.tdnn = nn.Sequential(nn.Conv1d(self.front.out_channels, channels, 5, stride=2, padding=2, bias=False),
                                  nn.BatchNorm1d(channels), nn.ReLU(inplace=True))
        blocks = []
        for layers, dilation in zip(block_layers, dilations):
            blocks.append(DenseTDNNBlock(channels, layers, growth_rate, bottleneck_scale * growth_rate, kernel_size,
                                         dilation, segment_frames))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out = bn_relu(channels)
        self.pooling = build_pooling(pooling, channels, pooling_options)  # models/pooling.py
        self.fc = nn.Linear(self.pooling.out_channels, emb_size, bias=False)
        self.bn = nn.BatchNorm1d(emb_size, affine=False)

        for m in self.modules():  # as 3D-Speaker
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, T, F) -> (B, emb_size); `lengths` (B,): valid frames of each padded utterance."""
        x = self.tdnn(zero_padding(self.front(feats, lengths), lengths))
        lengths = None if lengths is None else strided_length(lengths, 2)
        for block in self.blocks:
            x = block(x, lengths)
        x = self.out(x)
        return self.bn(self.fc(self.pooling(x, frame_mask(lengths, x.shape[-1]))))
