"""Synthetic episodes for tests and benchmarks (seeded; smooth random walks like simulator states)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .writer import EpisodeWriter

__all__ = ["random_episode", "write_random_dataset", "default_attrs", "SYNTHETIC_TASK"]

#: The task id synthetic stores carry by default: no suite knows it, so the task checks of
#: :func:`~cdred_pipeline.datasets.validate` (dims against the static task table) leave their
#: arbitrary dims alone. Pass a real task id with its own dims to get a store that fits that task.
SYNTHETIC_TASK = "synthetic:random-walk"


def default_attrs(obs_dim: int = 5, action_dim: int = 2, task: str = SYNTHETIC_TASK, **env: Any) -> dict[str, Any]:
    """Minimal valid root attrs for a synthetic store."""
    return {"env": {"task": task, "obs_dim": obs_dim, "action_dim": action_dim, "action_repeat": 2,
                    "episode_length": 500, **env},
            "sim": {"engine": "synthetic"}, "source": {"kind": "scripted"},
            "scores": {"random": 0.0, "expert": 1.0}}


def random_episode(rng: np.random.Generator, length: int, obs_dim: int = 5, action_dim: int = 2,
                   state_dim: int = 4, cameras: dict[str, int] | None = None, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments for :meth:`EpisodeWriter.append_episode`: one episode of ``length`` steps.

    Observations and states are random walks (compressible like simulator data); actions are
    uniform in [-1, 1]; ``cameras`` maps camera name -> image size for random uint8 frames.
    """
    t = int(length)
    walk = np.cumsum(rng.normal(scale=0.05, size=(t + 1, obs_dim)), axis=0).astype(np.float32)
    state = np.cumsum(rng.normal(scale=0.05, size=(t + 1, state_dim)), axis=0)
    ep: dict[str, Any] = {
        "obs": walk[:t], "final_obs": walk[t],
        "action": rng.uniform(-1, 1, size=(t, action_dim)).astype(np.float32),
        "reward": rng.normal(size=t).astype(np.float32),
        "terminated": np.zeros(t, dtype=bool),
        "physics_state": state[:t], "final_physics_state": state[t],
        "seed": int(seed), "success": bool(rng.random() < 0.5),
    }
    if t and rng.random() < 0.3:
        ep["terminated"][-1] = True
    if cameras:
        ep["rgb"] = {c: rng.integers(0, 256, size=(t, s, s, 3), dtype=np.uint8) for c, s in cameras.items()}
        ep["final_rgb"] = {c: rng.integers(0, 256, size=(s, s, 3), dtype=np.uint8) for c, s in cameras.items()}
    return ep


def write_random_dataset(path: str | os.PathLike, lengths: list[int], *, obs_dim: int = 5, action_dim: int = 2,
                         state_dim: int = 4, cameras: dict[str, int] | None = None, seed: int = 0,
                         task: str = SYNTHETIC_TASK, **writer_kw: Any) -> tuple[Path, list[dict[str, Any]]]:
    """Write a store of random episodes with the given lengths; returns (path, the episodes written)."""
    rng = np.random.default_rng(seed)
    eps = [random_episode(rng, n, obs_dim, action_dim, state_dim, cameras, seed=i) for i, n in enumerate(lengths)]
    attrs = default_attrs(obs_dim, action_dim, task, physics_state_dim=state_dim)
    with EpisodeWriter(path, attrs, **writer_kw) as w:
        for ep in eps:
            w.append_episode(**ep)
    return Path(path), eps
