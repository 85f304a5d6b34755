"""Tremble noise (paper App. D.4, following Ren et al. 2024's Hybrid IRL protocol; docs/design.md §2).

With probability ``p`` per agent step the executed action is replaced by a uniform random action in
[-1, 1]^A; otherwise the policy's (clipped) action runs. Draws come from a numpy Generator seeded per
episode from the episode seed (the "tremble" stream of :mod:`cdred_pipeline.seeding`), never from the
global RNG, so the same reset seed and ``p`` reproduce the same trembles and the same random actions.
``info["trembled"]`` says whether this step trembled and ``info["executed_action"]`` what ran;
``info["policy_action"]`` keeps the (clipped) action the policy asked for. ``p = 0`` is the unwrapped
env step for step; ``p = 1`` executes only random actions.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from cdred_pipeline.seeding import derive
from cdred_pipeline.envs.base import CdredEnv
from cdred_pipeline.errors import UsageError


def check_tremble(p: Any) -> float:
    """``p`` as a float in [0, 1], or a one-line UsageError."""
    try:
        q = float(p)
    except (TypeError, ValueError):
        raise UsageError(f"tremble probability must be a number in [0, 1], got {p!r}") from None
    if not math.isfinite(q) or not 0.0 <= q <= 1.0:
        raise UsageError(f"tremble probability must be in [0, 1], got {p!r}")
    return q


class TrembleWrapper(gym.Wrapper):
    """Replace the action by a uniform random one with probability ``p`` per agent step.

    Forwards the :class:`CdredEnv` extras (``spec_info``, ``get_physics_state``, ``set_physics_state``,
    ``render_frame``, ``episode_seed``, ``check_action``) so it can stand wherever the env does.
    """

    def __init__(self, env: CdredEnv, p: float) -> None:
        super().__init__(env)
        self.p = check_tremble(p)
        self._rng: np.random.Generator | None = None
        self._base: CdredEnv = env.unwrapped  # type: ignore[assignment]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._rng = np.random.default_rng(derive(self._base.episode_seed, "tremble"))
        return obs, info

    def step(self, action: Any):
        if self._rng is None:
            raise UsageError("step() called before reset(): call reset() first")
        policy_action = self._base.check_action(action)
        trembled = False
        executed = policy_action
        if self.p > 0.0 and self._rng.random() < self.p:
            trembled = True
            executed = self._rng.uniform(-1.0, 1.0, size=policy_action.shape).astype(np.float32)
        obs, reward, terminated, truncated, info = self.env.step(executed)
        info["trembled"] = trembled
        info["policy_action"] = policy_action
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------------ CdredEnv extras
    @property
    def spec_info(self):
        return self._base.spec_info

    @property
    def episode_seed(self) -> int | None:
        return self._base.episode_seed

    def check_action(self, action: Any) -> np.ndarray:
        return self._base.check_action(action)

    def get_physics_state(self) -> np.ndarray:
        return self._base.get_physics_state()

    def set_physics_state(self, state: np.ndarray) -> None:
        self._base.set_physics_state(state)

    def render_frame(self, size: int | None = None, camera: str | int | None = None) -> np.ndarray:
        return self._base.render_frame(size, camera)
