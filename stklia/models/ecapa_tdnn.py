"""ECAPA-TDNN (Desplanques, Thienpondt and Demuynck, Interspeech 2020).

A TDNN layer (kernel 5), three SE-Res2Blocks (kernel 3, dilations 2, 3 and 4, Res2Net scale 8,
squeeze-excitation bottleneck 128), multi-layer feature aggregation (the three blocks' outputs
concatenated, then a 1x1 convolution + ReLU to 1536 channels), channel- and context-dependent
attentive statistics pooling + batch norm, and a fully connected layer + batch norm giving the
192-dimensional embedding (the paper's figure 2). Every convolution is followed by ReLU then batch
norm, as in the paper and WeSpeaker. C = 512 and C = 1024 channels give the paper's 6.2 M and
14.7 M parameters (docs/models.md).

The Res2Net convolution follows Gao et al. (2019): the input's first channel group passes through,
each other group is convolved after adding the previous group's output. Padded batches
(`forward(feats, lengths)`) embed each utterance as alone (stklia.models.masking): the frames
beyond each length are zeroed before every convolution wider than one frame, and the squeeze-
excitation means and the pooling see only the valid frames.

Options reproduce the ECAPA-TDNNs of other toolkits (their imported models, docs/pretrained.md): `padding`
"reflect" (SpeechBrain's convolutions pad by reflection, each utterance of a padded batch at its own end),
`mfa_bn` (a batch norm after the aggregation's ReLU, SpeechBrain's), `emb_bn` (WeSpeaker's and SpeechBrain's
have no batch norm after the embedding layer), `emb_mean` (an embedding mean subtracted at the end: SpeechBrain's
mean_var_norm_emb, a buffer the import fills) and `pooling_options` (models/pooling.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stklia.core.errors import InputError
from stklia.models.generator import Generator
from stklia.models.masking import frame_mask
from stklia.models.pooling import build_pooling, masked_mean
from stklia.models.tdnn import TDNNLayer


class Res2Conv(nn.Module):
    """Res2Net's hierarchical convolution: `scale` channel groups, group i convolved with group i-1's output."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, padding: str = "zeros"):
        super().__init__()
        self.width = channels // scale
        self.convs = nn.ModuleList(TDNNLayer(self.width, self.width, kernel_size, dilation, padding=padding)
                                   for _ in range(scale - 1))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        groups = torch.split(x, self.width, dim=1)
        out = [groups[0]]
        for i, conv in enumerate(self.convs):
            out.append(conv(groups[1] if i == 0 else groups[i + 1] + out[-1], lengths))
        return torch.cat(out, dim=1)


class SqueezeExcitation(nn.Module):
    """Channel gates sigmoid(W2 relu(W1 mean_t(x))) from the mean over the valid frames (Hu et al., 2018)."""

    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(channels, bottleneck)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        mean = masked_mean(x, frame_mask(lengths, x.shape[-1])).to(x.dtype)
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(mean))))[..., None]


class SERes2Block(nn.Module):
    """1x1 TDNN layer, dilated Res2Net convolution, 1x1 TDNN layer, squeeze-excitation, residual connection."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_channels: int,
                 padding: str = "zeros"):
        super().__init__()
        self.tdnn1 = TDNNLayer(channels, channels)
        self.res2conv = Res2Conv(channels, kernel_size, dilation, scale, padding)
        self.tdnn2 = TDNNLayer(channels, channels)
        self.se = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out = self.res2conv(self.tdnn1(x), lengths)
        return x + self.se(self.tdnn2(out), lengths)


class ECAPATDNN(Generator):
    """ECAPA-TDNN generator: features (B, T, F) -> embedding of size `emb_size`.

    `channels` is the paper's C; `dilations` has one entry per SE-Res2Block; `mfa_channels` is the
    width of the aggregation layer the pooling sees (1536 in the paper for both C).
    """

    def __init__(
        self,
        features_per_frame: int,
        channels: int = 512,
        dilations: Sequence[int] = (2, 3, 4),
        scale: int = 8,
        se_channels: int = 128,
        mfa_channels: int = 1536,
        emb_size: int = 192,
        pooling: str = "channel_context_attentive",
        padding: str = "zeros",
        mfa_bn: bool = False,
        emb_bn: bool = True,
        emb_mean: bool = False,
        pooling_options: dict | None = None,
    ):
        super().__init__()
        if scale < 2:
            raise InputError("model.scale", f"the Res2Net scale must be at least 2, not {scale}")
        if channels % scale:
            raise InputError("model.channels", f"{channels} channels are not divisible by the Res2Net scale {scale}")
        if not dilations:
            raise InputError("model.dilations", "give one dilation per SE-Res2Block (at least one)")
        self.features_per_frame = features_per_frame
        self.emb_size = emb_size
        if padding not in ("zeros", "reflect"):
            raise InputError("model.padding", f"'{padding}' is not 'zeros' or 'reflect'")
        self.layer1 = TDNNLayer(features_per_frame, channels, kernel_size=5, padding=padding)
        if padding == "reflect":  # reflection needs more frames than it pads (up to 4, dilation 4)
            self.min_frames = 1 + max([2, *dilations])
        self.blocks = nn.ModuleList(SERes2Block(channels, 3, d, scale, se_channels, padding) for d in dilations)
        self.mfa = nn.Conv1d(channels * len(dilations), mfa_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.mfa_bn = nn.BatchNorm1d(mfa_channels) if mfa_bn else nn.Identity()
        self.pooling = build_pooling(pooling, mfa_channels, pooling_options)
        self.pooling_bn = nn.BatchNorm1d(self.pooling.out_channels)
        self.fc = nn.Linear(self.pooling.out_channels, emb_size)
        self.bn = nn.BatchNorm1d(emb_size) if emb_bn else nn.Identity()
        self.register_buffer("emb_mean", torch.zeros(emb_size) if emb_mean else None)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, T, F) -> (B, emb_size); `lengths` (B,): valid frames of each padded utterance."""
        x = self.layer1(feats.transpose(1, 2), lengths)  # (B, C, T)
        outputs = []
        for block in self.blocks:
            x = block(x, lengths)
            outputs.append(x)
        x = self.mfa_bn(self.relu(self.mfa(torch.cat(outputs, dim=1))))
        pooled = self.pooling(x, frame_mask(lengths, x.shape[-1]))
        emb = self.bn(self.fc(self.pooling_bn(pooled)))
        if self.emb_mean is not None:
            emb = emb - self.emb_mean
        return emb

