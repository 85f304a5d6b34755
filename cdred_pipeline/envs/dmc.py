"""DeepMind Control Suite tasks (``dmc:<domain>-<task>``) as :class:`CdredEnv`.

Observation: the task's observation dict flattened in the order of ``observation_spec()`` (the order
dm_control defines, as TD-MPC2 does), float32. Actions in [-1, 1] are mapped linearly onto the action
spec's bounds. ``info["success"]`` is always False (DMControl has no success notion). Episodes never
end early except where a task signals termination (discount 0).

Physics state: ``physics.get_state()`` (qpos, qvel, act) followed by the model arrays this domain's
``initialize_episode`` writes (found by diffing every model array across resets; the test suite checks
that no other array changes). quadruped-escape's random terrain is carried as its 30x30 bump grid and
rebuilt exactly as dm_control builds it (the 201x201 height field would be 40k floats per step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cdred_pipeline.seeding import derive
from cdred_pipeline.envs.base import CdredEnv, validate_camera
from cdred_pipeline.envs.gl import check_gl_env
from cdred_pipeline.envs.spec import TaskSpec
from cdred_pipeline.errors import CdredError

# Model arrays each domain rewrites per episode (whole arrays; they are small). Measured with
# tests/test_envs.py::test_dmc_model_fields_cover_resets over every suite task.
DMC_MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "finger": ("site_pos", "site_size", "site_rgba", "dof_damping"),
    "fish": ("geom_pos", "geom_rgba"),
    "manipulator": ("body_pos", "body_quat"),
    "point_mass": ("wrap_prm",),
    "reacher": ("geom_pos", "geom_size"),
    "stacker": ("body_pos",),
    "swimmer": ("geom_pos", "light_pos"),
}
_ESCAPE = ("quadruped", "escape")


def import_suite():
    """``dm_control.suite`` with a one-line error for a bad MUJOCO_GL, and numpy-2 compatibility.

    dm_control 1.0.28's quadruped calls ``np.in1d``, removed in numpy 2.4; we give that one module a
    numpy proxy that has it (numpy itself is left untouched).
    """
    check_gl_env()
    try:
        from dm_control import suite
    except RuntimeError as exc:  # dm_control validates MUJOCO_GL at import
        raise CdredError(f"cannot import dm_control ({exc}); run with MUJOCO_GL=egl") from exc
    from dm_control.suite import quadruped

    if not hasattr(quadruped.np, "in1d"):
        import types

        class _NumpyCompat(types.ModuleType):
            def __getattr__(self, name: str) -> Any:
                return getattr(np, name)

        compat = _NumpyCompat("numpy")
        compat.in1d = lambda a, b, **kw: np.isin(a, b, **kw).ravel()  # type: ignore[attr-defined]
        quadruped.np = compat
    return suite


class DMCEnv(CdredEnv):
    """One dm_control suite task (see the module docstring)."""

    def __init__(self, spec: TaskSpec, seed: int | None) -> None:
        suite = import_suite()
        domain, task = spec.task.split(":", 1)[1].split("-", 1)
        self._domain, self._task_name = domain, task
        self._env = suite.load(domain, task, task_kwargs={"random": 0})
        self._env._step_limit = float("inf")  # noqa: SLF001  we truncate at episode_length ourselves
        self._physics = self._env.physics
        aspec = self._env.action_spec()
        self._a_low = np.asarray(aspec.minimum, dtype=np.float64) * np.ones(aspec.shape)
        self._a_high = np.asarray(aspec.maximum, dtype=np.float64) * np.ones(aspec.shape)
        self._a_dtype = aspec.dtype
        self._obs_keys = list(self._env.observation_spec().keys())
        obs_dim = int(sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values()))
        model = self._physics.model.ptr
        self._fields = [f for f in DMC_MODEL_FIELDS.get(domain, ())]
        self._escape = (domain, task) == _ESCAPE
        if self._escape:
            from dm_control.suite import quadruped

            hid = quadruped._HEIGHTFIELD_ID  # noqa: SLF001
            self._hfield_id = hid
            self._hfield_res = int(model.hfield_nrow[hid])
            size = 2 * model.hfield_size[hid, 0]
            self._bump_res = int(size / quadruped._TERRAIN_BUMP_SCALE)  # noqa: SLF001
            self._bumps = np.zeros((self._bump_res, self._bump_res))  # zero bumps = the XML's flat terrain
        state_dim = self._physics.get_state().size + sum(getattr(model, f).size for f in self._fields)
        if self._escape:
            state_dim += self._bumps.size
        validate_camera(spec.task, model, spec.camera)
        spec = _replace(spec, obs_dim=obs_dim, action_dim=int(np.prod(aspec.shape)), physics_state_dim=state_dim)
        super().__init__(spec, seed)

    # -------------------------------------------------------------------------- simulator hooks
    @property
    def physics(self) -> Any:
        """The dm_control ``Physics`` of the current episode, for reading positions in analyses
        (``physics.named.data.geom_xpos["finger"]``); stepping or editing it desynchronises the env."""
        return self._physics

    def _flat_obs(self, obs: dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.asarray(obs[k], dtype=np.float64).reshape(-1) for k in self._obs_keys])

    def _reset_sim(self, episode_seed: int) -> np.ndarray:
        self._env.task.random.seed(derive(episode_seed, "sim"))  # reseeds the task's RandomState in place
        if self._escape:
            # the terrain's bumps are the first draw of Escape.initialize_episode: replay it to record them
            rs = np.random.RandomState()
            rs.set_state(self._env.task.random.get_state())
            from dm_control.suite import quadruped

            self._bumps = rs.uniform(quadruped._TERRAIN_SMOOTHNESS, 1, (self._bump_res,) * 2)  # noqa: SLF001
        ts = self._env.reset()
        if self._escape:
            self._check_terrain()
            self._sync_hfield()
        return self._flat_obs(ts.observation)

    def _step_sim(self, action: np.ndarray):
        a = self._a_low + (action.astype(np.float64) + 1.0) * 0.5 * (self._a_high - self._a_low)
        ts = self._env.step(a.astype(self._a_dtype))
        terminated = bool(ts.last() and ts.discount == 0.0)
        return self._flat_obs(ts.observation), float(ts.reward or 0.0), terminated, False, {}

    def _get_state(self) -> np.ndarray:
        model = self._physics.model.ptr
        parts = [self._physics.get_state()] + [np.asarray(getattr(model, f), dtype=np.float64).ravel()
                                              for f in self._fields]
        if self._escape:
            parts.append(self._bumps.ravel())
        return np.concatenate(parts)

    def _set_state(self, state: np.ndarray) -> None:
        model = self._physics.model.ptr
        n = self._physics.get_state().size
        self._physics.set_state(state[:n])
        i = n
        for f in self._fields:
            arr = getattr(model, f)
            arr[...] = state[i:i + arr.size].reshape(arr.shape)
            i += arr.size
        if self._escape:
            bumps = state[i:i + self._bumps.size].reshape(self._bumps.shape)
            if not np.array_equal(bumps, self._bumps):
                self._bumps = bumps.copy()
                model.hfield_data[self._hfield_slice()] = self._terrain(self._bumps)
                self._sync_hfield()
        self._physics.forward()

    def _scene(self):
        return self._physics.model.ptr, self._physics.data.ptr

    # -------------------------------------------------------------------------- quadruped-escape terrain
    def _hfield_slice(self) -> slice:
        start = int(self._physics.model.ptr.hfield_adr[self._hfield_id])
        return slice(start, start + self._hfield_res**2)

    def _terrain(self, bumps: np.ndarray) -> np.ndarray:
        """dm_control's quadruped.Escape terrain for given bumps (same operations, same bits)."""
        from scipy import ndimage

        res = self._hfield_res
        row_grid, col_grid = np.ogrid[-1:1:res * 1j, -1:1:res * 1j]
        radius = np.clip(np.sqrt(col_grid**2 + row_grid**2), .04, 1)
        bowl_shape = .5 - np.cos(2 * np.pi * radius) / 2
        smooth_bumps = ndimage.zoom(bumps, res / float(self._bump_res))
        return (bowl_shape * smooth_bumps).ravel()

    def _check_terrain(self) -> None:
        got = self._physics.model.ptr.hfield_data[self._hfield_slice()]
        if not np.array_equal(got, self._terrain(self._bumps).astype(got.dtype)):
            raise CdredError("quadruped-escape terrain could not be reproduced from its bumps "
                             "(dm_control changed?): physics states of this task would not re-render")

    def _sync_hfield(self) -> None:
        """The model's terrain changed: push it to existing GL contexts (new ones upload it themselves)."""
        if self._mj_renderer is not None:
            self._mj_renderer.upload_hfield(self._hfield_id)

    def close(self) -> None:
        super().close()
        self._env.close()


def _replace(spec: TaskSpec, **kw: Any) -> TaskSpec:
    import dataclasses

    return dataclasses.replace(spec, **kw)
