"""ManiSkill2 tasks (``ms2:<name>``), imported lazily; an optional extra in its own environment.

ManiSkill2 0.5.3 needs ``sapien==2.2.2`` and ``numpy<1.24`` (it cannot share the main environment)
and a Vulkan GPU for SAPIEN's renderer. Without either, :func:`make_ms2_env` raises
:class:`~cdred_pipeline.errors.MissingDependencyError` in one line naming what is missing and the
README section on the extra.

Setup as TD-MPC2's ManiSkill2 envs: ``obs_mode="state"``, the controller of
:data:`~cdred_pipeline.envs.spec.MS2_TASKS`, action repeat 2, 100 agent steps. Physics state: SAPIEN's
``env.unwrapped.get_state()`` (actors, articulations and task goal). Frames: ManiSkill2's render camera
configured at ``image_size`` (other sizes need a new env).

NOTE: this adapter has not been run here (no ManiSkill2, no Vulkan on the build machine); it follows
ManiSkill2 0.5.3's gymnasium API and handles the older gym API too.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import glob
import importlib.util
import numpy as np

from cdred_pipeline.seeding import derive
from cdred_pipeline.envs.base import CdredEnv
from cdred_pipeline.envs.spec import MS2_TASKS, README_MS2_SECTION, TaskSpec
from cdred_pipeline.errors import MissingDependencyError, UsageError

_VULKAN_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")


def ms2_unavailable_reason() -> str | None:
    """Why ManiSkill2 cannot run here (None if it looks usable). Cheap: no renderer is created."""
    if importlib.util.find_spec("mani_skill2") is None:
        return ("ManiSkill2 is not installed (mani-skill2==0.5.3, sapien==2.2.2, numpy<1.24 in their own "
                f"environment; see the {README_MS2_SECTION})")
    if ctypes.util.find_library("vulkan") is None:
        return f"no Vulkan loader (libvulkan.so.1): ManiSkill2 needs a Vulkan GPU; see the {README_MS2_SECTION}"
    if not any(glob.glob(f"{d}/*.json") for d in _VULKAN_ICD_DIRS):
        return f"no Vulkan driver (ICD json) found: ManiSkill2 needs a Vulkan GPU; see the {README_MS2_SECTION}"
    return None


class ManiSkill2Env(CdredEnv):
    """One ManiSkill2 task (see the module docstring)."""

    def __init__(self, spec: TaskSpec, seed: int | None) -> None:
        reason = ms2_unavailable_reason()
        if reason is not None:
            raise MissingDependencyError(f"{spec.task}: {reason}")
        try:
            import sapien.core as sapien

            sapien.SapienRenderer()  # fails without a usable Vulkan device
        except Exception as exc:  # sapien raises RuntimeError subclasses that vary by driver
            raise MissingDependencyError(f"{spec.task}: SAPIEN cannot create a Vulkan renderer ({exc}); "
                                         f"ManiSkill2 needs a Vulkan GPU; see the {README_MS2_SECTION}") from exc
        import mani_skill2.envs  # noqa: F401  (registers the envs)

        try:
            import gymnasium as gym
        except ImportError:  # pragma: no cover
            import gym  # type: ignore[no-redef]
        cfg = MS2_TASKS[spec.task.split(":", 1)[1]]
        size = spec.image_size
        self._env = gym.make(cfg["env_id"], obs_mode="state", control_mode=cfg["control_mode"],
                             render_mode="rgb_array", render_camera_cfgs=dict(width=size, height=size))
        self._raw = self._env.unwrapped
        aspace = self._env.action_space
        self._a_low = aspace.low.astype(np.float64)
        self._a_high = aspace.high.astype(np.float64)
        obs_dim = int(np.prod(self._env.observation_space.shape))
        state_dim = int(np.asarray(self._raw.get_state()).size)
        spec = dataclasses.replace(spec, obs_dim=obs_dim, action_dim=int(np.prod(aspace.shape)),
                                   physics_state_dim=state_dim)
        super().__init__(spec, seed)

    def _reset_sim(self, episode_seed: int) -> np.ndarray:
        out = self._env.reset(seed=derive(episode_seed, "sim"))
        obs = out[0] if isinstance(out, tuple) else out
        return np.asarray(obs, dtype=np.float64).reshape(-1)

    def _step_sim(self, action: np.ndarray):
        a = self._a_low + (action.astype(np.float64) + 1.0) * 0.5 * (self._a_high - self._a_low)
        out = self._env.step(a.astype(np.float32))
        if len(out) == 5:
            obs, reward, terminated, _, info = out
        else:  # old gym API: (obs, reward, done, info); done is only the time limit or success
            obs, reward, terminated, info = out
        extra = {k: v for k, v in info.items() if np.isscalar(v) and k != "success"}
        return (np.asarray(obs, dtype=np.float64).reshape(-1), float(reward), bool(terminated),
                bool(info.get("success", False)), extra)

    def _get_state(self) -> np.ndarray:
        return np.asarray(self._raw.get_state(), dtype=np.float64)

    def _set_state(self, state: np.ndarray) -> None:
        self._raw.set_state(state)

    def render_frame(self, size: int | None = None, camera: str | int | None = None) -> np.ndarray:
        if size not in (None, self.spec_info.image_size):
            raise UsageError(f"{self.spec_info.task} renders at image_size={self.spec_info.image_size} only")
        if camera not in (None, self.spec_info.camera):
            raise UsageError(f"{self.spec_info.task} renders from its render camera only")
        img = self._env.render()
        return np.ascontiguousarray(np.asarray(img)[..., :3], dtype=np.uint8)

    def close(self) -> None:
        super().close()
        self._env.close()


def make_ms2_env(spec: TaskSpec, seed: int | None) -> ManiSkill2Env:
    """Build a ManiSkill2 env or raise MissingDependencyError (one line) saying what is missing."""
    return ManiSkill2Env(spec, seed)


__all__ = ["ManiSkill2Env", "make_ms2_env", "ms2_unavailable_reason"]
