"""The one rollout loop: K environments stepped together, one batched policy call per step.

Every stage that rolls episodes goes through :func:`run_vector_episodes`; one env is the K = 1 case.
K envs run ``len(seeds)`` episodes; each env takes the next episode seed when its episode ends; every
step stacks the active envs' observations and makes ONE call of the stage's ``act`` function; what an
episode records is the business of its :class:`EpisodeRecorder`.

```python
results = run_eval_episodes([env], agent, seeds)                        # evaluation, (result, frames) per episode
eps = run_trajectories(envs, seeds, random_act(seed, action_dim))       # obs (T+1, ...), action, reward, ...
eps = run_trajectories(envs, seeds, agent_act(agent, per_row=True), record_state=True)
with single_thread(agent.device):                                       # batched CPU inference on one thread
    ...
```

The agent's acting (:meth:`TDMPC2Agent.act_batch`) keeps each episode's warm-start mean and generator
in an :class:`~cdred_pipeline.agent.agent.ActState` held by the episode's :class:`Slot`. The policy
prior (paper Eq. 1-2) acts on all rows in one forward pass; MPPI (App. B.2, Alg. 2) plans one row at
a time, so the envs still step together but each one plans on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@contextlib.contextmanager
def single_thread(device: Any) -> Iterator[None]:
    """Batched CPU inference on one torch thread: for a few rows, thread hand-offs cost more than they
    save (measured 0.3 ms vs 8-80 ms per step with 2 threads on 2 busy cores), and the batched rows
    then do not depend on the machine's thread count. A no-op on other devices."""
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ the loop
class EpisodeRecorder(Protocol):
    """What one episode keeps; one recorder per episode, built by ``make_recorder(index)``."""

    def on_reset(self, env: Any, obs: np.ndarray, info: dict[str, Any]) -> None:
        """After ``env.reset(seed=...)``."""

    def on_step(self, env: Any, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, reward: float,
                terminated: bool, truncated: bool, info: dict[str, Any]) -> None:
        """After ``env.step(action)``; ``obs`` is the observation the action was chosen on."""

    def result(self, env: Any) -> Any:
        """The episode's result, once it has ended (``env`` is still at its final state)."""


@dataclass
class Slot:
    """An env's current episode: its index into ``seeds``, its reset seed, the last observation, its
    recorder, and ``state``: per-episode policy state the ``act`` function keeps (an agent's
    ``ActState``, a random generator; empty at the episode's start)."""

    index: int
    seed: int
    obs: np.ndarray
    recorder: Any
    state: dict[str, Any] = field(default_factory=dict)


BatchAct = Callable[[np.ndarray, list[Slot]], np.ndarray]
"""``act(obs (K, ...), slots) -> actions (K, A)``: one call per step for the K active envs."""


def run_vector_episodes(envs: Sequence[Any], seeds: Sequence[int], act: BatchAct,
                        make_recorder: Callable[[int], EpisodeRecorder], *,
                        on_episode: Callable[[int, Any], None] | None = None, keep: bool = True,
                        start: int = 0) -> list[Any]:
    """Run episodes ``start .. len(seeds) - 1`` on the envs stepped together, one ``act`` call per step.

    Episode ``i`` is reset with ``seeds[i]`` on whichever env is free (envs take the next episode in
    index order, lowest env first), so it runs as it would alone when ``act`` gives each row the
    action it would give that observation alone. ``on_episode(i, result)`` is called as episodes end
    (not in index order when several envs run); returns the results by index (``None`` before
    ``start``, and everywhere when ``keep`` is False: a caller that writes results as they come need
    not hold them all). ``start``: resume a run whose first episodes are done (``Slot.index`` stays
    the episode's index in ``seeds``).
    """
    todo = list(range(start, len(seeds)))
    slots: list[Slot | None] = [None] * len(envs)
    results: list[Any] = [None] * len(seeds)

    def begin(k: int) -> None:
        if not todo:
            slots[k] = None
            return
        i = todo.pop(0)
        rec = make_recorder(i)
        obs, info = envs[k].reset(seed=int(seeds[i]))
        rec.on_reset(envs[k], obs, info)
        slots[k] = Slot(index=i, seed=int(seeds[i]), obs=obs, recorder=rec)

    for k in range(len(envs)):
        begin(k)
    while any(s is not None for s in slots):
        active = [k for k, s in enumerate(slots) if s is not None]
        batch = [slots[k] for k in active]
        actions = act(np.stack([s.obs for s in batch]), batch)
        for j, k in enumerate(active):
            s = batch[j]
            next_obs, reward, terminated, truncated, info = envs[k].step(actions[j])
            s.recorder.on_step(envs[k], s.obs, actions[j], next_obs, reward, terminated, truncated, info)
            s.obs = next_obs
            if terminated or truncated:
                out = s.recorder.result(envs[k])
                if keep:
                    results[s.index] = out
                if on_episode is not None:
                    on_episode(s.index, out)
                begin(k)
    return results


def agent_act(agent: Any, *, per_row: bool = False, generator_seed: Callable[[int], int] | None = None) -> BatchAct:
    """The ``act`` of a TD-MPC2 agent in eval mode: :meth:`act_batch` with each episode's acting state
    kept in its slot. ``generator_seed(index)``: each episode draws its MPPI samples from a generator
    of its own seeded with it (rows independent of the other envs); ``None``: from the agent's own
    generator (the graphed plan can run; rows then depend on the number of envs)."""

    def act(obs: np.ndarray, slots: list[Slot]) -> np.ndarray:
        for s in slots:
            if "act" not in s.state:
                seed = None if generator_seed is None or not agent.cfg.plan else generator_seed(s.index)
                s.state["act"] = agent.new_act_state(seed)
        return agent.act_batch(obs, [s.state["act"] for s in slots], eval_mode=True, per_row=per_row)

    return act


# ------------------------------------------------------------------------------------ evaluation
class _EvalRecorder:
    """Return, length, trembles, success (any step / last step) and optionally the frames."""

    def __init__(self, filmed: bool, video_size: int) -> None:
        self.frames: list | None = [] if filmed else None
        self.video_size = video_size
        self.ret, self.length, self.trembles, self.success_any, self.success = 0.0, 0, 0, False, False

    def on_reset(self, env: Any, obs: np.ndarray, info: dict[str, Any]) -> None:
        if self.frames is not None:
            self.frames.append(env.render_frame(self.video_size))

    def on_step(self, env: Any, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, reward: float,
                terminated: bool, truncated: bool, info: dict[str, Any]) -> None:
        self.ret += float(reward)
        self.length += 1
        self.trembles += int(bool(info.get("trembled", False)))
        self.success = bool(info.get("success", False))
        self.success_any = self.success_any or self.success
        if self.frames is not None:
            self.frames.append(env.render_frame(self.video_size))

    def result(self, env: Any) -> tuple[dict[str, Any], list | None]:
        return ({"return": self.ret, "success_any": self.success_any, "success_final": self.success,
                 "length": self.length, "trembles": self.trembles}, self.frames)


def run_eval_episodes(envs: Sequence[Any], agent: Any, seeds: Sequence[int], *, filmed: set[int] | None = None,
                      video_size: int = 256,
                      on_episode: Callable[[dict[str, Any]], None] | None = None) -> list[tuple[dict[str, Any], list | None]]:
    """Run ``len(seeds)`` evaluation episodes (eval mode, mean actions) on the envs stepped together.

    One env (``[env]``) runs them one after the other. Episode ``i`` is reset with ``seeds[i]``;
    the first step of each episode plans from scratch. Returns (episode result, frames or None) in
    seed order: the result holds return, success_any, success_final, length and trembles; episodes
    whose index is in ``filmed`` keep their frames. ``on_episode(result)`` as episodes end.
    """
    filmed = filmed or set()
    return run_vector_episodes(
        envs, seeds, agent_act(agent), lambda i: _EvalRecorder(i in filmed, video_size),
        on_episode=None if on_episode is None else (lambda i, out: on_episode(out[0])))


# ------------------------------------------------------------------------------------ trajectories
class TrajectoryRecorder:
    """One episode as arrays: ``obs`` (T+1, ...) (the observation before each action, then the final
    one), ``action`` (T, A) (the executed action), ``reward`` (T,) float32, ``terminated`` (T,) bool,
    ``return`` (float) and ``success`` (any step); with ``record_state`` also ``physics_state``
    (T, S) (the simulator state before each action) and ``final_physics_state`` (S,)."""

    def __init__(self, record_state: bool = False) -> None:
        self.record_state = record_state
        self.obs: list[np.ndarray] = []
        self.action: list[np.ndarray] = []
        self.reward: list[float] = []
        self.terminated: list[bool] = []
        self.states: list[np.ndarray] = []
        self.success = False

    def on_reset(self, env: Any, obs: np.ndarray, info: dict[str, Any]) -> None:
        self.obs.append(obs)
        if self.record_state:
            self.states.append(env.get_physics_state())

    def on_step(self, env: Any, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, reward: float,
                terminated: bool, truncated: bool, info: dict[str, Any]) -> None:
        self.obs.append(next_obs)
        self.action.append(np.asarray(info.get("executed_action", np.clip(action, -1, 1)), dtype=np.float32))
        self.reward.append(float(reward))
        self.terminated.append(bool(terminated))
        self.success = self.success or bool(info.get("success", False))
        if self.record_state:  # the state after step t is the state before action t+1: one read serves both
            self.states.append(env.get_physics_state())

    def result(self, env: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "obs": np.stack(self.obs), "action": np.stack(self.action),
            "reward": np.asarray(self.reward, dtype=np.float32), "terminated": np.asarray(self.terminated, dtype=bool),
            "return": float(np.sum(self.reward)), "success": self.success}
        if self.record_state:
            out["physics_state"] = np.asarray(self.states[:-1])
            out["final_physics_state"] = self.states[-1]
        return out


def run_trajectories(envs: Sequence[Any], seeds: Sequence[int], act: BatchAct, *, record_state: bool = False,
                     on_episode: Callable[[int, dict[str, Any]], None] | None = None,
                     start: int = 0, keep: bool = True) -> list[dict[str, Any]]:
    """Roll ``len(seeds)`` episodes with ``act`` on the envs stepped together and keep each as the
    arrays of :class:`TrajectoryRecorder` (in seed order). ``on_episode(index, episode)`` as they end;
    ``start``: skip the first episodes (a resumed collection); ``keep`` False: return no episodes
    (a caller that writes them as they come)."""
    return run_vector_episodes(envs, seeds, act, lambda i: TrajectoryRecorder(record_state),
                               on_episode=on_episode, keep=keep, start=start)


def random_act(seed: int, action_dim: int) -> BatchAct:
    """The uniform random policy on [-1, 1]^A as a batched ``act``: episode ``i`` draws its actions
    from ``seeding.numpy_rng(seed, "random-actions", i)``, so they do not depend on the other envs."""
    from cdred_pipeline.seeding import numpy_rng

    def act(obs: np.ndarray, slots: list[Slot]) -> np.ndarray:
        out = []
        for s in slots:
            if "rng" not in s.state:
                s.state["rng"] = numpy_rng(seed, "random-actions", s.index)
            out.append(s.state["rng"].uniform(-1.0, 1.0, size=action_dim).astype(np.float32))
        return np.stack(out)

    return act


__all__ = ["BatchAct", "EpisodeRecorder", "Slot", "TrajectoryRecorder", "agent_act", "random_act", "run_eval_episodes",
           "run_trajectories", "run_vector_episodes", "single_thread"]
