"""Classifier heads used while training a generator: embedding -> speaker logits.

`forward(emb, labels)` returns the logits whose cross-entropy is the training loss;
`forward(emb)` (no labels) returns plain logits (cosines for the angular heads) for evaluation.
Schedules that follow training progress (margin warm-up, SphereFace's lambda) are pure functions
of the optimizer step, which the trainer passes to `set_step` before each forward pass: a resumed
run thus needs nothing saved beyond the step. Adding a head is one class here plus one yaml file
under conf/head/. The formulas and their sources are in docs/heads.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """Base of every head: it knows the optimizer step that its schedules (if any) depend on."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0

    def set_step(self, step: int) -> None:
        """Set the number of optimizer steps taken so far (0 for the first batch)."""
        self.step = step


class Softmax(Head):
    """Linear projection trained with plain cross-entropy."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(emb)


class CosineHead(Head):
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


@dataclass(frozen=True)
class Warmup:
    """Fraction of the margin in force: 0 up to step `start`, rising linearly to 1 at step `end`."""

    start: int = 0
    end: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"margin warm-up needs 0 <= start <= end, got start={self.start} end={self.end}")

    def factor(self, step: int) -> float:
        if step >= self.end:
            return 1.0
        if step <= self.start:
            return 0.0
        return (step - self.start) / (self.end - self.start)


class MarginHead(CosineHead):
    """Base of the additive-margin heads: scale s and margin m, m optionally warmed up from 0.

    margin_warmup: {start, end} optimizer steps between which the margin rises linearly from 0
    to m (the default {start: 0, end: 0} applies the full margin from the first step).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float,
                 margin_warmup: Mapping[str, int] | None = None):
        super().__init__(in_features, num_classes)
        self.scale, self.margin = scale, margin
        self.warmup = Warmup(**(margin_warmup or {}))

    @property
    def current_margin(self) -> float:
        return self.margin * self.warmup.factor(self.step)


class AMSoftmax(MarginHead):
    """Additive margin softmax / CosFace (Wang et al., 2018): target logit s * (cos(theta_y) - m)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.4,
                 margin_warmup: Mapping[str, int] | None = None):
        super().__init__(in_features, num_classes, scale, margin, margin_warmup)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = cos.gather(1, labels[:, None])
        return self.scale * cos.scatter(1, labels[:, None], target - self.current_margin)


class ArcFace(MarginHead):
    """Additive angular margin (Deng et al., 2019): target logit s * cos(theta_y + m).

    Where theta_y + m would pass pi, cos(theta + m) stops decreasing; like InsightFace we then
    use cos(theta) - m * sin(m) (or, with easy_margin, no margin at all when cos(theta) < 0).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.2,
                 easy_margin: bool = False, margin_warmup: Mapping[str, int] | None = None):
        super().__init__(in_features, num_classes, scale, margin, margin_warmup)
        self.easy_margin = easy_margin

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.current_margin
        target = cos.gather(1, labels[:, None])
        sin = (1 - target**2).sqrt()
        with_margin = target * math.cos(m) - sin * math.sin(m)
        if self.easy_margin:
            with_margin = torch.where(target > 0, with_margin, target)
        else:
            with_margin = torch.where(target > math.cos(math.pi - m), with_margin, target - m * math.sin(m))
        return self.scale * cos.scatter(1, labels[:, None], with_margin)


class SubcenterArcFace(ArcFace):
    """Sub-center ArcFace (Deng et al., 2020): K weight vectors per class, cos(theta_j) = max over them.

    A noisy sample can sit near a non-dominant sub-centre instead of pulling the dominant one;
    the ArcFace margin then applies to the class cosine. Weight row c * K + k is sub-centre k of class c.
    """

    def __init__(self, in_features: int, num_classes: int, subcenters: int = 3, scale: float = 30.0,
                 margin: float = 0.2, easy_margin: bool = False, margin_warmup: Mapping[str, int] | None = None):
        super().__init__(in_features, num_classes * subcenters, scale, margin, easy_margin, margin_warmup)
        self.subcenters = subcenters

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return super().cosine(emb).unflatten(1, (-1, self.subcenters)).amax(dim=2)


class SphereFace(CosineHead):
    """A-softmax (Liu et al., 2017): multiplicative angular margin, normalised weights, raw features.

    Target logit ||x|| * psi(theta_y) with psi(theta) = (-1)^k cos(m theta) - 2k for theta in
    [k pi/m, (k+1) pi/m], other logits ||x|| * cos(theta_j). As in the authors' Caffe layer, the
    target is softened into ||x|| * (lambda cos(theta_y) + psi(theta_y)) / (1 + lambda) with
    lambda = max(lambda_min, lambda_base * (1 + lambda_gamma * step) ** -lambda_power), annealed
    from nearly plain softmax (defaults: the authors' 1000, 0.12, 1, 5 with m = 4).
    """

    def __init__(self, in_features: int, num_classes: int, margin: int = 4, lambda_base: float = 1000.0,
                 lambda_gamma: float = 0.12, lambda_power: float = 1.0, lambda_min: float = 5.0):
        super().__init__(in_features, num_classes)
        if margin < 1 or margin != int(margin):
            raise ValueError(f"SphereFace's margin is a positive integer, got {margin}")
        self.margin = int(margin)
        self.lambda_base, self.lambda_gamma, self.lambda_power = lambda_base, lambda_gamma, lambda_power
        self.lambda_min = lambda_min

    @property
    def current_lambda(self) -> float:
        return max(self.lambda_min, self.lambda_base * (1 + self.lambda_gamma * self.step) ** -self.lambda_power)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().forward(emb, labels)
        if labels is None:
            return logits
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return emb.float().norm(dim=1, keepdim=True) * logits

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m, lam = self.margin, self.current_lambda
        target = cos.gather(1, labels[:, None])
        theta = target.acos()
        k = (m * theta / math.pi).floor().clamp(max=m - 1)
        psi = (1 - 2 * (k % 2)) * torch.cos(m * theta) - 2 * k
        return cos.scatter(1, labels[:, None], (lam * target + psi) / (1 + lam))


class AdaCos(CosineHead):
    """AdaCos (Zhang et al., 2019): no margin, the scale s adapts to the batch.

    Fixed: s = sqrt(2) * log(C - 1). Dynamic: from that start, each training batch t sets
    s_t = log(B_avg) / cos(min(pi/4, theta_med)), with B_avg the mean over the batch of
    sum_{j != y} exp(s_{t-1} cos theta_j) and theta_med the median target angle, then uses s_t.
    s is a buffer, saved with the head's weights. With C = 2, log(C - 1) = 0: we use log(2) instead.
    """

    def __init__(self, in_features: int, num_classes: int, dynamic: bool = True):
        super().__init__(in_features, num_classes)
        self.dynamic = dynamic
        self.register_buffer("scale", torch.tensor(math.sqrt(2) * math.log(max(num_classes - 1, 2))))

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.dynamic and self.training:
            with torch.no_grad():
                is_target = F.one_hot(labels, cos.shape[1]).bool()
                others = (self.scale * cos).masked_fill(is_target, -math.inf)
                log_b_avg = others.flatten().logsumexp(dim=0) - math.log(len(labels))
                theta_med = cos.gather(1, labels[:, None]).acos().quantile(0.5)
                self.scale.copy_(log_b_avg / torch.cos(theta_med.clamp(max=math.pi / 4)))
        return self.scale * cos
