"""Padded batches: the valid frames of each utterance, followed through the layers of every model.

A generator's `forward(feats, lengths)` embeds utterances of different lengths padded to one
tensor exactly as each would be embedded alone. Alone, every convolution wider than one frame
sees zeros beyond the utterance's end (its zero padding); in a batch it sees whatever the
previous layer made of the padded frames (batch norm adds its bias there). So the models zero the
padded frames again before every such convolution, follow the valid length through each time
stride (L -> ceil(L / stride)), and average over time (squeeze-excitation, context, pooling) with
a mask of the valid frames. This holds in eval mode; in training mode batch norm statistics would
include the padded frames (training crops all have one length and no `lengths`).
"""

from __future__ import annotations

import torch


def strided_length(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    """Valid frames after a convolution of this time stride with 'same' padding (kernel k, padding (k - 1) // 2)."""
    return (lengths - 1) // stride + 1


def frame_mask(lengths: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """(batch, frames) bool mask of the valid frames; None (all valid) without lengths."""
    if lengths is None:
        return None
    return torch.arange(frames, device=lengths.device) < lengths[:, None]


def zero_padding_(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """x (B, C, T) or (B, C, T, F), its frames at and beyond each utterance's length set to zero in place.

    On the CPU one slice per utterance is cleared: length-sorted batches pad little, and in channels-last
    each slice is one contiguous block, so this costs far less than a masked pass over the whole batch.
    Elsewhere one masked fill: reading the lengths would wait for the device.
    """
    if lengths is None:
        return x
    if x.device.type == "cpu":
        for i in range(x.shape[0]):
            x[i, :, int(lengths[i]):] = 0.0
        return x
    padded = torch.arange(x.shape[2], device=lengths.device) >= lengths[:, None]
    return x.masked_fill_(padded[:, None, :] if x.dim() == 3 else padded[:, None, :, None], 0.0)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """`zero_padding_` on a copy (where autograd needs the input as it was)."""
    return x if lengths is None else zero_padding_(x.clone(), lengths)
