"""Environments: one factory for DMControl, Meta-World, ManiSkill2 and gymnasium tasks (docs/design.md §2).

```python
from cdred_pipeline.envs import make_env, list_tasks, TaskSpec, parse_task, scripted_policy
env = make_env("dmc:cheetah-run", obs="state", seed=0)
obs, info = env.reset(seed=1)
obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
state = env.get_physics_state(); frame = env.render_frame(64)
```

Heavy simulator imports happen inside ``make_env``; importing this package is cheap. Layers, each
importing only those below it: ``gl`` (MUJOCO_GL checks) -> ``spec`` (the static task table) ->
``base`` (the env base class) -> ``dmc``/``mw``/``ms2``/``gym_env``/``tremble`` (suites) ->
``factory`` (``make_env``) -> ``catalog`` (live probing: dims of built envs, availability).
"""

from cdred_pipeline.envs.base import CdredEnv, InvalidActionError
from cdred_pipeline.envs.catalog import list_tasks, probe_dims, suite_available, task_available
from cdred_pipeline.envs.factory import make_env
from cdred_pipeline.envs.gl import check_gl_env, check_gl_for_rendering
from cdred_pipeline.envs.mw import scripted_policy
from cdred_pipeline.envs.spec import (
    DEFAULT_ACTION_REPEAT,
    DEFAULT_EPISODE_LENGTH,
    GYM_LISTED,
    MS2_TASKS,
    OBS_KINDS,
    RENDER_PROFILES,
    SUITES,
    ParsedTask,
    TaskSpec,
    all_task_ids,
    closest_task_ids,
    default_camera,
    parse_task,
    reports_success,
)
from cdred_pipeline.envs.tremble import TrembleWrapper, check_tremble


__all__ = [
    "CdredEnv", "DEFAULT_ACTION_REPEAT", "DEFAULT_EPISODE_LENGTH", "GYM_LISTED", "InvalidActionError",
    "MS2_TASKS", "ParsedTask", "OBS_KINDS", "RENDER_PROFILES", "SUITES", "TaskSpec", "TrembleWrapper", "all_task_ids",
    "check_gl_env", "check_gl_for_rendering", "check_tremble", "closest_task_ids", "default_camera",
    "list_tasks", "make_env", "parse_task", "probe_dims", "reports_success", "scripted_policy", "suite_available",
    "task_available",
]
