"""The environment base class shared by every suite, and MuJoCo rendering (docs/design.md §2).

A suite adapter implements five hooks (``_reset_sim``, ``_step_sim``, ``_get_state``, ``_set_state``,
``_scene``); :class:`CdredEnv` adds what is common: actions in [-1, 1] (clipped, non-finite raises),
action repeat with summed rewards, truncation at ``episode_length`` agent steps, seeded resets,
``obs="rgb"`` frame stacking, ``render_frame`` through ``mujoco.Renderer`` with a render profile, and
``get_physics_state`` / ``set_physics_state`` validation.
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from cdred_pipeline.envs.gl import GL_HINT, check_gl_for_rendering
from cdred_pipeline.envs.spec import RENDER_PROFILES, TaskSpec
from cdred_pipeline.errors import CdredError, UsageError


class InvalidActionError(UsageError):
    """An action of the wrong shape or with NaN/inf entries (exit code 2)."""


def validate_camera(task: str, model: Any, camera: str | int | None) -> None:
    """Raise a one-line UsageError unless ``camera`` names a camera of ``model`` (or is None / -1)."""
    if camera is None:
        return
    import mujoco

    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    if isinstance(camera, str) and not camera.lstrip("-").isdigit():
        if camera in names:
            return
    else:
        if -1 <= int(camera) < model.ncam:
            return
    listed = ", ".join(f"{i}={n}" for i, n in enumerate(names)) or "none"
    raise UsageError(f"{task} has no camera {camera!r}; cameras: {listed} (or -1, the free camera)")


_LIVE_RENDERERS: "weakref.WeakSet[MjFrameRenderer]" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_renderers() -> None:
    """Free GL contexts before mujoco's EGL atexit hook terminates the display (else noisy __del__)."""
    for r in list(_LIVE_RENDERERS):
        r.close()


class MjFrameRenderer:
    """``mujoco.Renderer`` instances for one model, one per image size, all with one render profile.

    ``fast`` sets ``model.vis.quality.offsamples = 0`` before creating a context (no multisampling) and
    turns the scene's shadow and reflection flags off; ``default`` leaves the model's look as it is.
    """

    def __init__(self, model: Any, profile: str) -> None:
        if profile not in RENDER_PROFILES:
            raise UsageError(f"unknown render profile {profile!r}: use one of {', '.join(RENDER_PROFILES)}")
        self.model = model
        self.profile = profile
        self._renderers: dict[int, Any] = {}
        _LIVE_RENDERERS.add(self)

    def get(self, size: int) -> Any:
        """The renderer for ``size`` x ``size`` images (created on first use)."""
        r = self._renderers.get(size)
        if r is not None:
            return r
        check_gl_for_rendering()
        import mujoco

        vis = self.model.vis
        if size > min(vis.global_.offwidth, vis.global_.offheight):
            vis.global_.offwidth = max(vis.global_.offwidth, size)
            vis.global_.offheight = max(vis.global_.offheight, size)
        if self.profile == "fast":
            vis.quality.offsamples = 0
        global _ATEXIT_REGISTERED
        try:
            r = mujoco.Renderer(self.model, height=size, width=size)
            if not _ATEXIT_REGISTERED:  # registered after mujoco's EGL hook, so it runs before it
                atexit.register(_close_live_renderers)
                _ATEXIT_REGISTERED = True
        except Exception as exc:  # GL context creation failed: the backend is missing or broken
            gl = os.environ.get("MUJOCO_GL", "unset")
            raise CdredError(f"cannot create an OpenGL context (MUJOCO_GL={gl}: {exc}); {GL_HINT}") from exc
        if self.profile == "fast":
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderers[size] = r
        return r

    def upload_hfield(self, hfield_id: int) -> None:
        """Push a changed height field to every existing GL context (new contexts upload it themselves)."""
        import mujoco

        for r in self._renderers.values():
            # mujoco.Renderer keeps its contexts private; this is what dm_control does for quadruped-escape
            r._gl_context.make_current()  # noqa: SLF001
            mujoco.mjr_uploadHField(self.model, r._mjr_context, hfield_id)  # noqa: SLF001

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


class CdredEnv(gym.Env):
    """A task as a gymnasium Env with the contract of ``docs/interfaces.md``.

    * Actions: float arrays of shape ``(action_dim,)`` in [-1, 1]; entries outside are **clipped** to
      [-1, 1] (the clipped action is what runs and what ``info["executed_action"]`` reports); a wrong
      shape or a NaN/inf entry raises :class:`InvalidActionError`.
    * One agent step = ``action_repeat`` simulator steps with the same action; rewards are summed; the
      inner loop stops early if the simulator terminates.
    * ``truncated`` becomes True at ``episode_length`` agent steps; stepping after the end raises.
    * Seeds: ``reset(seed=s)`` gives the same episode for the same ``s`` (given the same actions);
      ``reset()`` draws the episode seed from a generator seeded by make_env's ``seed``.
      ``env.episode_seed`` is the seed of the current episode.
    * ``obs="rgb"``: uint8 ``(9, H, W)``, the last three frames of :meth:`render_frame`, channels-first,
      oldest first; at reset the first frame is repeated three times (as TD-MPC2's pixel wrapper).
      ``info["state"]`` then carries the float32 state observation.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    FRAME_STACK = 3

    def __init__(self, spec: TaskSpec, seed: int | None) -> None:
        super().__init__()
        self.spec_info = spec
        self.action_space = gym.spaces.Box(-1.0, 1.0, (spec.action_dim,), dtype=np.float32)
        if spec.obs == "rgb":
            self.observation_space = gym.spaces.Box(0, 255, spec.obs_shape, dtype=np.uint8)
        else:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), dtype=np.float32)
        self._seed_rng = np.random.default_rng(seed)
        self.episode_seed: int | None = None
        self._t = 0
        self._needs_reset = True
        self._frames: deque[np.ndarray] = deque(maxlen=self.FRAME_STACK)
        self._mj_renderer: MjFrameRenderer | None = None

    @property
    def control_dt(self) -> float | None:
        """Seconds of simulated time per agent step (action repeat included): the frame period of a
        rollout video at the control rate. None where the simulator does not say."""
        inner = getattr(self, "_env", None)
        if hasattr(inner, "control_timestep"):  # dm_control
            dt = float(inner.control_timestep())
        elif isinstance(getattr(inner, "dt", None), (int, float)):  # Meta-World and gymnasium MuJoCo envs
            dt = float(inner.dt)
        else:
            return None
        return dt * self.spec_info.action_repeat

    # ------------------------------------------------------------------ hooks for the suites
    def _reset_sim(self, episode_seed: int) -> np.ndarray:
        """Reset the simulator for ``episode_seed``; return the state observation."""
        raise NotImplementedError

    def _step_sim(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One simulator step with an action in [-1, 1]: (obs, reward, terminated, success, extra info)."""
        raise NotImplementedError

    def _get_state(self) -> np.ndarray:
        raise UsageError(f"{self.spec_info.task} exposes no physics state")

    def _set_state(self, state: np.ndarray) -> None:
        raise UsageError(f"{self.spec_info.task} exposes no physics state")

    def _scene(self) -> tuple[Any, Any]:
        """(MjModel, MjData) to render, for MuJoCo suites."""
        raise UsageError(f"{self.spec_info.task} cannot render frames")

    def _resolve_camera(self, camera: str | int | None) -> tuple[int | str, bool]:
        """(camera for ``update_scene``, whether the image must be rotated by 180 degrees)."""
        cam = self.spec_info.camera if camera is None else camera
        return (-1 if cam is None else cam), False

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; same ``seed`` -> same initial state (and goal, for Meta-World)."""
        if seed is not None:
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise UsageError(f"reset seed must be a non-negative int, got {seed!r}")
            seed = int(seed)
        else:
            seed = int(self._seed_rng.integers(0, 2**31 - 1))
        super().reset(seed=seed)
        self.episode_seed = seed
        state_obs = self._reset_sim(seed)
        self._t = 0
        self._needs_reset = False
        info: dict[str, Any] = {"success": False, "episode_seed": seed}
        return self._observe(state_obs, info, reset=True), info

    def step(self, action: Any):
        """One agent step (``action_repeat`` simulator steps); see the class docstring."""
        if self._needs_reset:
            raise UsageError("step() called before reset() or after the episode ended: call reset() first")
        act = self.check_action(action)
        reward = 0.0
        terminated = success = False
        extra: dict[str, Any] = {}
        for _ in range(self.spec_info.action_repeat):
            state_obs, r, terminated, success, extra = self._step_sim(act)
            reward += float(r)
            if terminated:
                break
        self._t += 1
        ep = self.spec_info.episode_length
        truncated = bool(not terminated and ep is not None and self._t >= ep)
        self._needs_reset = bool(terminated or truncated)
        info: dict[str, Any] = dict(extra)
        info.update(success=bool(success), executed_action=act.copy(), trembled=False, t=self._t)
        return self._observe(state_obs, info, reset=False), reward, bool(terminated), truncated, info

    def check_action(self, action: Any) -> np.ndarray:
        """Validate an agent action: float32 copy, shape (A,), finite, clipped to [-1, 1]."""
        a = np.asarray(action, dtype=np.float32)
        shape = (self.spec_info.action_dim,)
        if a.shape != shape:
            if a.size == shape[0]:
                a = a.reshape(shape)
            else:
                raise InvalidActionError(f"action has shape {a.shape}, {self.spec_info.task} needs {shape}")
        if not np.all(np.isfinite(a)):
            raise InvalidActionError(f"action has non-finite entries {a.tolist()}: actions must be finite")
        return np.clip(a, -1.0, 1.0)

    def _observe(self, state_obs: np.ndarray, info: dict[str, Any], reset: bool) -> np.ndarray:
        state_obs = np.asarray(state_obs, dtype=np.float32).reshape(-1)
        if self.spec_info.obs != "rgb":
            return state_obs
        info["state"] = state_obs
        frame = self.render_frame().transpose(2, 0, 1)
        for _ in range(self.FRAME_STACK if reset else 1):
            self._frames.append(frame)
        return np.concatenate(list(self._frames), axis=0)

    # ------------------------------------------------------------------ physics state and rendering
    def get_physics_state(self) -> np.ndarray:
        """Flat float64 simulator state of this step; restores the exact rendered frame in a fresh env
        of the same task (``set_physics_state``). Layout per suite: see the suite's ``_get_state``."""
        s = np.asarray(self._get_state(), dtype=np.float64).reshape(-1)
        return s.copy()

    def set_physics_state(self, state: np.ndarray) -> None:
        """Restore a state from :meth:`get_physics_state` (this or a fresh env of the same task).

        It sets the simulator (and the per-episode model arrays it carries) and recomputes derived
        quantities; it does not touch the step counter or the rgb frame stack. Meant for re-rendering.
        """
        s = np.asarray(state, dtype=np.float64).reshape(-1)
        dim = self.spec_info.physics_state_dim
        if dim is None:
            self._set_state(s)  # raises for suites without a state
            return
        if s.shape != (dim,):
            raise UsageError(f"physics state has {s.size} entries, {self.spec_info.task} needs {dim}")
        if not np.all(np.isfinite(s)):
            raise UsageError("physics state has non-finite entries")
        self._set_state(s)

    def render_frame(self, size: int | None = None, camera: str | int | None = None) -> np.ndarray:
        """uint8 (size, size, 3) image of the current state via ``mujoco.Renderer`` (never gymnasium's
        ``render``); the same pixels the rgb observation holds. ``size`` defaults to ``image_size``,
        ``camera`` to the task's default camera (see :func:`~cdred_pipeline.envs.spec.default_camera`)."""
        renderer, data, cam, rotate = self.frame_renderer(size, camera)
        try:
            renderer.update_scene(data, camera=cam)
        except ValueError as exc:  # unknown camera name / id out of range
            raise UsageError(f"{self.spec_info.task}: {exc}") from exc
        img = renderer.render()
        if rotate:
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def frame_renderer(self, size: int | None = None, camera: str | int | None = None) -> tuple[Any, Any, int | str, bool]:
        """What :meth:`render_frame` renders with: the ``mujoco.Renderer`` for ``size`` (render profile
        applied), the MjData, the camera, and whether the image is turned by 180 degrees (benchmarks
        time the renderer alone with it)."""
        size = self.spec_info.image_size if size is None else int(size)
        if size <= 0:
            raise UsageError(f"image size must be positive, got {size}")
        model, data = self._scene()
        if self._mj_renderer is None:
            self._mj_renderer = MjFrameRenderer(model, self.spec_info.render_profile)
        cam, rotate = self._resolve_camera(camera)
        return self._mj_renderer.get(size), data, cam, rotate

    def close(self) -> None:
        if self._mj_renderer is not None:
            self._mj_renderer.close()
            self._mj_renderer = None
        super().close()
