"""Meta-World v3 MT1 tasks (``mw:<name>`` -> ``<name>-v3``) as :class:`CdredEnv`, and its scripted
expert policies.

Setup as TD-MPC2's Meta-World envs: the goal is part of the 39-dim observation, and every reset draws
a new object/goal configuration (``rand_vec``) uniformly from the task's reset space. Meta-World's
public "goal-observable" classes give exactly that, but freeze the configuration drawn at
construction, so each episode is one such env, built with a seed derived from the episode seed: the
same seed gives the same goal (Meta-World seeds the global numpy RNG for that draw and restores it).
A second, long-lived env of the task holds the scene that renders and restores physics states; the
episode's state is copied into it before a frame is rendered. ``info["success"]`` is Meta-World's
success flag after the last simulator step of the agent step.

Physics state (float64): ``mj_getState(mjSTATE_PHYSICS | mjSTATE_MOCAP_POS | mjSTATE_MOCAP_QUAT)``
(qpos, qvel, act, mocap pos, mocap quat) followed by ``model.body_pos`` and ``model.site_pos`` (whole
arrays): ``reset()`` writes object, goal and fixture positions into the model (docs/design.md §2), and
those arrays are the only rendering-relevant model arrays any of the 50 tasks changes (measured).
Restoring sets all of them and runs ``mj_forward``.

Camera: ``corner4`` by default (TD-MPC2 moves ``corner2`` to pos (0.75, 0.075, 0.7); v3 ships that
as ``corner4``). The corner cameras are upside-down in the XML, so their images are rotated by 180
degrees; other cameras are returned as rendered.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from cdred_pipeline.seeding import derive
from cdred_pipeline.envs.base import CdredEnv, validate_camera
from cdred_pipeline.envs.gl import check_gl_env
from cdred_pipeline.envs.spec import TaskSpec, parse_task
from cdred_pipeline.errors import UsageError

ROTATED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
_MODEL_FIELDS = ("body_pos", "site_pos")


def _state_spec() -> int:
    import mujoco

    s = mujoco.mjtState
    return int(s.mjSTATE_PHYSICS | s.mjSTATE_MOCAP_POS | s.mjSTATE_MOCAP_QUAT)


def goal_observable_env(name: str, seed: int) -> Any:
    """Meta-World's goal-observable v3 env for ``name`` (without ``-v3``) with the object/goal
    configuration drawn from ``seed`` (a 32-bit int); its ``reset()`` returns to that configuration."""
    check_gl_env()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{name}-v3-goal-observable"](seed=seed)


class MetaWorldEnv(CdredEnv):
    """One Meta-World v3 task (see the module docstring)."""

    def __init__(self, spec: TaskSpec, seed: int | None) -> None:
        import dataclasses

        import mujoco

        self._name = spec.task.split(":", 1)[1]
        self._view = goal_observable_env(self._name, 0)  # the scene that renders and restores states
        self._env = self._view  # the env that steps: a new one every episode
        self._model, self._data = self._view.model, self._view.data
        validate_camera(spec.task, self._model, spec.camera)
        self._spec_bits = _state_spec()
        self._n_sim = int(mujoco.mj_stateSize(self._model, self._spec_bits))
        n_model = sum(getattr(self._model, f).size for f in _MODEL_FIELDS)
        spec = dataclasses.replace(spec, obs_dim=int(self._view.observation_space.shape[0]),
                                   action_dim=int(self._view.action_space.shape[0]),
                                   physics_state_dim=self._n_sim + n_model)
        super().__init__(spec, seed)

    def _reset_sim(self, episode_seed: int) -> np.ndarray:
        self._close_episode_env()
        self._env = goal_observable_env(self._name, derive(episode_seed, "sim"))
        obs, _ = self._env.reset()
        return obs

    def _step_sim(self, action: np.ndarray):
        obs, reward, terminated, _, info = self._env.step(action)
        extra = {k: float(v) for k, v in info.items() if k != "success" and np.isscalar(v)}
        return obs, float(reward), bool(terminated), bool(info.get("success", 0.0)), extra

    def _get_state(self) -> np.ndarray:
        import mujoco

        model, data = self._env.model, self._env.data
        sim = np.empty(self._n_sim, dtype=np.float64)
        mujoco.mj_getState(model, data, sim, self._spec_bits)
        return np.concatenate([sim] + [getattr(model, f).ravel() for f in _MODEL_FIELDS])

    def _set_state(self, state: np.ndarray) -> None:
        _write_state(self._env.model, self._env.data, state, self._n_sim, self._spec_bits)

    def _scene(self):
        if self._env is not self._view:  # the episode's env steps: show its state in the rendering scene
            _write_state(self._model, self._data, self._get_state(), self._n_sim, self._spec_bits)
        return self._model, self._data

    def _resolve_camera(self, camera: str | int | None) -> tuple[int | str, bool]:
        cam, _ = super()._resolve_camera(camera)
        return cam, (cam in ROTATED_CAMERAS)

    def _close_episode_env(self) -> None:
        if self._env is not self._view:
            self._env.close()
            self._env = self._view

    def close(self) -> None:
        super().close()
        self._close_episode_env()
        self._view.close()


def _write_state(model: Any, data: Any, state: np.ndarray, n_sim: int, spec_bits: int) -> None:
    """Restore a physics state (layout: the module docstring) into ``model``/``data``."""
    import mujoco

    mujoco.mj_setState(model, data, np.ascontiguousarray(state[:n_sim]), spec_bits)
    i = n_sim
    for f in _MODEL_FIELDS:
        arr = getattr(model, f)
        arr[...] = state[i:i + arr.size].reshape(arr.shape)
        i += arr.size
    mujoco.mj_forward(model, data)


def scripted_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's scripted expert for ``task`` (``metaworld.policies.Sawyer<Name>V3Policy``).

    Returns ``policy(state_obs) -> action``: float32 (4,) in [-1, 1], for the 39-dim state observation
    of ``make_env(task)`` (for ``obs="rgb"`` envs pass ``info["state"]``). The experts were written for
    one simulator step per action; under our action repeat of 2 they still solve most tasks (the tests
    check the six paper tasks). The policies are stateless, so one callable serves any number of envs.

    Raises:
        UsageError: ``task`` is not a Meta-World task (the other suites have no scripted experts).
    """
    p = parse_task(task)
    if p.suite != "mw":
        raise UsageError(f"no scripted policy for {p.task}: scripted experts exist for Meta-World (mw:) tasks only")
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[f"{p.name}-v3"]()

    def act(obs: np.ndarray) -> np.ndarray:
        o = np.asarray(obs, dtype=np.float64).reshape(-1)
        if o.shape != (39,):
            raise UsageError(f"scripted policy for {p.task} needs the 39-dim state observation, got {o.shape}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips, so do we
            a = policy.get_action(o)
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)

    act.__name__ = f"scripted_{p.name.replace('-', '_')}"
    return act
