"""ResNet x-vector generator over acoustic features, in the manner of torchvision's resnet.py.

Input (batch, frames, features_per_frame) is treated as a one-channel image. Stages of residual
blocks (BasicBlock up to ResNet-34, Bottleneck above; the first stage keeps the resolution, the
others halve it), then the frequency axis is folded into channels, frames are pooled, and a linear
layer + batch norm gives the embedding. `resnet18()` ... `resnet293()` build WeSpeaker's depths.

Padded batches (`forward(feats, lengths)`) embed each utterance as alone (stklia.models.masking):
the padded frames are zeroed before every 3x3 convolution and the valid length follows each stride.
The zeroing is done in place, on batch norm outputs (before the ReLU: relu(0) = 0, and autograd
allows it there), and on the CPU only where the padding is: no extra pass over the activations.
`fold_batch_norms` gives extraction's inference copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from stklia.core.errors import InputError
from stklia.models.generator import Generator
from stklia.models.masking import frame_mask, strided_length, zero_padding, zero_padding_
from stklia.models.pooling import build_pooling


def conv3x3(in_planes: int, out_planes: int, stride: int | tuple[int, int] = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int | tuple[int, int] = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (the first strided) and a shortcut: ResNet-18/34.

    `stride`: of both axes, or (time, frequency) (CAM++'s front end strides frequency only).
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.time_stride = stride if isinstance(stride, int) else stride[0]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths`: valid frames of each input (x is zero beyond them), None if unpadded."""
        out_lengths = None if lengths is None else strided_length(lengths, self.time_stride)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(zero_padding_(self.bn1(self.conv1(x)), out_lengths))
        out = self.bn2(self.conv2(out))
        return self.relu(zero_padding_(out + identity, out_lengths))


class Bottleneck(nn.Module):
    """1x1 reduction, strided 3x3, 1x1 expansion (x4) and a shortcut: ResNet-50 and deeper (WeSpeaker's
    ResNet-50/101/221/293 put the stride on the 3x3 convolution, as torchvision does)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int | tuple[int, int] = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.time_stride = stride if isinstance(stride, int) else stride[0]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths`: valid frames of each input (x is zero beyond them), None if unpadded."""
        out_lengths = None if lengths is None else strided_length(lengths, self.time_stride)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(zero_padding_(self.bn1(self.conv1(x)), lengths))  # the 3x3 must see zeros there
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(zero_padding_(out + identity, out_lengths))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stage(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int,
               stride: int | tuple[int, int]) -> nn.Sequential:
    """`blocks` residual blocks of width `planes` (output planes * block.expansion), the first one strided."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            conv1x1(inplanes, planes * block.expansion, stride),
            nn.BatchNorm2d(planes * block.expansion),
        )
    first = block(inplanes, planes, stride, downsample)
    return nn.Sequential(first, *(block(planes * block.expansion, planes) for _ in range(1, blocks)))


class ResNet(Generator):
    """ResNet generator: features -> embedding of size `emb_size`.

    `block` is "basic" (BasicBlock) or "bottleneck" (Bottleneck); `layers` the number of blocks of each
    stage and `num_filters` their widths (a bottleneck stage outputs 4x its width). `emb_bn`: a batch norm
    after the embedding layer (WeSpeaker's ResNets have none); `pooling_options`: models/pooling.py.
    """

    def __init__(
        self,
        features_per_frame: int,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_filters: Sequence[int] = (32, 64, 128, 256),
        emb_size: int = 256,
        pooling: str = "statistical",
        zero_init_residual: bool = False,
        block: str = "basic",
        emb_bn: bool = True,
        pooling_options: dict | None = None,
    ):
        super().__init__()
        if len(layers) != len(num_filters) or not layers:
            raise InputError("model.layers", f"{list(layers)} and num_filters {list(num_filters)} must give "
                             "the same number (at least one) of stages")
        if min(layers) < 1:
            raise InputError("model.layers", f"{list(layers)}: every stage needs at least one block")
        if block not in BLOCKS:
            raise InputError("model.block", f"unknown block '{block}', choose one of: {', '.join(BLOCKS)}")
        block_type = BLOCKS[block]
        self.features_per_frame = features_per_frame
        self.emb_size = emb_size
        self.conv1 = conv3x3(1, num_filters[0])
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], num_filters[0]
        for i, (planes, blocks) in enumerate(zip(num_filters, layers)):
            stages.append(make_stage(block_type, inplanes, planes, blocks, stride=1 if i == 0 else 2))
            inplanes = planes * block_type.expansion
        self.stages = nn.Sequential(*stages)
        out_freq = math.ceil(features_per_frame / 2 ** (len(layers) - 1))
        self.pooling = build_pooling(pooling, num_filters[-1] * block_type.expansion * out_freq, pooling_options)
        self.fc = nn.Linear(self.pooling.out_channels, emb_size)
        self.bn2 = nn.BatchNorm1d(emb_size) if emb_bn else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al., 2017)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def fold_batch_norms(self) -> ResNet:
        """Fold every 2-D batch norm into the convolution before it (which gains a bias), for inference.

        The result equals the eval-mode network up to float rounding and saves a pass over the
        activations per convolution; it bakes in the running statistics, so it is for a copy that is
        not trained any more (extraction folds its own copy).
        """
        for parent in self.modules():  # the stem and the blocks (convN, bnN), the downsamples (0, 1)
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1")):
                conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                    setattr(parent, bn_name, nn.Identity())
        return self

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, T, F) -> (B, emb_size); `lengths` (B,): valid frames of each padded utterance."""
        x = zero_padding(feats.unsqueeze(1), lengths)  # (B, 1, T, F), padded frames as the conv padding (a copy)
        x = self.relu(zero_padding_(self.bn1(self.conv1(x)), lengths))  # (B, C, T, F)
        for stage in self.stages:
            for block in stage:
                x = block(x, lengths)  # (B, C', T', F')
                lengths = None if lengths is None else strided_length(lengths, block.time_stride)
        mask = frame_mask(lengths, x.shape[2])
        x = x.permute(0, 1, 3, 2).flatten(1, 2)  # (B, C' * F', T')
        return self.bn2(self.fc(self.pooling(x, mask)))


def _resnet(block: str, layers: Sequence[int], features_per_frame: int, base_channels: int = 32,
            **kwargs) -> ResNet:
    """A four-stage ResNet of widths base, 2 base, 4 base, 8 base channels (WeSpeaker's m_channels)."""
    widths = [base_channels * 2**i for i in range(4)]
    return ResNet(features_per_frame, layers=layers, num_filters=widths, block=block, **kwargs)


def resnet18(features_per_frame: int, **kwargs) -> ResNet:
    return _resnet("basic", [2, 2, 2, 2], features_per_frame, **kwargs)


def resnet34(features_per_frame: int, **kwargs) -> ResNet:
    return _resnet("basic", [3, 4, 6, 3], features_per_frame, **kwargs)


def resnet50(features_per_frame: int, **kwargs) -> ResNet:
    return _resnet("bottleneck", [3, 4, 6, 3], features_per_frame, **kwargs)


def resnet101(features_per_frame: int, **kwargs) -> ResNet:
    return _resnet("bottleneck", [3, 4, 23, 3], features_per_frame, **kwargs)


def resnet221(features_per_frame: int, **kwargs) -> ResNet:
    return _resnet("bottleneck", [6, 16, 48, 3], features_per_frame, **kwargs)


def resnet293(features_per_frame: int, **kwargs) -> ResNet:
    return _resnet("bottleneck", [10, 20, 64, 3], features_per_frame, **kwargs)
