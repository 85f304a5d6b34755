"""Pure functions of the CDRED reward (paper §3.2-3.3, Eq. 3 and 5-9; docs/design.md §4).

Every function here takes network *outputs* only, so the formulas can be checked on their own:

* ``target_outs`` has shape ``(K, ..., p)``: the K frozen random target networks f_k evaluated at the
  same inputs (K >= 2);
* a predictor output ``f`` (expert f_E or behavioural f_B) has shape ``(..., p)``;
* reductions run over the last (embedding) axis ``p``; results have shape ``(...)``.

Statistics over the target ensemble (Eq. 7 and Lemma 1), elementwise over p::

    mu = mean_k f_k                 B2 = mean_k f_k^2          B2 - mu^2 = mean_k (f_k - mu)^2

Bias/bonus term (Eq. 6 with the estimator of sqrt(1/n) of Eq. 9)::

    b(f) = alpha * sum_d (f_d - mu_d)^2
           + (1 - alpha) * mean_d sqrt(|f_d^2 - mu_d^2| / max(B2_d - mu_d^2, eps))

Reward (Eq. 5)::

    R = zeta * g(-sigma * b(f_E)) - (1 - zeta) * g(-sigma * b(f_B))

Resolutions of what the paper leaves open (as the authors' released code does, unless noted):

* the absolute value inside the square root of Eq. 9 (the released code takes it: f^2 - mu^2 is
  negative whenever |f| < |mu|, and Lemma 1's y is only non-negative in expectation);
* the denominator guard ``max(B2 - mu^2, eps)`` (NOT in the released code): a target dimension whose K
  outputs coincide at some input would otherwise divide by zero. ``B2 - mu^2`` is computed as the
  mathematically identical ``mean_k (f_k - mu)^2``, which does not cancel catastrophically in float32;
* the first term of Eq. 6 is a *sum* over the p dimensions (squared L2 norm), the second a *mean*.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

GLike = Union[str, Callable[[Tensor], Tensor]]

#: Default lower bound on the target-ensemble variance B2 - mu^2 (the denominator of Eq. 9 / Lemma 1).
DEFAULT_EPS = 1e-6


def resolve_g(g: GLike) -> Callable[[Tensor], Tensor]:
    """Return the monotone map g of Eq. 5: ``"identity"`` (paper default, App. A.2), ``"exp"``
    (the ablation of App. D.2 / Fig. 11) or any callable ``Tensor -> Tensor``."""
    if callable(g):
        return g
    if g == "identity":
        return lambda t: t
    if g == "exp":
        return torch.exp
    raise ValueError(f"g must be 'identity', 'exp' or a callable, got {g!r}")


def _check_shapes(f: Tensor, target_outs: Tensor, name: str) -> None:
    if target_outs.dim() < 2:
        raise ValueError(f"target_outs must have shape (K, ..., p), got {tuple(target_outs.shape)}")
    if target_outs.shape[0] < 2:
        raise ValueError(f"need at least K=2 target networks for B2 - mu^2, got K={target_outs.shape[0]}")
    if tuple(f.shape) != tuple(target_outs.shape[1:]):
        raise ValueError(
            f"{name} has shape {tuple(f.shape)} but target_outs {tuple(target_outs.shape)} needs "
            f"{tuple(target_outs.shape[1:])}"
        )


def target_moments(target_outs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of the random-target ensemble (Eq. 7 and Lemma 1), elementwise over p.

    Returns ``(mu, B2, var)`` each of shape ``(..., p)`` with ``mu = mean_k f_k``,
    ``B2 = mean_k f_k^2`` and ``var = B2 - mu^2`` computed as ``mean_k (f_k - mu)^2`` (same value,
    no cancellation).
    """
    mu = target_outs.mean(dim=0)
    b2 = target_outs.square().mean(dim=0)
    var = (target_outs - mu).square().mean(dim=0)
    return mu, b2, var


def lemma1_statistic(f: Tensor, target_outs: Tensor, *, eps: float = DEFAULT_EPS) -> Tensor:
    """Lemma 1's statistic ``y = (f^2 - mu^2) / (B2 - mu^2)``, elementwise, shape ``(..., p)``.

    For the optimal predictor f* of Eq. 8 (the mean of the n target draws c_i seen at a point),
    y is an unbiased estimator of 1/n (paper App. E). Signed (no absolute value), so that its average
    is the unbiased estimate; the denominator is guarded as ``max(B2 - mu^2, eps)``.
    """
    _check_shapes(f, target_outs, "f")
    mu, _, var = target_moments(target_outs)
    return (f.square() - mu.square()) / var.clamp_min(eps)


def bonus(f: Tensor, target_outs: Tensor, *, alpha: float = 0.9, eps: float = DEFAULT_EPS) -> Tensor:
    """The bias term b(z, a, f) of Eq. 6 with the sqrt(1/n) estimator of Eq. 9; shape ``(...)``.

    ``alpha * ||f - mu||_2^2 + (1 - alpha) * mean_d sqrt(|f_d^2 - mu_d^2| / max(B2_d - mu_d^2, eps))``.
    Small where the predictor has fitted the ensemble mean (data seen often), large elsewhere.
    """
    _check_shapes(f, target_outs, "f")
    mu, _, var = target_moments(target_outs)
    dist = (f - mu).square().sum(dim=-1)
    eps_term = torch.sqrt((f.square() - mu.square()).abs() / var.clamp_min(eps)).mean(dim=-1)
    return alpha * dist + (1.0 - alpha) * eps_term


def reward_from_outputs(
    expert_out: Tensor,
    behavioral_out: Tensor,
    target_outs: Tensor,
    *,
    alpha: float = 0.9,
    zeta: float = 0.8,
    sigma: float = 1.0,
    g: GLike = "identity",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """CDRED reward of Eq. 5 from the three sets of network outputs.

    Args:
        expert_out: expert predictor f_E (paper's f_phi) outputs, shape ``(B, p)`` (or ``(..., p)``).
        behavioral_out: behavioural predictor f_B (paper's f_psi) outputs, same shape.
        target_outs: the K random target outputs, shape ``(K, B, p)`` (or ``(K, ..., p)``).
        alpha: weight of the L2 term against the sqrt(1/n) estimator in b (Eq. 6); paper 0.9.
        zeta: weight of the expert term against the behavioural term (Eq. 5); paper 0.8.
        sigma: decay rate inside g (Eq. 5); paper 1.
        g: monotone map, ``"identity"`` (paper) or ``"exp"`` (ablation), or a callable.
        eps: lower bound on B2 - mu^2 in Eq. 9.

    Returns:
        ``R = zeta * g(-sigma * b(f_E)) - (1 - zeta) * g(-sigma * b(f_B))``, shape ``(B,)``.
    """
    _check_shapes(behavioral_out, target_outs, "behavioral_out")
    gf = resolve_g(g)
    b_e = bonus(expert_out, target_outs, alpha=alpha, eps=eps)
    b_b = bonus(behavioral_out, target_outs, alpha=alpha, eps=eps)
    return zeta * gf(-sigma * b_e) - (1.0 - zeta) * gf(-sigma * b_b)


def red_loss(expert_out: Tensor, target_outs: Tensor, *, centered: bool = True) -> Tensor:
    """L_RED of Eq. 3 for one predictor shared across the K targets (uncoupled RED); shape ``(...)``.

    Eq. 3 pairs K predictors with K targets. With the single expert predictor trained as in Eq. 4
    (one uniformly drawn target per sample), ``mean_k ||f - f_k||^2 = ||f - mu||^2 + sum_d (B2_d - mu_d^2)``:
    the second term is the ensemble's own spread, which no predictor can remove.

    * ``centered=True`` (default): ``||f - mu||_2^2``, the part the predictor controls; it is 0 on the
      expert support, as Eq. 3 is for RED's K fitted pairs. Then RED equals CDRED with alpha = 1,
      zeta = 1 and g = exp.
    * ``centered=False``: the literal ``mean_k ||f - f_k||_2^2`` (floored by the ensemble spread).
    """
    _check_shapes(expert_out, target_outs, "expert_out")
    if centered:
        mu = target_outs.mean(dim=0)
        return (expert_out - mu).square().sum(dim=-1)
    return (expert_out.unsqueeze(0) - target_outs).square().sum(dim=-1).mean(dim=0)


def red_reward(
    expert_out: Tensor, target_outs: Tensor, *, sigma: float = 1.0, centered: bool = True
) -> Tensor:
    """Uncoupled RED reward ``r = exp(-sigma * L_RED)`` (paper §3.1, Eq. 3); shape ``(...)``."""
    return torch.exp(-sigma * red_loss(expert_out, target_outs, centered=centered))
