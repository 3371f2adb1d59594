"""Classifier heads used while training a generator: embedding -> speaker logits.

`forward(emb, labels)` returns the logits whose cross-entropy is the training loss;
`forward(emb)` (no labels) returns plain logits (cosines for the angular heads) for evaluation.
Adding a head is one class here plus one yaml file under conf/head/.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Softmax(nn.Module):
    """Linear projection trained with plain cross-entropy."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(emb)


class CosineHead(nn.Module):
    """Base of the angular heads: logits are cosines between normalised embeddings and class weights.

    Cosines are computed in float32 even under autocast, and clamped away from +-1 so that
    the arccos / sqrt in the margin formulas keep finite gradients.
    """

    eps = 1e-7

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=emb.device.type, enabled=False):
            cos = F.linear(F.normalize(emb.float()), F.normalize(self.weight.float()))
        return cos.clamp(-1 + self.eps, 1 - self.eps)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(emb)
        return cos if labels is None else self.margin_logits(cos, labels)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ArcFace(CosineHead):
    """Additive angular margin (Deng et al., 2019): target logit s * cos(theta_y + m).

    Where theta_y + m would pass pi, cos(theta + m) stops decreasing; like InsightFace we then
    use cos(theta) - m * sin(m) (or, with easy_margin, no margin at all when cos(theta) < 0).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.2,
                 easy_margin: bool = False):
        super().__init__(in_features, num_classes)
        self.scale, self.margin, self.easy_margin = scale, margin, easy_margin

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.margin
        target = cos.gather(1, labels[:, None])
        sin = (1 - target**2).sqrt()
        with_margin = target * math.cos(m) - sin * math.sin(m)
        if self.easy_margin:
            with_margin = torch.where(target > 0, with_margin, target)
        else:
            with_margin = torch.where(target > math.cos(math.pi - m), with_margin, target - m * math.sin(m))
        return self.scale * cos.scatter(1, labels[:, None], with_margin)


class AdaCos(CosineHead):
    """AdaCos (Zhang et al., 2019): no margin, the scale s adapts to the batch.

    Fixed: s = sqrt(2) * log(C - 1). Dynamic: from that start, each training batch sets
    s = log(B_avg) / cos(min(pi/4, theta_med)), with B_avg the mean over the batch of
    sum_{j != y} exp(s * cos theta_j) and theta_med the median target angle.
    """

    def __init__(self, in_features: int, num_classes: int, dynamic: bool = True):
        super().__init__(in_features, num_classes)
        self.dynamic = dynamic
        self.register_buffer("scale", torch.tensor(math.sqrt(2) * math.log(max(num_classes - 1, 2))))

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.dynamic and self.training:
            with torch.no_grad():
                theta = cos.acos()
                is_target = F.one_hot(labels, cos.shape[1]).bool()
                b_avg = torch.where(is_target, 0.0, torch.exp(self.scale * cos)).sum(dim=1).mean()
                theta_med = theta[is_target].median()
                self.scale.copy_(b_avg.log() / torch.cos(theta_med.clamp(max=math.pi / 4)))
        return self.scale * cos
