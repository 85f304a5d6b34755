"""Meta-World v3 MT1 tasks (``mw:<name>`` -> ``<name>-v3``) as :class:`CdredEnv`, and its scripted
expert policies.

Setup as TD-MPC2's Meta-World envs (and Meta-World's "goal-observable" classes): the goal is part of
the 39-dim observation, and every reset draws a new object/goal configuration (``rand_vec``) -- here
from a generator seeded by the episode seed, so the same seed gives the same goal (Meta-World's own
seeded path, ``seeded_rand_vec``; the global numpy RNG is never used). ``info["success"]`` is
Meta-World's success flag after the last simulator step of the agent step.

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


def build_mt1_env(name: str) -> Any:
    """A raw Meta-World v3 env for ``name`` (without ``-v3``) set up as an MT1 task with the goal in
    the observation and seeded per-reset goal sampling (``env.np_random`` drives it)."""
    check_gl_env()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS

    full = f"{name}-v3"
    env = ALL_V3_ENVIRONMENTS[full]()
    kwargs = dict(ML1_ARGS_KWARGS[full]["kwargs"])
    kwargs.pop("task_id", None)
    env._set_task_inner(**kwargs)  # noqa: SLF001
    env._partially_observable = False  # noqa: SLF001  (MT benchmarks observe the goal)
    env.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute with the goal bounds
    env.observation_space = env.sawyer_observation_space
    env._set_task_called = True  # noqa: SLF001
    env._freeze_rand_vec = False  # noqa: SLF001  new goal every reset ...
    env.seeded_rand_vec = True  # ... drawn from env.np_random, which we seed per episode
    env.max_path_length = 2**31 - 1  # we truncate ourselves (Meta-World raises past its own limit)
    return env


class MetaWorldEnv(CdredEnv):
    """One Meta-World v3 task (see the module docstring)."""

    def __init__(self, spec: TaskSpec, seed: int | None) -> None:
        import mujoco

        name = spec.task.split(":", 1)[1]
        self._env = build_mt1_env(name)
        self._model, self._data = self._env.model, self._env.data
        validate_camera(spec.task, self._model, spec.camera)
        self._spec_bits = _state_spec()
        self._n_sim = int(mujoco.mj_stateSize(self._model, self._spec_bits))
        n_model = sum(getattr(self._model, f).size for f in _MODEL_FIELDS)
        import dataclasses

        spec = dataclasses.replace(spec, obs_dim=int(self._env.observation_space.shape[0]),
                                   action_dim=int(self._env.action_space.shape[0]),
                                   physics_state_dim=self._n_sim + n_model)
        super().__init__(spec, seed)

    def _reset_sim(self, episode_seed: int) -> np.ndarray:
        import mujoco

        self._env.np_random = np.random.default_rng(derive(episode_seed, "sim"))
        obs, _ = self._env.reset()
        # reset() writes goal sites into the model after its last mj_forward: make data consistent so
        # that the first frame equals a re-render of the stored state
        mujoco.mj_forward(self._model, self._data)
        return obs

    def _step_sim(self, action: np.ndarray):
        obs, reward, terminated, _, info = self._env.step(action)
        extra = {k: float(v) for k, v in info.items() if k != "success" and np.isscalar(v)}
        return obs, float(reward), bool(terminated), bool(info.get("success", 0.0)), extra

    def _get_state(self) -> np.ndarray:
        import mujoco

        sim = np.empty(self._n_sim, dtype=np.float64)
        mujoco.mj_getState(self._model, self._data, sim, self._spec_bits)
        return np.concatenate([sim] + [getattr(self._model, f).ravel() for f in _MODEL_FIELDS])

    def _set_state(self, state: np.ndarray) -> None:
        import mujoco

        mujoco.mj_setState(self._model, self._data, np.ascontiguousarray(state[: self._n_sim]), self._spec_bits)
        i = self._n_sim
        for f in _MODEL_FIELDS:
            arr = getattr(self._model, f)
            arr[...] = state[i:i + arr.size].reshape(arr.shape)
            i += arr.size
        mujoco.mj_forward(self._model, self._data)

    def _scene(self):
        return self._model, self._data

    def _resolve_camera(self, camera: str | int | None) -> tuple[int | str, bool]:
        cam, _ = super()._resolve_camera(camera)
        return cam, (cam in ROTATED_CAMERAS)

    def close(self) -> None:
        super().close()
        self._env.close()


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
