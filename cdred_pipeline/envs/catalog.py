"""The live catalog: which tasks are usable here, and their dims (docs/design.md §2).

Above the factory: :func:`probe_dims` builds an env once to read its dims. :func:`list_tasks`
answers from the recorded table (``task_dims.json``, :func:`cdred_pipeline.envs.spec.recorded_dims`)
without building envs; when the installed simulator versions differ from the recorded ones, dims are
probed live by building each env once (a few seconds, cached in-process). :func:`suite_available`
and :func:`task_available` say whether a suite or task can step on this machine, and why not.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

from cdred_pipeline.envs.factory import make_env
from cdred_pipeline.envs.gl import gl_env_valid
from cdred_pipeline.envs.ms2 import ms2_unavailable_reason
from cdred_pipeline.envs.spec import (
    DEFAULT_ACTION_REPEAT,
    DEFAULT_EPISODE_LENGTH,
    DIMS_FILE,
    GYM_LISTED,
    MS2_TASKS,
    SUITES,
    TaskSpec,
    all_task_ids,
    clear_caches,
    default_camera,
    dims_versions,
    parse_task,
    recorded_dims,
)
from cdred_pipeline.errors import UsageError

#: gym ids whose simulator is Box2D (``gymnasium[box2d]``).
BOX2D_GYM = ("LunarLanderContinuous", "BipedalWalker", "BipedalWalkerHardcore", "CarRacing", "LunarLander")
_NO_DIMS: dict[str, int | None] = {"obs_dim": None, "action_dim": None, "physics_state_dim": None,
                                   "episode_length": None}


# ---------------------------------------------------------------------------------- availability
def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _gl_problem() -> str | None:
    if gl_env_valid():
        return None
    return f"MUJOCO_GL={os.environ['MUJOCO_GL']} is invalid (use MUJOCO_GL=egl)"


@lru_cache(maxsize=None)
def suite_available(suite: str) -> tuple[bool, str]:
    """Whether ``suite`` can step on this machine, and why not (empty reason when it can).

    Cheap: checks imports and (for ManiSkill2) that a Vulkan loader exists; it does not render.
    """
    if suite not in SUITES:
        raise UsageError(f"unknown suite {suite!r}: use one of {', '.join(SUITES)}")
    if suite in ("dmc", "mw") and _gl_problem():
        return False, str(_gl_problem())
    module = {"dmc": "dm_control", "mw": "metaworld", "gym": "gymnasium"}.get(suite)
    if module is not None:
        return (True, "") if _has_module(module) else (False, f"{module} not installed")
    reason = ms2_unavailable_reason()
    return (reason is None), (reason or "")


def task_available(task: str) -> tuple[bool, str]:
    """Suite availability plus per-task extras (gym MuJoCo ids need a valid GL, Box2D ids ``box2d``)."""
    p = parse_task(task)
    ok, why = suite_available(p.suite)
    if not ok or p.suite != "gym":
        return ok, why
    if "mujoco" in str(_gym_entry_point(p.name)) and _gl_problem():
        return False, str(_gl_problem())
    if p.name.split("-")[0] in BOX2D_GYM and not _has_module("Box2D"):
        return False, "needs gymnasium[box2d] (box2d not installed)"
    return True, ""


def _gym_entry_point(gid: str) -> object:
    import gymnasium

    return gymnasium.spec(gid).entry_point


# ------------------------------------------------------------------------------------ live dims
def probe_dims(task: str) -> dict[str, int | None]:
    """Build the env once and read its dims (obs, action, physics state, episode length)."""
    env = make_env(task, seed=0)
    try:
        s = env.spec_info
        return {"obs_dim": s.obs_dim, "action_dim": s.action_dim, "physics_state_dim": s.physics_state_dim,
                "episode_length": s.episode_length}
    finally:
        env.close()


@lru_cache(maxsize=None)
def live_dims(suite: str) -> dict[str, dict[str, int | None]]:
    """Dims of every task of ``suite`` (gym: :data:`GYM_LISTED`), each probed by building its env."""
    from tqdm import tqdm

    ids = all_task_ids(suite) if suite != "gym" else [f"gym:{g}" for g in GYM_LISTED]
    out = {}
    for t in tqdm(ids, desc=f"probing {suite} dims", disable=len(ids) < 20, leave=False):
        if suite == "gym" and not task_available(t)[0]:
            out[t] = dict(_NO_DIMS)
            continue
        out[t] = probe_dims(t)
    return out


def regenerate_table() -> Path:
    """Rebuild ``task_dims.json`` by building every dmc and mw env (about 20 s)."""
    clear_caches()
    saved = None
    if DIMS_FILE.exists():  # make the registries come from the simulators, not the old table
        saved = DIMS_FILE.read_text()
        DIMS_FILE.unlink()
    try:
        live_dims.cache_clear()
        tasks: dict[str, dict[str, int | None]] = {**live_dims("dmc"), **live_dims("mw")}
    except BaseException:
        if saved is not None:
            DIMS_FILE.write_text(saved)
        raise
    DIMS_FILE.write_text(json.dumps({"versions": dims_versions(), "tasks": tasks}, indent=1) + "\n")
    clear_caches()
    return DIMS_FILE


# ------------------------------------------------------------------------------------ list_tasks
def _ms2_specs() -> list[TaskSpec]:
    return [TaskSpec(f"ms2:{name}", "ms2", cfg["obs_dim"], cfg["action_dim"], DEFAULT_ACTION_REPEAT["ms2"],
                     DEFAULT_EPISODE_LENGTH["ms2"], default_camera("ms2", name), 64, None)
            for name, cfg in MS2_TASKS.items()]


def list_tasks(suite: str | None = None) -> list[TaskSpec]:
    """A :class:`TaskSpec` per task of ``suite`` (all suites if None), with default settings.

    gym lists :data:`GYM_LISTED` only (any registered Box-action id works with make_env). Use
    :func:`suite_available` / :func:`task_available` for "usable here?".
    """
    if suite is not None and suite not in SUITES:
        raise UsageError(f"unknown suite {suite!r}: use one of {', '.join(SUITES)}")
    specs: list[TaskSpec] = []
    for s in SUITES if suite is None else (suite,):
        if s == "ms2":
            specs += _ms2_specs()
            continue
        table = live_dims("gym") if s == "gym" else (recorded_dims() or live_dims(s))
        for tid, dims in table.items():
            if not tid.startswith(f"{s}:"):
                continue
            ep = dims.get("episode_length") if s == "gym" else DEFAULT_EPISODE_LENGTH[s]
            specs.append(TaskSpec(tid, s, dims["obs_dim"], dims["action_dim"], DEFAULT_ACTION_REPEAT[s], ep,
                                  default_camera(s, tid.split(":", 1)[1]), 64, dims["physics_state_dim"]))
    return specs
