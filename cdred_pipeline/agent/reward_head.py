"""The pluggable reward head of the world model (docs/interfaces.md, "Reward head interface").

The agent uses a reward head through exactly two calls:

- ``reward(x, a) -> (..., 1)``: the scalar reward used by the MPPI planner (Alg. 2, line 9) and, for
  heads that do not learn from environment reward, the TD target (Alg. 1; docs/design.md §4);
- ``loss(x, a, env_reward, is_expert) -> (T,)``: the head's own per-time-step loss, averaged over the
  batch; the agent applies the rho^t weighting, the 1/H average and ``reward_coef``.

``uses_env_reward`` tells the agent which reward enters the TD target: the stored environment reward
(True: expert training, TD-MPC2) or ``reward(x, a)`` without gradient (False: CDRED imitation).
x is the world-model latent z (``reward_space="latent"``) or the raw state observation ("obs").
"""

from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import Tensor, nn

from cdred_pipeline.agent.layers import init_linear_, mlp
from cdred_pipeline.agent.ops import soft_ce, two_hot_inv


class RewardHead(nn.Module, abc.ABC):
    """Base class of reward heads. Subclasses set ``uses_env_reward`` and implement both methods."""

    uses_env_reward: bool = False

    @abc.abstractmethod
    def reward(self, x: Tensor, a: Tensor) -> Tensor:
        """Scalar reward at (x, a): x (..., D), a (..., A) -> (..., 1)."""

    @abc.abstractmethod
    def loss(self, x: Tensor, a: Tensor, env_reward: Optional[Tensor], is_expert: Tensor) -> Tensor:
        """Per-time-step loss (T,), averaged over the batch: x (T, B, D), a (T, B, A),
        env_reward (T, B, 1), is_expert (B,) bool."""

    def loss_and_reward(self, x: Tensor, a: Tensor, env_reward: Optional[Tensor],
                        is_expert: Tensor) -> tuple[Tensor, Tensor]:
        """``loss(...)`` and ``reward(x, a)`` without gradient, on the same (x, a): the update needs both
        (Eq. 15's reward loss and the TD target). Heads that can share the forward pass override this."""
        loss = self.loss(x, a, env_reward, is_expert)
        with torch.no_grad():
            return loss, self.reward(x.detach(), a)

    def forward(self, x: Tensor, a: Tensor) -> Tensor:  # noqa: D102 - same as reward()
        return self.reward(x, a)


class TwoHotRewardHead(RewardHead):
    """TD-MPC2's reward model: NormedLinear MLP on concat(x, a) -> logits over two-hot symlog bins,
    trained by soft cross-entropy on the environment reward (expert training).

    Args: x_dim, action_dim, mlp_dim (width of the 2 hidden layers), num_bins, vmin, vmax.
    The last layer starts at zero (every prediction starts at reward 0, as TD-MPC2).
    """

    uses_env_reward = True

    def __init__(
        self, x_dim: int, action_dim: int, *, mlp_dim: int = 512, num_bins: int = 101, vmin: float = -10.0, vmax: float = 10.0
    ) -> None:
        super().__init__()
        self.x_dim, self.action_dim = int(x_dim), int(action_dim)
        self.vmin, self.vmax = float(vmin), float(vmax)
        self.net = mlp(self.x_dim + self.action_dim, [mlp_dim, mlp_dim], num_bins)
        self.net.apply(init_linear_)
        nn.init.zeros_(self.net[-1].weight)

    def logits(self, x: Tensor, a: Tensor) -> Tensor:
        """Bin logits (..., num_bins)."""
        return self.net(_cat(x, a))

    def reward(self, x: Tensor, a: Tensor) -> Tensor:
        return two_hot_inv(self.logits(x, a), self.vmin, self.vmax)

    def loss(self, x: Tensor, a: Tensor, env_reward: Optional[Tensor], is_expert: Tensor) -> Tensor:
        if env_reward is None:
            raise ValueError("TwoHotRewardHead learns from environment reward; the batch has none")
        ce = soft_ce(self.logits(x, a), env_reward, self.vmin, self.vmax)  # (T, B, 1)
        return ce.squeeze(-1).mean(-1)


def _cat(x: Tensor, a: Tensor) -> Tensor:
    """concat(x, a) on the last dim with a shape check that names both shapes."""
    if x.shape[:-1] != a.shape[:-1]:
        raise ValueError(f"reward head inputs must share leading dims: x {tuple(x.shape)}, a {tuple(a.shape)}")
    return torch.cat([x, a], dim=-1)


__all__ = ["RewardHead", "TwoHotRewardHead"]
