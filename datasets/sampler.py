"""Training readers: sub-trajectories of length H+1 that never cross episode ends.

:class:`EpisodeSampler` is a small vectorised sampler over :func:`load_episodes` output (numpy, no
torch), used by the benchmarks and usable where the agent's ReplayBuffer is not wanted.
:func:`fill_buffer` loads a dataset into any buffer with the agent's ``add_episode(obs, action,
reward)`` interface and reports the memory it took.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cdred_pipeline.errors import DatasetError

from .reader import load_episodes

__all__ = ["EpisodeSampler", "fill_buffer"]


class EpisodeSampler:
    """Uniform sampling of windows (obs t..t+H, action t..t+H-1, reward t..t+H-1) inside episodes.

    Episodes are concatenated once (obs rows T+1 per episode, action/reward rows T); a window start
    is drawn uniformly over every valid (episode, t) with t + H <= T, so a window never crosses an
    episode end. Episodes shorter than H contribute no window.
    """

    def __init__(self, episodes: Sequence[dict[str, np.ndarray]], horizon: int, seed: int | None = 0) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not episodes:
            raise DatasetError("EpisodeSampler: no episodes")
        self.horizon = int(horizon)
        self.obs = np.concatenate([e["obs"] for e in episodes])
        self.action = np.concatenate([e["action"] for e in episodes])
        self.reward = np.concatenate([np.asarray(e["reward"]).reshape(-1) for e in episodes]).astype(np.float32)
        t = np.array([len(e["action"]) for e in episodes], dtype=np.int64)
        obs_off = np.concatenate([[0], np.cumsum(t + 1)[:-1]])
        act_off = np.concatenate([[0], np.cumsum(t)[:-1]])
        n_win = np.maximum(t - self.horizon + 1, 0)
        if n_win.sum() == 0:
            raise DatasetError(f"EpisodeSampler: every episode is shorter than the horizon {horizon}")
        ep = np.repeat(np.arange(len(t)), n_win)
        within = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
        self._obs_start = obs_off[ep] + within
        self._act_start = act_off[ep] + within
        self._obs_steps = np.arange(self.horizon + 1)[:, None]
        self._act_steps = np.arange(self.horizon)[:, None]
        self.num_episodes = len(t)
        self.num_windows = int(n_win.sum())
        self.rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        """Memory held (data plus index arrays)."""
        return int(self.obs.nbytes + self.action.nbytes + self.reward.nbytes
                   + self._obs_start.nbytes + self._act_start.nbytes)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """obs (H+1, B, ...), action (H, B, A), reward (H, B, 1): the agent's ReplayBuffer batch shapes."""
        i = self.rng.integers(0, self.num_windows, size=int(batch_size))
        oi = self._obs_start[i][None, :] + self._obs_steps
        ai = self._act_start[i][None, :] + self._act_steps
        return {"obs": self.obs[oi], "action": self.action[ai], "reward": self.reward[ai][..., None]}


def fill_buffer(buffer: Any, path: str | os.PathLike, num_demos: int | None = None, obs: str = "state",
                camera: str | None = None) -> dict[str, int]:
    """Add a dataset's episodes to ``buffer`` via ``buffer.add_episode(obs, action, reward)``.

    Returns ``{"episodes", "steps", "bytes"}``: bytes is the size of the arrays handed to the buffer
    (the memory a buffer storing them as given holds).
    """
    eps = load_episodes(path, num_demos=num_demos, obs=obs, camera=camera)
    nbytes = steps = 0
    for e in eps:
        buffer.add_episode(e["obs"], e["action"], e["reward"])
        steps += len(e["action"])
        nbytes += e["obs"].nbytes + e["action"].nbytes + e["reward"].nbytes
    return {"episodes": len(eps), "steps": steps, "bytes": nbytes}
