"""Size and cost of a generator, as papers report them: parameters, and FLOPs of one forward pass.

FLOPs are counted by torch.utils.flop_counter (matrix products and convolutions, 2 per multiply-
accumulate; thop, which WeSpeaker's tables use, counts multiply-accumulates). A model built on the
meta device is counted without memory or computation: `with torch.device("meta"): model = ...`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, frames: int = 200) -> int:
    """FLOPs of embedding one utterance of `frames` frames (200: 2 s at a 10 ms shift), in eval mode."""
    parameter = next(model.parameters())
    feats = torch.zeros(1, frames, model.features_per_frame, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(feats)
    model.train(was_training)
    return counter.get_total_flops()
