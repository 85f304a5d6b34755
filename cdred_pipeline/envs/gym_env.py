"""Any registered gymnasium id with a Box action space (``gym:<id>``), for quick tests.

Actions in [-1, 1] are mapped linearly onto the env's (finite) action bounds; observations must be a
Box and are flattened to float32. The episode length defaults to the id's own ``max_episode_steps``
(divided by the action repeat, default 1); the env is built without gymnasium's TimeLimit and we
truncate ourselves. ``info["success"]`` is the env's ``success``/``is_success`` entry if it has one,
else False.

MuJoCo-based envs (``gymnasium.envs.mujoco.MujocoEnv``) expose ``mj_getState(mjSTATE_PHYSICS)``
(qpos, qvel, act; their models do not change per episode) and render through ``mujoco.Renderer``
from camera 0 when the model has one, else the free camera. After every step we run ``mj_forward`` so
that the rendered frame (and a re-render from the stored state) shows the new positions rather than
the pre-step kinematics gymnasium leaves in ``data``. Other envs have no physics state and no frames:
asking for them is a one-line error.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from cdred_pipeline.seeding import derive
from cdred_pipeline.envs.base import CdredEnv, validate_camera
from cdred_pipeline.envs.gl import check_gl_env
from cdred_pipeline.envs.spec import TaskSpec
from cdred_pipeline.errors import MissingDependencyError, UsageError


class GymEnv(CdredEnv):
    """A gymnasium env behind the common contract (see the module docstring)."""

    def __init__(self, spec: TaskSpec, seed: int | None, episode_length_given: bool) -> None:
        import gymnasium as gym

        gid = spec.task.split(":", 1)[1]
        env_spec = gym.spec(gid)
        mujoco_entry = "mujoco" in str(env_spec.entry_point)
        if mujoco_entry:
            check_gl_env()
        try:
            env = gym.make(gid, disable_env_checker=True)
        except gym.error.DependencyNotInstalled as exc:
            raise MissingDependencyError(f"{spec.task}: {exc}".splitlines()[0]) from exc
        self._outer = env
        self._env = env.unwrapped
        aspace, ospace = self._env.action_space, self._env.observation_space
        if not isinstance(aspace, gym.spaces.Box):
            raise UsageError(f"{spec.task} has a {type(aspace).__name__} action space; make_env needs a Box")
        if not (np.all(np.isfinite(aspace.low)) and np.all(np.isfinite(aspace.high))):
            raise UsageError(f"{spec.task} has unbounded actions; cannot rescale them to [-1, 1]")
        if not isinstance(ospace, gym.spaces.Box):
            raise UsageError(f"{spec.task} has a {type(ospace).__name__} observation space; make_env needs a Box")
        self._a_low = aspace.low.astype(np.float64).reshape(-1)
        self._a_high = aspace.high.astype(np.float64).reshape(-1)
        self._a_shape, self._a_dtype = aspace.shape, aspace.dtype
        self._is_mujoco = False
        if mujoco_entry or "mujoco" in sys.modules:  # importing MujocoEnv imports mujoco (reads MUJOCO_GL)
            from gymnasium.envs.mujoco import MujocoEnv

            self._is_mujoco = isinstance(self._env, MujocoEnv)
        state_dim = None
        if self._is_mujoco:
            import mujoco

            self._spec_bits = int(mujoco.mjtState.mjSTATE_PHYSICS)
            state_dim = int(mujoco.mj_stateSize(self._env.model, self._spec_bits))
            cam = spec.camera if spec.camera is not None else (0 if self._env.model.ncam > 0 else -1)
            validate_camera(spec.task, self._env.model, cam)
            spec = dataclasses.replace(spec, camera=cam)
        elif spec.obs == "rgb":
            raise UsageError(f"obs='rgb' needs a MuJoCo-based env; {spec.task} is not (try gym:HalfCheetah-v5)")
        ep = spec.episode_length
        if not episode_length_given:
            max_steps = env_spec.max_episode_steps
            ep = None if max_steps is None else -(-int(max_steps) // spec.action_repeat)
        spec = dataclasses.replace(spec, obs_dim=int(np.prod(ospace.shape)), action_dim=int(np.prod(aspace.shape)),
                                   physics_state_dim=state_dim, episode_length=ep)
        super().__init__(spec, seed)

    def _reset_sim(self, episode_seed: int) -> np.ndarray:
        obs, _ = self._env.reset(seed=derive(episode_seed, "sim"))
        self._env.action_space.seed(derive(episode_seed, "sim"))
        if self._is_mujoco:
            import mujoco

            mujoco.mj_forward(self._env.model, self._env.data)
        return np.asarray(obs, dtype=np.float64).reshape(-1)

    def _step_sim(self, action: np.ndarray):
        a = self._a_low + (action.astype(np.float64) + 1.0) * 0.5 * (self._a_high - self._a_low)
        obs, reward, terminated, _, info = self._env.step(a.reshape(self._a_shape).astype(self._a_dtype))
        if self._is_mujoco:
            import mujoco

            mujoco.mj_forward(self._env.model, self._env.data)
        success = bool(info.get("success", info.get("is_success", False)))
        extra = {k: v for k, v in info.items() if np.isscalar(v) and k not in ("success", "is_success")}
        return np.asarray(obs, dtype=np.float64).reshape(-1), float(reward), bool(terminated), success, extra

    def _get_state(self) -> np.ndarray:
        if not self._is_mujoco:
            raise UsageError(f"{self.spec_info.task} is not MuJoCo-based: it has no physics state to store")
        import mujoco

        out = np.empty(self.spec_info.physics_state_dim, dtype=np.float64)
        mujoco.mj_getState(self._env.model, self._env.data, out, self._spec_bits)
        return out

    def _set_state(self, state: np.ndarray) -> None:
        if not self._is_mujoco:
            raise UsageError(f"{self.spec_info.task} is not MuJoCo-based: it has no physics state to restore")
        import mujoco

        mujoco.mj_setState(self._env.model, self._env.data, np.ascontiguousarray(state), self._spec_bits)
        mujoco.mj_forward(self._env.model, self._env.data)

    def _scene(self):
        if not self._is_mujoco:
            raise UsageError(f"{self.spec_info.task} is not MuJoCo-based: render_frame needs a MuJoCo env")
        return self._env.model, self._env.data

    def close(self) -> None:
        super().close()
        self._outer.close()
