"""The static task table: task ids, task specs, suite defaults (docs/design.md §2).

Task ids look like ``dmc:cheetah-run``, ``mw:box-close``, ``ms2:lift-cube``, ``gym:Pendulum-v1``.
:func:`parse_task` turns an id (or a common alias of it) into its canonical form; an unknown id is a
:class:`~cdred_pipeline.errors.UsageError` (exit 2) naming the closest valid ids. The dmc and mw
task names and dims come from ``task_dims.json`` (:func:`recorded_dims`); when the installed
simulator versions differ from the recorded ones, the names come from the simulators' own task lists.
Nothing here builds an environment: live probing (dims of built envs, "usable here?") is
:mod:`cdred_pipeline.envs.catalog`, above the factory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from cdred_pipeline.envs.gl import check_gl_env
from cdred_pipeline.errors import CdredError, UsageError

SUITES: tuple[str, ...] = ("dmc", "mw", "ms2", "gym")
"""Suites, in the order ``cdred envs`` lists them."""

DEFAULT_ACTION_REPEAT: dict[str, int] = {"dmc": 2, "mw": 2, "ms2": 2, "gym": 1}
"""Action repeat per suite (TD-MPC2's defaults; gym envs are used as they are)."""

DEFAULT_EPISODE_LENGTH: dict[str, int | None] = {"dmc": 500, "mw": 100, "ms2": 100, "gym": None}
"""Episode length in agent steps (None for gym: the env's own TimeLimit, divided by the repeat)."""

RENDER_PROFILES: tuple[str, ...] = ("fast", "default")
OBS_KINDS: tuple[str, ...] = ("state", "rgb")
"""What an env observes: the state vector, or stacked rgb frames."""
"""``default``: the model's own look. ``fast``: shadows, reflections and multisampling off (about 7x
faster under software GL). The profile changes pixels, so it is part of the spec and the cache key."""

DMC_DOMAIN_ALIASES: dict[str, str] = {"cup": "ball_in_cup", "pointmass": "point_mass"}

# ManiSkill2 tasks as TD-MPC2 configures them (env id, controller). Dims are the paper's Table 4 where
# it gives them; the others are only known once ManiSkill2 builds the env.
MS2_TASKS: dict[str, dict[str, Any]] = {
    "lift-cube": dict(env_id="LiftCube-v0", control_mode="pd_ee_delta_pos", obs_dim=42, action_dim=4),
    "pick-cube": dict(env_id="PickCube-v0", control_mode="pd_ee_delta_pos", obs_dim=51, action_dim=4),
    "stack-cube": dict(env_id="StackCube-v0", control_mode="pd_ee_delta_pos", obs_dim=None, action_dim=4),
    "pick-ycb": dict(env_id="PickSingleYCB-v0", control_mode="pd_ee_delta_pose", obs_dim=None, action_dim=7),
    "turn-faucet": dict(env_id="TurnFaucet-v0", control_mode="pd_ee_delta_pose", obs_dim=40, action_dim=7),
}

# The gym ids `cdred envs --suite gym` lists: classic control and MuJoCo ids with a Box action space.
# Any other registered gymnasium id with a Box action space works with make_env as well.
GYM_LISTED: tuple[str, ...] = (
    "Pendulum-v1", "MountainCarContinuous-v0", "LunarLanderContinuous-v3", "BipedalWalker-v3",
    "Ant-v5", "HalfCheetah-v5", "Hopper-v5", "Humanoid-v5", "HumanoidStandup-v5",
    "InvertedDoublePendulum-v5", "InvertedPendulum-v5", "Pusher-v5", "Reacher-v5", "Swimmer-v5",
    "Walker2d-v5",
)

README_MS2_SECTION = "README section 'ManiSkill2 (optional extra)'"

DIMS_FILE = Path(__file__).with_name("task_dims.json")
"""Recorded dims of every dmc and mw task, with the simulator versions they were recorded with."""
_VERSIONED = ("mujoco", "dm_control", "metaworld", "gymnasium")


@dataclass(frozen=True)
class TaskSpec:
    """What a task looks like to the agent and to the dataset (docs/design.md §2, §6 ``attrs.env``).

    ``obs_dim`` is the state observation size (also for ``obs="rgb"`` envs, whose observation is
    ``(9, image_size, image_size)`` uint8); ``episode_length`` and ``action_repeat`` are in agent steps
    and simulator steps per agent step; ``physics_state_dim`` is the length of
    ``env.get_physics_state()`` (None where no simulator state is exposed). ``None`` in a dim means
    "unknown without building the env" (ManiSkill2 tasks outside the paper's table).
    """

    task: str
    suite: str
    obs_dim: int | None
    action_dim: int | None
    action_repeat: int
    episode_length: int | None
    camera: str | int | None
    image_size: int
    physics_state_dim: int | None
    render_profile: str = "fast"
    obs: str = "state"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (for dataset attrs and manifests)."""
        return dataclasses.asdict(self)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of the observations ``make_env`` returns for this spec."""
        if self.obs == "rgb":
            return (9, self.image_size, self.image_size)
        return (int(self.obs_dim or 0),)


class ParsedTask(NamedTuple):
    """A task id split into suite and suite-local name; ``task`` is the canonical id."""

    suite: str
    name: str
    task: str


# ------------------------------------------------------------------------------------ registries
@lru_cache(maxsize=None)
def dmc_tasks() -> tuple[tuple[str, str], ...]:
    """Every (domain, task) of ``dm_control.suite.ALL_TASKS``, without importing dm_control when the
    recorded table can answer."""
    table = recorded_dims()
    if table is not None:
        return tuple(tuple(k.split(":", 1)[1].split("-", 1)) for k in table if k.startswith("dmc:"))  # type: ignore[misc]
    check_gl_env()
    try:
        from dm_control.suite import ALL_TASKS
    except RuntimeError as exc:  # dm_control validates MUJOCO_GL at import
        raise CdredError(f"cannot import dm_control ({exc}); run with MUJOCO_GL=egl") from exc
    return tuple(ALL_TASKS)


@lru_cache(maxsize=None)
def mw_tasks() -> tuple[str, ...]:
    """The 50 Meta-World v3 task names without the ``-v3`` suffix (``box-close``, ...)."""
    table = recorded_dims()
    if table is not None:
        return tuple(k.split(":", 1)[1] for k in table if k.startswith("mw:"))
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(n[: -len("-v3")] for n in ALL_V3_ENVIRONMENTS)


@lru_cache(maxsize=None)
def gym_box_ids() -> tuple[str, ...]:
    """Registered gymnasium ids (used for suggestions; Box-action check happens in make_env)."""
    import gymnasium

    return tuple(sorted(gymnasium.registry.keys()))


def all_task_ids(suite: str | None = None) -> list[str]:
    """Canonical ids of every known task (gym: every registered id)."""
    ids: list[str] = []
    if suite in (None, "dmc"):
        ids += [f"dmc:{d}-{t}" for d, t in dmc_tasks()]
    if suite in (None, "mw"):
        ids += [f"mw:{n}" for n in mw_tasks()]
    if suite in (None, "ms2"):
        ids += [f"ms2:{n}" for n in MS2_TASKS]
    if suite in (None, "gym"):
        ids += [f"gym:{n}" for n in gym_box_ids()]
    return ids


def closest_task_ids(task: str, n: int = 3) -> list[str]:
    """The valid ids closest to ``task`` (difflib), best first."""
    ids = all_task_ids()
    key = task.strip()
    hits = difflib.get_close_matches(key, ids, n=n, cutoff=0.4)
    if not hits and ":" not in key:  # "cheetah-run": compare against the part after the prefix
        by_name = {i.split(":", 1)[1]: i for i in ids}
        hits = [by_name[h] for h in difflib.get_close_matches(key, list(by_name), n=n, cutoff=0.4)]
    if not hits:
        lowered = {i.lower(): i for i in ids}
        hits = [lowered[h] for h in difflib.get_close_matches(key.lower(), list(lowered), n=n, cutoff=0.3)]
    return hits


def _unknown(task: str, why: str = "unknown task id") -> UsageError:
    hits = closest_task_ids(task)
    near = f"; closest: {', '.join(hits)}" if hits else ""
    return UsageError(f"{why} {task!r}{near} (see `cdred envs` for the list)")


#: Suites without a success notion (DMControl judges by return only): their success columns stay empty.
SUITES_WITHOUT_SUCCESS = ("dmc",)


def reports_success(task: str) -> bool:
    """Whether the task's env has a success flag, by the id's suite prefix (any string, checked or not); a
    DMControl env's ``info["success"]`` is always False, so its success rate is shown as missing, not 0."""
    return str(task).split(":", 1)[0].strip().lower() not in SUITES_WITHOUT_SUCCESS


def parse_task(task: str) -> ParsedTask:
    """Split and canonicalise a task id.

    ``dmc:<domain>-<task>`` (``-`` or ``_`` inside the task name, TD-MPC2 aliases ``cup``/``pointmass``
    accepted), ``mw:<name>`` (with or without ``-v3``), ``ms2:<name>``, ``gym:<registered id>``.

    Raises:
        UsageError: unknown id, with the closest valid ids (exit code 2).
    """
    if not isinstance(task, str) or ":" not in task:
        raise _unknown(str(task), "task id needs a suite prefix (dmc:, mw:, ms2:, gym:), got")
    suite, name = task.split(":", 1)
    suite = suite.strip().lower()
    name = name.strip()
    if suite == "dmc":
        domain, _, rest = name.partition("-")
        domain = DMC_DOMAIN_ALIASES.get(domain, domain)
        tname = rest.replace("-", "_")
        if (domain, tname) in set(dmc_tasks()):
            return ParsedTask("dmc", f"{domain}-{tname}", f"dmc:{domain}-{tname}")
    elif suite == "mw":
        base = name[: -len("-v3")] if name.endswith("-v3") else name
        if base in set(mw_tasks()):
            return ParsedTask("mw", base, f"mw:{base}")
    elif suite == "ms2":
        if name in MS2_TASKS:
            return ParsedTask("ms2", name, f"ms2:{name}")
        by_env_id = {v["env_id"]: k for k, v in MS2_TASKS.items()}
        if name in by_env_id:
            return ParsedTask("ms2", by_env_id[name], f"ms2:{by_env_id[name]}")
    elif suite == "gym":
        if name in set(gym_box_ids()):
            return ParsedTask("gym", name, f"gym:{name}")
    raise _unknown(task)


# ------------------------------------------------------------------------------------ dims table
def dims_versions() -> dict[str, str]:
    """Installed versions of the simulators that decide the dims (``missing`` when not installed)."""
    out = {}
    for pkg in _VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


@lru_cache(maxsize=None)
def recorded_dims() -> dict[str, dict[str, int]] | None:
    """The recorded dims of every dmc and mw task, or None if absent or recorded with other versions."""
    if not DIMS_FILE.exists():
        return None
    data = json.loads(DIMS_FILE.read_text())
    if data.get("versions") != dims_versions():
        return None
    return data["tasks"]


def clear_caches() -> None:
    """Forget the recorded table and the task lists read from it (after ``task_dims.json`` changed)."""
    recorded_dims.cache_clear()
    dmc_tasks.cache_clear()
    mw_tasks.cache_clear()


# ------------------------------------------------------------------------------------ cameras
def default_camera(suite: str, name: str) -> str | int | None:
    """The camera make_env renders with by default.

    dmc: camera id 0 (quadruped: 2), as TD-MPC2. mw: ``corner4``, Meta-World v3's copy of TD-MPC2's
    moved ``corner2`` (pos 0.75 0.075 0.7), rendered rotated by 180 degrees (the corner cameras are
    upside-down in the XML). gym MuJoCo: camera 0 when the model has one, else the free camera (-1).
    """
    if suite == "dmc":
        return 2 if name.split("-")[0] == "quadruped" else 0
    if suite == "mw":
        return "corner4"
    if suite == "ms2":
        return "render_camera"
    return None
