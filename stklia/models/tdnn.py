"""x-vector TDNN (Snyder et al., "X-vectors: robust DNN embeddings for speaker recognition", ICASSP 2018).

Five frame-level TDNN layers (1-D convolutions of contexts [t-2, t+2], {t-2, t, t+2}, {t-3, t, t+3},
{t}, {t}; 512, 512, 512, 512 and 1500 channels), statistics pooling (mean and standard deviation),
and two segment-level layers: segment6 (affine, ReLU, batch norm) and segment7, whose affine output
is the embedding the classifier head sees, as in WeSpeaker's XVEC (Kaldi extracts segment6's affine
output, segment7 then being part of its classifier). Every layer is affine, ReLU, then batch norm
without learned scale and offset, as Kaldi's relu-batchnorm layers.

Frame layers zero-pad in time, so every input frame has an output frame (Kaldi and WeSpeaker drop
the 7 frames at each end without full context): any length embeds, and padded batches mask like the
other models (stklia.models.masking). `frame_padding: valid` drops them as Kaldi and WeSpeaker do (the
models imported from WeSpeaker): an utterance then needs more frames than the layers' context, and the valid
length of a padded batch shrinks by each layer's context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stklia.core.errors import InputError
from stklia.models.generator import Generator
from stklia.models.masking import frame_mask, zero_padding
from stklia.models.pooling import build_pooling


class TDNNLayer(nn.Module):
    """1-D convolution over time, ReLU, batch norm: a TDNN layer.

    The padded frames of a batch are zeroed before a convolution wider than one frame (stklia.models.masking);
    a 1x1 convolution does not mix frames, so what it makes of them is zeroed or masked further on.
    `padding`: "zeros" ('same' length, zero padding), "reflect" ('same' length, each utterance reflected at its
    own ends, as SpeechBrain's convolutions pad) or "valid" (no padding: the output loses the kernel's context).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 affine: bool = True, padding: str = "zeros"):
        super().__init__()
        if padding not in PADDINGS:
            raise InputError("model.padding", f"'{padding}' is not one of {', '.join(PADDINGS)}")
        self.context = (kernel_size - 1) * dilation
        self.reflect = padding == "reflect" and self.context > 0
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                              padding=self.context // 2 if padding == "zeros" else 0)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm1d(out_channels, affine=affine)
        self.mixes_frames = kernel_size > 1 and padding == "zeros"

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.mixes_frames:
            x = zero_padding(x, lengths)
        elif self.reflect:
            x = reflect_padding(x, lengths, self.context // 2)
        return self.bn(self.relu(self.conv(x)))


PADDINGS = ("zeros", "reflect", "valid")


def reflect_padding(x: torch.Tensor, lengths: torch.Tensor | None, pad: int) -> torch.Tensor:
    """x (B, C, T) padded by `pad` frames at both ends by reflection (F.pad's "reflect"), each utterance of a
    padded batch at its own end: the frames after its length are replaced by its own last frames, mirrored."""
    if lengths is not None:
        frames = torch.arange(x.shape[-1], device=x.device)[None, :]
        last = (lengths[:, None] - 1).to(frames.dtype)
        mirrored = torch.where(frames <= last, frames, (2 * last - frames).clamp(min=0))
        x = x.gather(2, mirrored[:, None, :].expand(-1, x.shape[1], -1))
    return torch.nn.functional.pad(x, (pad, pad), mode="reflect")


def check_odd(key: str, kernel_sizes: Sequence[int]) -> None:
    """'Same' padding centres a kernel on its frame: it needs an odd width."""
    if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise InputError(key, f"{list(kernel_sizes)}: kernel sizes must be odd and positive (centred contexts)")


class XVector(Generator):
    """x-vector generator: features (B, T, F) -> embedding of size `emb_size`.

    `channels`, `kernel_sizes` and `dilations` describe the frame layers (the last one feeds the
    pooling); `segment_channels` is segment6's width; `frame_padding` "same" or "valid" (module docstring);
    `pooling_options`: models/pooling.py.
    """

    def __init__(
        self,
        features_per_frame: int,
        channels: Sequence[int] = (512, 512, 512, 512, 1500),
        kernel_sizes: Sequence[int] = (5, 3, 3, 1, 1),
        dilations: Sequence[int] = (1, 2, 3, 1, 1),
        segment_channels: int = 512,
        emb_size: int = 512,
        pooling: str = "statistical",
        frame_padding: str = "same",
        pooling_options: dict | None = None,
    ):
        super().__init__()
        if frame_padding not in ("same", "valid"):
            raise InputError("model.frame_padding", f"'{frame_padding}' is not 'same' or 'valid'")
        if not len(channels) == len(kernel_sizes) == len(dilations) or not channels:
            raise InputError("model.channels", f"{list(channels)}, kernel_sizes {list(kernel_sizes)} and dilations "
                             f"{list(dilations)} must describe the same number (at least one) of frame layers")
        check_odd("model.kernel_sizes", kernel_sizes)
        self.features_per_frame = features_per_frame
        self.emb_size = emb_size
        inputs = [features_per_frame, *channels[:-1]]
        padding = "zeros" if frame_padding == "same" else "valid"
        self.frame_layers = nn.ModuleList(
            TDNNLayer(i, o, k, d, affine=False, padding=padding)
            for i, o, k, d in zip(inputs, channels, kernel_sizes, dilations)
        )
        self.valid = frame_padding == "valid"
        if self.valid:
            self.min_frames = 1 + sum(layer.context for layer in self.frame_layers)
        self.pooling = build_pooling(pooling, channels[-1], pooling_options)
        self.segment6 = nn.Linear(self.pooling.out_channels, segment_channels)
        self.relu = nn.ReLU(inplace=True)
        self.bn6 = nn.BatchNorm1d(segment_channels, affine=False)
        self.segment7 = nn.Linear(segment_channels, emb_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, T, F) -> (B, emb_size); `lengths` (B,): valid frames of each padded utterance."""
        x = feats.transpose(1, 2)  # (B, F, T)
        for layer in self.frame_layers:
            x = layer(x, lengths)
            if self.valid and lengths is not None:
                lengths = lengths - layer.context
        stats = self.pooling(x, frame_mask(lengths, x.shape[-1]))
        return self.segment7(self.bn6(self.relu(self.segment6(stats))))
