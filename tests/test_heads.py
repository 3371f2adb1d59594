"""Each classifier head against its paper's formula, written here again in float64 numpy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from stklia.training.heads import AdaCos, AMSoftmax, ArcFace, Head, Softmax, SphereFace, SubcenterArcFace

D, C = 12, 7
CLAMP = 1 - 1e-7  # the heads clamp cosines to [-CLAMP, CLAMP]
CONF = Path(__file__).resolve().parents[1] / "stklia" / "conf" / "head"


# ---- the formulas, in float64 numpy ----------------------------------------------------------

def np_cosines(emb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    return np.clip(e @ w.T, -CLAMP, CLAMP)


def with_target(cos: np.ndarray, labels: np.ndarray, target_fn) -> np.ndarray:
    """Logits equal to cos except the target column of each row, replaced by target_fn(cos_y)."""
    out = cos.copy()
    for i, y in enumerate(labels):
        out[i, y] = target_fn(cos[i, y])
    return out


def np_arcface_target(c: float, m: float, easy: bool = False) -> float:
    theta = math.acos(c)
    if easy:
        return math.cos(theta + m) if c > 0 else c
    return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)


def np_psi(theta: float, m: int) -> float:
    """(-1)^k cos(m theta) - 2k on the k-th interval [k pi/m, (k+1) pi/m]."""
    k = next(k for k in range(m) if k * math.pi / m <= theta <= (k + 1) * math.pi / m)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def np_weight(head: torch.nn.Module) -> np.ndarray:
    return head.weight.detach().double().numpy()


def reference(head: torch.nn.Module, emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The training logits of `head` computed from the papers' formulas."""
    if isinstance(head, Softmax):
        return emb @ head.fc.weight.detach().double().numpy().T + head.fc.bias.detach().double().numpy()
    if isinstance(head, SubcenterArcFace):
        cos = np_cosines(emb, np_weight(head)).reshape(len(emb), -1, head.subcenters).max(axis=2)
    else:
        cos = np_cosines(emb, np_weight(head))
    if isinstance(head, AMSoftmax):
        return head.scale * with_target(cos, labels, lambda c: c - head.current_margin)
    if isinstance(head, ArcFace):  # and SubcenterArcFace
        return head.scale * with_target(cos, labels, lambda c: np_arcface_target(c, head.current_margin,
                                                                                 head.easy_margin))
    if isinstance(head, SphereFace):
        lam = head.current_lambda
        mixed = with_target(cos, labels, lambda c: (lam * c + np_psi(math.acos(c), head.margin)) / (1 + lam))
        return np.linalg.norm(emb, axis=1, keepdims=True) * mixed
    if isinstance(head, AdaCos):
        return float(head.scale) * cos
    raise AssertionError(type(head))


# ---- inputs ----------------------------------------------------------------------------------

def at_angle(w: np.ndarray, theta: float, rng: np.random.Generator, norm: float = 3.0) -> np.ndarray:
    """A vector at exactly angle theta from w."""
    w = w / np.linalg.norm(w)
    u = rng.normal(size=w.shape)
    u -= (u @ w) * w
    u /= np.linalg.norm(u)
    return norm * (math.cos(theta) * w + math.sin(theta) * u)


def edge_batch(head: torch.nn.Module, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Target angles 0, pi, near 0, near pi (theta + m > pi for the margins used), one per SphereFace
    interval, at the first and the last class."""
    if isinstance(head, Softmax):
        weight = head.fc.weight.detach().double().numpy()
    else:  # sub-centre heads: angles to the first sub-centre of each class
        weight = np_weight(head)[:: getattr(head, "subcenters", 1)]
    angles = [0.0, math.pi, 1e-3, math.pi - 1e-3, math.pi - 0.05, 0.3, 1.0, 2.0, 2.8]
    labels = np.array([0, C - 1, C - 1, 0, C - 1, 0, C - 1, 0, C - 1])
    emb = np.stack([at_angle(weight[y], a, rng, norm=1.0 + i) for i, (a, y) in enumerate(zip(angles, labels))])
    return emb, labels


HEADS = {
    "softmax": lambda: Softmax(D, C),
    "amsoftmax": lambda: AMSoftmax(D, C),
    "arcface": lambda: ArcFace(D, C),
    "arcface_big_margin": lambda: ArcFace(D, C, margin=0.5),
    "arcface_easy": lambda: ArcFace(D, C, easy_margin=True),
    "subcenter_arcface": lambda: SubcenterArcFace(D, C, subcenters=3),
    "sphereface": lambda: SphereFace(D, C),
    "sphereface_m3": lambda: SphereFace(D, C, margin=3),
    "adacos_fixed": lambda: AdaCos(D, C, dynamic=False),
}


def make_head(name: str, step: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    head = HEADS[name]()
    head.set_step(step)
    return head


# ---- logits and loss -------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0, 3000])
@pytest.mark.parametrize("name", HEADS)
def test_logits_and_loss_match_the_formula_at_random_inputs(name: str, step: int) -> None:
    head = make_head(name, step)
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(16, D)) * rng.uniform(0.5, 5, size=(16, 1))
    labels = rng.integers(0, C, size=16)
    labels[:2] = [0, C - 1]
    logits = head(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels))
    expected = reference(head, emb, labels)
    np.testing.assert_allclose(logits.detach().double().numpy(), expected, rtol=1e-5, atol=1e-4)
    loss = F.cross_entropy(logits, torch.tensor(labels))
    assert loss.item() == pytest.approx(np_cross_entropy(expected, labels), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_logits_match_the_formula_at_the_edges(name: str) -> None:
    head = make_head(name, step=100)
    emb, labels = edge_batch(head, np.random.default_rng(2))
    logits = head(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels)).detach().double().numpy()
    # float32 cosines at +-CLAMP give sqrt(1 - cos^2) to ~5e-5: times the scale 30, 2e-3
    np.testing.assert_allclose(logits, reference(head, emb, labels), rtol=1e-5, atol=3e-3)


def test_arcface_past_pi_uses_the_monotonic_fallback() -> None:
    head = ArcFace(D, C, scale=1.0, margin=0.5)
    rng = np.random.default_rng(3)
    w = np_weight(head)[2]
    theta = math.pi - 0.2  # theta + m > pi
    emb = torch.tensor(at_angle(w, theta, rng)[None], dtype=torch.float32)
    target = head(emb, torch.tensor([2]))[0, 2].item()
    assert target == pytest.approx(math.cos(theta) - 0.5 * math.sin(0.5), abs=1e-5)
    assert target < math.cos(theta)  # still a penalty, where cos(theta + m) would be a bonus


@pytest.mark.parametrize("name", HEADS)
def test_evaluation_logits_are_plain_cosines(name: str) -> None:
    head = make_head(name)
    emb = np.random.default_rng(4).normal(size=(5, D))
    logits = head(torch.tensor(emb, dtype=torch.float32)).detach().double().numpy()
    if isinstance(head, Softmax):
        expected = emb @ head.fc.weight.detach().double().numpy().T + head.fc.bias.detach().double().numpy()
    elif isinstance(head, SubcenterArcFace):
        expected = np_cosines(emb, np_weight(head)).reshape(5, C, 3).max(axis=2)
    else:
        expected = np_cosines(emb, np_weight(head))
    assert logits.shape == (5, C)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


# ---- gradients -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", HEADS)
def test_gradients_are_finite_at_the_edges(name: str) -> None:
    head = make_head(name)
    emb, labels = edge_batch(head, np.random.default_rng(5))
    emb = torch.tensor(emb, dtype=torch.float32, requires_grad=True)
    F.cross_entropy(head(emb, torch.tensor(labels)), torch.tensor(labels)).backward()
    assert torch.isfinite(emb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", HEADS)
def test_gradients_are_finite_under_autocast(name: str, dtype: torch.dtype) -> None:
    head = make_head(name)
    emb, labels = edge_batch(head, np.random.default_rng(6))
    torch.manual_seed(0)
    layer = torch.nn.Linear(D, D)  # an embedding layer that autocast runs in half precision
    emb = torch.tensor(emb, dtype=torch.float32, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        half = layer(emb)
        assert half.dtype == dtype
        logits = head(torch.cat([half, emb.to(dtype)]), torch.tensor(np.concatenate([labels, labels])))
        loss = F.cross_entropy(logits, torch.tensor(np.concatenate([labels, labels])))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in [*head.parameters(), *layer.parameters()])


# ---- schedules -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [AMSoftmax, ArcFace, SubcenterArcFace])
def test_margin_warmup_rises_linearly(cls: type) -> None:
    head = cls(D, C, margin=0.4, margin_warmup={"start": 100, "end": 300})
    for step, fraction in [(0, 0.0), (100, 0.0), (150, 0.25), (200, 0.5), (299, 0.995), (300, 1.0), (5000, 1.0)]:
        head.set_step(step)
        assert head.current_margin == pytest.approx(0.4 * fraction)
    head.set_step(200)  # the logits use the warmed-up margin
    rng = np.random.default_rng(7)
    emb, labels = rng.normal(size=(6, D)), rng.integers(0, C, size=6)
    logits = head(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels)).detach().double().numpy()
    np.testing.assert_allclose(logits, reference(head, emb, labels), rtol=1e-5, atol=1e-4)


def test_no_warmup_by_default_and_bad_warmup_refused() -> None:
    assert ArcFace(D, C, margin=0.2).current_margin == 0.2
    assert AMSoftmax(D, C, margin_warmup={"start": 0, "end": 0}).current_margin == 0.4
    with pytest.raises(ValueError, match="start <= end"):
        ArcFace(D, C, margin_warmup={"start": 10, "end": 5})
    with pytest.raises(TypeError):
        ArcFace(D, C, margin_warmup={"begin": 10})


def test_sphereface_lambda_annealing() -> None:
    head = SphereFace(D, C)
    # max(5, 1000 * (1 + 0.12 step)^-1): 1000 at the start, 1000/13 at step 100, floored at 5 from step 1659
    for step, lam in [(0, 1000.0), (100, 1000 / 13), (1000, 1000 / 121), (1658, 1000 / 199.96), (1659, 5.0),
                      (10**6, 5.0)]:
        head.set_step(step)
        assert head.current_lambda == pytest.approx(lam)
    head = SphereFace(D, C, lambda_base=100.0, lambda_gamma=0.5, lambda_power=2.0, lambda_min=0.0)
    head.set_step(8)
    assert head.current_lambda == pytest.approx(100 / 25)


def test_adacos_dynamic_scale_follows_the_paper() -> None:
    torch.manual_seed(0)
    head = AdaCos(D, C, dynamic=True)
    weight = np_weight(head)
    s = math.sqrt(2) * math.log(C - 1)
    assert float(head.scale) == pytest.approx(s)
    rng = np.random.default_rng(8)
    for batch in range(4):  # random embeddings (theta_med > pi/4), then ones near their class (theta_med < pi/4)
        labels = rng.integers(0, C, size=10 + batch)
        emb = (rng.normal(size=(len(labels), D)) if batch == 0 else
               np.stack([at_angle(weight[y], rng.uniform(0.1, 1.2), rng) for y in labels]))
        logits = head(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels)).detach().double().numpy()
        cos = np_cosines(emb, weight)
        non_target = np.ones_like(cos, dtype=bool)
        non_target[np.arange(len(labels)), labels] = False
        b_avg = np.exp(s * cos)[non_target].sum() / len(labels)
        theta_med = np.median(np.arccos(cos[np.arange(len(labels)), labels]))
        assert (theta_med > math.pi / 4) == (batch == 0)
        s = math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))
        assert float(head.scale) == pytest.approx(s, rel=1e-5)
        np.testing.assert_allclose(logits, s * cos, rtol=1e-5, atol=1e-5)
    head.eval()  # evaluation does not move the scale
    head(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels))
    assert float(head.scale) == pytest.approx(s, rel=1e-5)


def test_adacos_fixed_scale_does_not_move() -> None:
    head = AdaCos(D, 100, dynamic=False)
    head(torch.randn(8, D), torch.randint(0, 100, (8,)))
    assert float(head.scale) == pytest.approx(math.sqrt(2) * math.log(99))


def test_every_head_config_builds_its_head() -> None:
    names = {p.stem for p in CONF.glob("*.yaml")}
    assert names == {"softmax", "amsoftmax", "arcface", "sphereface", "adacos", "subcenter_arcface"}
    for name in names:
        head = instantiate(OmegaConf.load(CONF / f"{name}.yaml"), in_features=D, num_classes=C)
        assert isinstance(head, Head)
        head.set_step(10)
        labels = torch.tensor([0, C - 1])
        assert head(torch.randn(2, D), labels).shape == (2, C)
