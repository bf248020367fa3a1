"""Projected gradient descent attacks under L-infinity, L2 and L1 budgets, for images in [0, 1].

PGD with a random start (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR 2018, arXiv:1706.06083): ``steps`` ascent steps
on the cross-entropy, each projected back onto the norm ball around the clean image and onto
the valid pixel range. The step direction is the steepest ascent direction of the norm: the
gradient's sign (L-infinity), the normalized gradient (L2), and for L1 the sparse direction
of SLIDE (Tramer & Boneh, "Adversarial Training and Robustness for Multiple Perturbations",
NeurIPS 2019, arXiv:1904.13000): the signs of the gradient's coordinates at or above its
``l1_quantile`` magnitude quantile, scaled to unit L1 norm. The L1 projection is the exact
Euclidean projection onto the L1 ball (Duchi, Shalev-Shwartz, Singer, Chandra, ICML 2008).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[Norm, ...] = ("linf", "l2", "l1")


def _flat_norm(x: torch.Tensor, p: float) -> torch.Tensor:
    return x.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (x.ndim - 1)))


def project_l1(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each row of ``delta`` onto the L1 ball of radius ``eps``
    (sort-based simplex projection of the magnitudes, signs kept)."""
    flat = delta.flatten(1)
    magnitude = flat.abs()
    outside = magnitude.sum(1) > eps
    if not outside.any():
        return delta
    mu, _ = magnitude[outside].sort(1, descending=True)
    cumulative = mu.cumsum(1)
    ranks = torch.arange(1, mu.shape[1] + 1, device=delta.device, dtype=delta.dtype)
    feasible = mu * ranks > cumulative - eps
    rho = feasible.to(torch.int64).cumsum(1).argmax(1)  # the last feasible index
    theta = (cumulative.gather(1, rho[:, None]) - eps) / (rho[:, None] + 1).to(delta.dtype)
    projected = flat.clone()
    projected[outside] = flat[outside].sign() * (magnitude[outside] - theta).clamp_min(0)
    return projected.view_as(delta)


def project(delta: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        return delta * (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
    return project_l1(delta, eps)


def ascent_direction(grad: torch.Tensor, norm: Norm, l1_quantile: float = 0.99,
                     point: torch.Tensor | None = None) -> torch.Tensor:
    """The unit-norm steepest ascent direction of ``norm`` for a gradient. For L1, with the
    current ``point``, coordinates the [0, 1] box blocks (at 0 with a negative gradient, at 1
    with a positive one) are left out before picking the largest, as SLIDE does: otherwise
    the sparse step would be spent on pixels that cannot move."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / _flat_norm(grad, 2).clamp_min(1e-12)
    if point is not None:
        blocked = ((point <= 0) & (grad < 0)) | ((point >= 1) & (grad > 0))
        grad = grad.masked_fill(blocked, 0)
    flat = grad.flatten(1)
    threshold = flat.abs().quantile(l1_quantile, dim=1, keepdim=True)
    sparse = flat.sign() * (flat.abs() >= threshold)
    sparse = sparse / sparse.abs().sum(1, keepdim=True).clamp_min(1)
    return sparse.view_as(grad)


def random_start(x: torch.Tensor, norm: Norm, eps: float, generator: torch.Generator | None
                 ) -> torch.Tensor:
    """A uniform draw in the L-infinity ball, or a Gaussian direction scaled to a uniform
    radius in [0, eps] (L2, L1), projected onto the ball."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
    direction = torch.randn(x.shape, generator=generator).to(x)
    p = 2 if norm == "l2" else 1
    radius = torch.rand(len(x), generator=generator).to(x).view(-1, *([1] * (x.ndim - 1)))
    return project(direction / _flat_norm(direction, p) * radius * eps, norm, eps)


def pgd(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
        norm: Norm, eps: float, steps: int, step_size: float | None = None,
        generator: torch.Generator | None = None, l1_quantile: float = 0.99) -> torch.Tensor:
    """Adversarial versions of ``x`` (labels ``y``) within the ``norm`` ball of radius
    ``eps``, pixels kept in [0, 1]. ``step_size`` defaults to ``2.5 eps / steps`` (Madry et
    al.'s choice). The model's mode is left as it is; parameters get no gradient."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    delta = random_start(x, norm, eps, generator)
    delta = ((x + delta).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + alpha * ascent_direction(grad, norm, l1_quantile, x + delta)
            delta = project(delta, norm, eps)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
