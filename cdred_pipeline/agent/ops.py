"""Small tensor functions of TD-MPC2: symlog/symexp, two-hot regression, soft cross-entropy,
the squashed Gaussian policy's log-probability (paper App. A; Hansen et al., 2023, §3 and App. A).

Two-hot regression: a scalar y is represented by a distribution over ``num_bins`` evenly spaced bins
b_i in [vmin, vmax] in *symlog* space; symlog(y) is split between the two nearest bins in proportion
to its distance from each. Decoding is the expectation under softmax(logits), mapped back by symexp.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|)."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """sign(x) * (exp(|x|) - 1), the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


def bin_centers(num_bins: int, vmin: float, vmax: float, *, device=None, dtype=None) -> Tensor:
    """The ``num_bins`` support points in symlog space, shape (num_bins,)."""
    return torch.linspace(vmin, vmax, num_bins, device=device, dtype=dtype)


def two_hot(y: Tensor, num_bins: int, vmin: float, vmax: float) -> Tensor:
    """Scalars ``y`` of shape (..., 1) -> two-hot targets (..., num_bins) over symlog bins.

    symlog(y) is clamped to [vmin, vmax]; its weight goes to the bins just below and above, so that
    the expectation over bin centres equals the clamped symlog(y) exactly.
    """
    if y.shape[-1] != 1:
        raise ValueError(f"two_hot expects a trailing dim of size 1, got shape {tuple(y.shape)}")
    x = symlog(y).clamp(vmin, vmax)
    nan = torch.isnan(x)                       # NaN targets give NaN rows (a loss the agent reports as
    x = torch.where(nan, torch.zeros_like(x), x)  # diverged) instead of an out-of-range scatter index
    pos = (x - vmin) / ((vmax - vmin) / (num_bins - 1))              # fractional bin index in [0, nb-1]
    low = pos.floor().clamp(0, num_bins - 2)                          # keep low+1 a valid bin
    w_high = pos - low                                                # in [0, 1]
    low = low.long()
    out = torch.zeros(*y.shape[:-1], num_bins, device=y.device, dtype=y.dtype)
    out.scatter_(-1, low, 1 - w_high)
    out.scatter_(-1, low + 1, w_high)
    return torch.where(nan, torch.full_like(out, float("nan")), out)


def two_hot_decode_probs(probs: Tensor, vmin: float, vmax: float) -> Tensor:
    """A distribution over bins (..., num_bins) -> scalar (..., 1): symexp of the expected bin."""
    centers = bin_centers(probs.shape[-1], vmin, vmax, device=probs.device, dtype=probs.dtype)
    return symexp((probs * centers).sum(-1, keepdim=True))


def two_hot_inv(logits: Tensor, vmin: float, vmax: float) -> Tensor:
    """Logits over bins (..., num_bins) -> scalar prediction (..., 1)."""
    return two_hot_decode_probs(F.softmax(logits, dim=-1), vmin, vmax)


def soft_ce(logits: Tensor, y: Tensor, vmin: float, vmax: float) -> Tensor:
    """Cross-entropy between ``logits`` (..., num_bins) and the two-hot encoding of ``y`` (..., 1).

    Returns shape (..., 1). This is the discrete-regression loss TD-MPC2 uses for reward and value.
    """
    target = two_hot(y, logits.shape[-1], vmin, vmax)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)


def bounded_log_std(raw: Tensor, log_std_min: float, log_std_max: float) -> Tensor:
    """Map an unbounded network output to [log_std_min, log_std_max] smoothly via tanh."""
    return log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(raw) + 1)


def gaussian_log_prob(eps: Tensor, log_std: Tensor) -> Tensor:
    """log N(mu + eps * std; mu, std), summed over the action dim -> (..., 1)."""
    return (-0.5 * eps.square() - log_std - _HALF_LOG_2PI).sum(-1, keepdim=True)


def tanh_log_prob_correction(pre_tanh: Tensor) -> Tensor:
    """log |d tanh(u) / du| summed over the action dim -> (..., 1) (subtract it from the log-prob)."""
    return torch.log(F.relu(1 - torch.tanh(pre_tanh).square()) + 1e-6).sum(-1, keepdim=True)


__all__ = [
    "symlog", "symexp", "bin_centers", "two_hot", "two_hot_decode_probs", "two_hot_inv", "soft_ce",
    "bounded_log_std", "gaussian_log_prob", "tanh_log_prob_correction",
]
