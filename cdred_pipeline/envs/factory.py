"""``make_env``: one factory for every suite (docs/design.md §2, docs/interfaces.md)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from cdred_pipeline.envs.spec import (
    DEFAULT_ACTION_REPEAT,
    DEFAULT_EPISODE_LENGTH,
    OBS_KINDS,
    RENDER_PROFILES,
    TaskSpec,
    default_camera,
    parse_task,
)
from cdred_pipeline.envs.tremble import TrembleWrapper, check_tremble
from cdred_pipeline.errors import UsageError


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def make_env(task: str, *, obs: str = "state", seed: int | None = None, action_repeat: int | None = None,
             episode_length: int | None = None, tremble: float = 0.0, image_size: int = 64,
             camera: str | int | None = None, render_profile: str = "fast") -> gym.Env:
    """Build the gymnasium env for ``task`` (``dmc:cheetah-run``, ``mw:box-close``, ``ms2:lift-cube``,
    ``gym:Pendulum-v1``).

    Args:
        task: task id (see :func:`~cdred_pipeline.envs.spec.parse_task`).
        obs: ``"state"`` (float32 (obs_dim,)) or ``"rgb"`` (uint8 (9, image_size, image_size): three
            stacked frames of :meth:`render_frame`, channels-first).
        seed: seeds the sequence of episode seeds used when ``reset()`` gets no seed.
        action_repeat: simulator steps per agent step (default 2 for dmc/mw/ms2, 1 for gym).
        episode_length: agent steps per episode (default dmc 500, mw/ms2 100, gym: its TimeLimit).
        tremble: probability of replacing an action by a uniform random one (App. D.4); 0 = no wrapper.
        image_size: frame size for ``obs="rgb"`` and the default of ``render_frame``.
        camera: camera name or id (default per suite, see ``spec.default_camera``).
        render_profile: ``"fast"`` (no shadows/reflections/multisampling) or ``"default"`` (the model's look).

    Returns:
        A :class:`~cdred_pipeline.envs.base.CdredEnv` (or a :class:`TrembleWrapper` around one when
        ``tremble > 0``) with ``spec_info``, ``get_physics_state``, ``set_physics_state``, ``render_frame``.
        Actions outside [-1, 1] are clipped; NaN/inf actions raise.

    Raises:
        UsageError: unknown task id (with the closest ids), bad option values (exit code 2).
        MissingDependencyError: ManiSkill2 / Vulkan / Box2D missing (exit code 3).
        CdredError: invalid ``MUJOCO_GL`` (names ``MUJOCO_GL=egl``).
    """
    p = parse_task(task)
    spec, ep_given = _spec_of(p.task, p.suite, p.name, obs=obs, action_repeat=action_repeat,
                              episode_length=episode_length, image_size=image_size, camera=camera,
                              render_profile=render_profile)
    p_tremble = check_tremble(tremble)
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise UsageError(f"seed must be a non-negative int, got {seed!r}")
    env = _suite_env(spec, seed, ep_given)
    return TrembleWrapper(env, p_tremble) if p_tremble > 0.0 else env


def _spec_of(task: str, suite: str, name: str, *, obs: str, action_repeat: int | None,
             episode_length: int | None, image_size: int, camera: str | int | None,
             render_profile: str) -> tuple[TaskSpec, bool]:
    """The checked settings as a TaskSpec (dims unknown until the env is built), and whether the
    episode length was given."""
    if obs not in OBS_KINDS:
        raise UsageError(f"obs must be one of {', '.join(OBS_KINDS)}, got {obs!r}")
    if render_profile not in RENDER_PROFILES:
        raise UsageError(f"render_profile must be one of {', '.join(RENDER_PROFILES)}, got {render_profile!r}")
    image_size = _positive_int("image_size", image_size)
    repeat = DEFAULT_ACTION_REPEAT[suite] if action_repeat is None else _positive_int("action_repeat", action_repeat)
    ep = DEFAULT_EPISODE_LENGTH[suite] if episode_length is None else _positive_int("episode_length", episode_length)
    if isinstance(camera, str) and camera.lstrip("-").isdigit():
        camera = int(camera)
    cam = default_camera(suite, name) if camera is None else camera
    spec = TaskSpec(task=task, suite=suite, obs_dim=None, action_dim=None, action_repeat=repeat,
                    episode_length=ep, camera=cam, image_size=image_size, physics_state_dim=None,
                    render_profile=render_profile, obs=obs)
    return spec, episode_length is not None


def _suite_env(spec: TaskSpec, seed: int | None, episode_length_given: bool) -> Any:
    """The suite adapter for ``spec`` (its simulator is imported here, on first use)."""
    if spec.suite == "dmc":
        from cdred_pipeline.envs.dmc import DMCEnv

        return DMCEnv(spec, seed)
    if spec.suite == "mw":
        from cdred_pipeline.envs.mw import MetaWorldEnv

        return MetaWorldEnv(spec, seed)
    if spec.suite == "ms2":
        from cdred_pipeline.envs.ms2 import make_ms2_env

        return make_ms2_env(spec, seed)
    from cdred_pipeline.envs.gym_env import GymEnv

    return GymEnv(spec, seed, episode_length_given=episode_length_given)
