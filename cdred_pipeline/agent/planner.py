"""MPPI planning in the latent space of the world model (paper App. B.2, Algorithm 2).

Every iteration scores all N trajectories at once: the batch dimension of every network call is the
sample dimension, and the only Python loop is over the H time steps of the rollout.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from cdred_pipeline.agent.config import AgentConfig
from cdred_pipeline.agent.world_model import WorldModel


@torch.no_grad()
def estimate_value(
    model: WorldModel, z: Tensor, actions: Tensor, gamma: float, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Return of each trajectory (Alg. 2, lines 5-11): sum_t gamma^t R(z_t, a_t) + gamma^H Q(z_H, pi(z_H)).

    z: (N, L) start latents; actions: (H, N, A). Returns (N, 1).
    """
    G = torch.zeros(z.shape[0], 1, device=z.device, dtype=z.dtype)
    discount = 1.0
    for t in range(actions.shape[0]):
        G = G + discount * model.reward(z, actions[t])
        z = model.next(z, actions[t])
        discount *= gamma
    a_H, _ = model.pi(z, generator=generator)
    return G + discount * model.Q(z, a_H, "avg", generator=generator)


@torch.no_grad()
def mppi_plan(
    model: WorldModel,
    z: Tensor,
    cfg: AgentConfig,
    *,
    gamma: float,
    prev_mean: Optional[Tensor] = None,
    eval_mode: bool = False,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """One MPPI plan from latent ``z`` (1, L). Returns ``(action (A,), mean (H, A))``.

    - ``num_pi_trajs`` of the ``num_samples`` trajectories are rolled out by the policy prior
      (Alg. 2, line 4), the rest are drawn from N(mean, std^2) and clamped to [-1, 1] (line 3).
    - ``prev_mean`` (the previous step's mean) warm-starts the mean, shifted by one step;
      ``None`` starts from zero (first step of an episode). std starts at ``max_std``.
    - Each iteration keeps the ``num_elites`` best trajectories and refits mean/std with weights
      exp(temperature * (value - max value)) (line 14); std is clamped to [min_std, max_std].
    - ``eval_mode``: the action is the final mean's first step (deterministic given the samples).
      Otherwise an elite is drawn by its weight and Gaussian noise of the final std is added.
    The returned ``mean`` is what the caller passes as ``prev_mean`` next step.
    """
    H, A = cfg.horizon, model.action_dim
    warm = torch.zeros(H, A, device=z.device, dtype=z.dtype) if prev_mean is None else prev_mean
    sample, mean_action, mean = mppi_core(model, z, cfg, gamma, warm, 0.0 if prev_mean is None else 1.0, generator)
    return (mean_action if eval_mode else sample), mean


@torch.no_grad()
def mppi_core(
    model: WorldModel,
    z: Tensor,
    cfg: AgentConfig,
    gamma: float,
    prev_mean: Tensor,
    keep: "float | Tensor",
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The MPPI iterations of :func:`mppi_plan` with no branch on data and no host synchronisation,
    so that the agent can capture it as one CUDA graph. ``keep`` (0 or 1, a float or a 0-d tensor)
    multiplies the shifted warm start ``prev_mean``. Returns ``(sampled action (A,), mean action
    (A,), mean (H, A))``: the sampled and the evaluation action of the same plan."""
    H, A, N, Np = cfg.horizon, model.action_dim, cfg.num_samples, cfg.num_pi_trajs
    dev, dt = z.device, z.dtype
    actions = torch.empty(H, N, A, device=dev, dtype=dt)
    if Np > 0:  # policy-prior trajectories: loop over time, vectorised over the Np samples
        _z = z.expand(Np, -1)
        for t in range(H):
            actions[t, :Np], _ = model.pi(_z, generator=generator)
            if t < H - 1:
                _z = model.next(_z, actions[t, :Np])
    z_all = z.expand(N, -1)

    mean = torch.cat([prev_mean[1:] * keep, torch.zeros(1, A, device=dev, dtype=dt)])
    std = torch.full((H, A), cfg.max_std, device=dev, dtype=dt)

    for _ in range(cfg.iterations):
        noise = torch.randn(H, N - Np, A, device=dev, dtype=dt, generator=generator)
        actions[:, Np:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
        value = estimate_value(model, z_all, actions, gamma, generator).nan_to_num(0.0).squeeze(1)  # (N,)
        elite_value, elite_idx = torch.topk(value, cfg.num_elites)
        elite_actions = actions[:, elite_idx]                                                 # (H, E, A)
        score = torch.exp(cfg.temperature * (elite_value - elite_value.max()))
        score = score / score.sum()
        w = score.view(1, -1, 1)
        mean = (w * elite_actions).sum(1)
        std = ((w * (elite_actions - mean.unsqueeze(1)).square()).sum(1)).sqrt().clamp(cfg.min_std, cfg.max_std)

    pick = torch.multinomial(score, 1, generator=generator)
    sample = elite_actions[0].index_select(0, pick).squeeze(0) + std[0] * torch.randn(A, device=dev, dtype=dt, generator=generator)
    return sample.clamp(-1, 1), mean[0].clamp(-1, 1), mean


__all__ = ["estimate_value", "mppi_core", "mppi_plan"]
