"""``cdred envs``: the task table (dims, action repeat, episode length, usable here?) and a quick
random-action run of one task, to check that its simulator builds and steps."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

TABLE_HEADER = ("task", "obs", "act", "repeat", "ep_len", "usable here?")


def _dim(value: int | None) -> str:
    return "?" if value is None else str(value)


def task_rows(suite: str | None = None) -> tuple[list[tuple[str, ...]], list[str]]:
    """One row per listed task (see ``TABLE_HEADER``) and the distinct long reasons a suite or task is
    not usable here (the rows carry the short form)."""
    from cdred_pipeline.envs import list_tasks, suite_available, task_available

    rows, notes = [], {}
    for spec in list_tasks(suite):
        ok, why = task_available(spec.task) if spec.suite == "gym" else suite_available(spec.suite)
        short = why.split(" (")[0]
        if not ok and short != why:
            notes[short] = why
        rows.append((spec.task, _dim(spec.obs_dim), _dim(spec.action_dim), str(spec.action_repeat),
                     _dim(spec.episode_length), "yes" if ok else f"no: {short}"))
    return rows, list(notes.values())


def format_task_table(rows: list[tuple[str, ...]]) -> str:
    """``task_rows``' rows under ``TABLE_HEADER``, columns aligned."""
    widths = [max(len(r[i]) for r in [*rows, TABLE_HEADER]) for i in range(len(TABLE_HEADER) - 1)]
    fmt = "{:<%d}  {:>%d}  {:>%d}  {:>%d}  {:>%d}  {}" % tuple(widths)
    return "\n".join(fmt.format(*r) for r in [TABLE_HEADER, *rows])


def try_task(task: str, steps: int = 100, seed: int = 0) -> dict[str, Any]:
    """Build ``task``, reset it with ``seed`` and step it with uniform random actions for up to ``steps``
    agent steps (or to the end of the episode): its spec, the return and the agent steps per second."""
    from cdred_pipeline.envs import make_env

    env = make_env(task, seed=seed)
    try:
        spec = env.spec_info
        rng = np.random.default_rng(seed)
        env.reset(seed=seed)
        ret, n, t0 = 0.0, 0, time.perf_counter()
        for _ in range(steps):
            _, r, term, trunc, _ = env.step(rng.uniform(-1, 1, spec.action_dim))
            ret, n = ret + r, n + 1
            if term or trunc:
                break
        return {"spec": spec, "steps": n, "return": float(ret), "steps_per_s": n / (time.perf_counter() - t0)}
    finally:
        env.close()


def format_try(result: dict[str, Any]) -> str:
    """Two lines for ``try_task``'s result: the task's spec, then the random run."""
    s = result["spec"]
    return (f"{s.task}: obs {s.obs_dim}, action {s.action_dim}, repeat {s.action_repeat}, "
            f"episode {s.episode_length}, physics state {s.physics_state_dim}, camera {s.camera}\n"
            f"stepped {result['steps']} agent steps with random actions: return {result['return']:.3f}, "
            f"{result['steps_per_s']:.0f} agent steps/s")
