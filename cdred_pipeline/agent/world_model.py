"""The decoder-free world model (paper App. A.1; TD-MPC2 verbs ``encode/next/reward/pi/Q``).

    z      = encode(s)           state MLP or pixel conv net, SimNorm latent (h_theta)
    z'     = next(z, a)          latent dynamics, SimNorm output (d_theta)
    r      = reward(x, a)        the pluggable reward head (x = z, or the raw obs in "obs" space)
    a, inf = pi(z)               tanh-Gaussian policy prior (pi_theta)
    q      = Q(z, a, kind)       ensemble of ``num_q`` two-hot Q heads; target copy by Polyak averaging
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdred_pipeline.agent.config import AgentConfig
from cdred_pipeline.agent.layers import ConvEncoder, EnsembleMLP, StateEncoder, SimNorm, init_linear_, mlp
from cdred_pipeline.agent.ops import bounded_log_std, gaussian_log_prob, tanh_log_prob_correction, two_hot_inv
from cdred_pipeline.agent.reward_head import RewardHead


class WorldModel(nn.Module):
    """TD-MPC2 world model with a pluggable reward head.

    Args:
        cfg: :class:`AgentConfig`.
        obs_shape: ``(D,)`` for state observations, ``(C, H, W)`` (uint8) for stacked frames.
        action_dim: A; actions live in [-1, 1]^A.
        reward_head: a :class:`RewardHead` (its parameters join the model optimiser).
    """

    def __init__(self, cfg: AgentConfig, obs_shape: Sequence[int], action_dim: int, reward_head: RewardHead) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_shape, self.action_dim = tuple(int(s) for s in obs_shape), int(action_dim)
        L, A, M = cfg.latent_dim, self.action_dim, cfg.mlp_dim
        if len(self.obs_shape) == 1:
            self._encoder: nn.Module = StateEncoder(self.obs_shape[0], cfg.enc_dim, cfg.num_enc_layers, L, cfg.simnorm_dim)
        elif len(self.obs_shape) == 3:
            self._encoder = ConvEncoder(self.obs_shape, cfg.num_channels, L, cfg.simnorm_dim, cfg.shift_aug_pad)
        else:
            raise ValueError(f"obs_shape must be (D,) or (C, H, W), got {self.obs_shape}")
        self._dynamics = mlp(L + A, [M, M], L, last_act=SimNorm(cfg.simnorm_dim))
        self._pi = mlp(L, [M, M], 2 * A)
        self._Qs = EnsembleMLP(cfg.num_q, L + A, [M, M], cfg.num_bins, dropout=cfg.dropout)
        for part in (self._encoder, self._dynamics, self._pi):
            part.apply(init_linear_)
        self._Qs.zero_last_layer_()
        self._target_Qs = copy.deepcopy(self._Qs).requires_grad_(False)
        self._reward = reward_head

    # --------------------------------------------------------------------------------- bookkeeping
    def train(self, mode: bool = True) -> "WorldModel":
        """Like ``nn.Module.train`` but the target Qs always stay in eval mode (no dropout)."""
        super().train(mode)
        self._target_Qs.train(False)
        return self

    @torch.no_grad()
    def soft_update_target_Q(self, tau: float) -> None:
        """theta^- <- (1 - tau) theta^- + tau theta for the Q ensemble (Alg. 1, last line)."""
        for target, online in zip(self._target_Qs.parameters(), self._Qs.parameters()):
            target.lerp_(online, tau)

    def num_trainable(self, include_reward: bool = True) -> int:
        """Trainable parameter count (the target Qs and frozen buffers excluded)."""
        parts = [self._encoder, self._dynamics, self._pi, self._Qs] + ([self._reward] if include_reward else [])
        return sum(p.numel() for part in parts for p in part.parameters() if p.requires_grad)

    # --------------------------------------------------------------------------------- verbs
    def encode(self, obs: Tensor, augment: bool = False) -> Tensor:
        """Observation(s) (..., *obs_shape) -> latent (..., latent_dim). ``augment``: random shifts (pixels)."""
        return self._encoder(obs, augment=augment)

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        """Latent dynamics d(z, a) -> next latent (..., latent_dim)."""
        return self._dynamics(torch.cat([z, a], dim=-1))

    def reward(self, x: Tensor, a: Tensor) -> Tensor:
        """Scalar reward (..., 1) from the reward head."""
        return self._reward.reward(x, a)

    def pi(self, z: Tensor, generator: Optional[torch.Generator] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample from the tanh-Gaussian policy prior. Returns ``(action, info)``.

        ``info``: ``mean`` (tanh of the Gaussian mean: the eval action), ``log_std``, ``entropy``
        (-log pi of the squashed sample) and ``scaled_entropy``. TD-MPC2's entropy scaling multiplies
        the Gaussian log-probability by the action dimension; the released code writes
        ``-log_prob * (A * gauss_log_prob) / (log_prob + 1e-8)``, which equals ``-A * gauss_log_prob``
        (the pre-squash Gaussian term) — computed here directly.
        """
        mu, raw_log_std = self._pi(z).chunk(2, dim=-1)
        log_std = bounded_log_std(raw_log_std, self.cfg.log_std_min, self.cfg.log_std_max)
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        gauss_lp = gaussian_log_prob(eps, log_std)
        pre_tanh = mu + eps * log_std.exp()
        log_prob = gauss_lp - tanh_log_prob_correction(pre_tanh)
        info = {
            "mean": torch.tanh(mu),
            "log_std": log_std,
            "entropy": -log_prob,
            "scaled_entropy": -gauss_lp * mu.shape[-1],
        }
        return torch.tanh(pre_tanh), info

    def Q(
        self,
        z: Tensor,
        a: Tensor,
        return_type: str = "min",
        *,
        target: bool = False,
        detach: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """State-action value.

        ``return_type``: ``"all"`` -> logits of every head (num_q, ..., num_bins); ``"min"``/``"avg"``
        -> min / mean of two randomly chosen heads, decoded to scalars (..., 1). ``target`` uses the
        Polyak copy; ``detach`` blocks gradients into the Q parameters (policy loss).
        """
        if return_type not in ("min", "avg", "all"):
            raise ValueError(f"return_type must be min, avg or all, got {return_type!r}")
        net = self._target_Qs if target else self._Qs
        za = torch.cat([z, a], dim=-1)
        if return_type == "all":
            return net(za, detach=detach)
        # two distinct random heads: argsort of uniform draws (graph-capturable, unlike randperm)
        heads = torch.rand(self.cfg.num_q, device=z.device, generator=generator).argsort()[:2]
        q = two_hot_inv(net(za, heads=heads, detach=detach), self.cfg.vmin, self.cfg.vmax)  # (2, ..., 1)
        return q.min(0).values if return_type == "min" else q.mean(0)


def latent_rollout(model: WorldModel, z0: Tensor, action: Tensor, next_z: Tensor, rho: Tensor) -> tuple[Tensor, Tensor]:
    """The latents z_0..z_H of the dynamics rollout (H+1, N, L) and the rho-weighted consistency loss / H
    (Eq. 15's first term)."""
    zs, z, consistency = [z0], z0, z0.new_zeros(())
    for t in range(action.shape[0]):
        z = model.next(z, action[t])
        consistency = consistency + F.mse_loss(z, next_z[t]) * rho[t]
        zs.append(z)
    return torch.stack(zs), consistency / action.shape[0]


__all__ = ["WorldModel", "latent_rollout"]
