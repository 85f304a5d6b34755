"""Behavioural cloning on the TD-MPC2 agent's encoder and policy prior (the imitate stage's ``bc`` method).

The loss is the squared error of the policy's mean action tanh(mu(h(s))) against the expert's action,
averaged over the action dimensions: maximum likelihood under a fixed-variance Gaussian on the squashed
action (Pomerleau 1991; Bain and Sammut 1995), and exactly the action the agent takes in evaluation
(``eval_mode``: tanh(mu)). It needs no atanh of expert actions that sit on the bounds +-1.

BC never acts while it trains. :func:`train_bc` runs the number of updates the online trainer has run
by each agent step (:func:`updates_by`: the pretraining burst when seeding ends, then ``utd`` per step)
and evaluates at the agent steps where the online trainer evaluates (:func:`eval_marks`), so a BC curve
lines up with the online methods' by ``env_step`` and by ``update_step`` (both logged).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cdred_pipeline.agent.agent import TDMPC2Agent
from cdred_pipeline.agent.buffer import ReplayBuffer
from cdred_pipeline.logging_sinks import LogTargets, close_sinks
from cdred_pipeline.agent.trainer import (TrainerConfig, evaluation_figures, log_row, plot_learning_curve, read_jsonl,
                                          rollback_metrics)
from cdred_pipeline.errors import CdredError, TrainingDivergedError


def bc_loss(agent: TDMPC2Agent, obs: Tensor, action: Tensor) -> Tensor:
    """mean (tanh(mu(h(s))) - a_E)^2 over the batch and the action dimensions."""
    _, info = agent.model.pi(agent.model.encode(obs, augment=agent.is_pixel))
    return F.mse_loss(info["mean"], action)


def bc_update(agent: TDMPC2Agent, batch: dict[str, Tensor]) -> float:
    """One gradient step of :func:`bc_loss` on the first transition of each sampled sub-trajectory, with the
    agent's own optimisers (encoder at ``enc_lr_scale``, policy prior) and gradient clip."""
    obs = batch["obs"][0].to(agent.device)
    obs = obs if agent.is_pixel else obs.float()
    action = batch["action"][0].to(agent.device).float()
    agent.model.train()
    try:
        loss = bc_loss(agent, obs, action)
        if not torch.isfinite(loss.detach()):
            raise TrainingDivergedError(f"non-finite BC loss at update step {agent.update_step + 1}")
        for opt in (agent.optim, agent.pi_optim):
            opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for opt in (agent.optim, agent.pi_optim) for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, agent.cfg.grad_clip_norm)
        agent.optim.step()
        agent.pi_optim.step()
    finally:
        agent.model.eval()
        for opt in (agent.optim, agent.pi_optim):
            opt.zero_grad(set_to_none=True)
    agent.update_step += 1
    return float(loss.detach())


def updates_by(agent_step: int, seed_steps: int, pretrain_updates: int, utd: float, episode_length: int) -> int:
    """Updates the online trainer has run by ``agent_step`` with fixed-length episodes: none while seeding
    or before the first episode is in its buffer (it is stored after its last step), then the burst of
    ``pretrain_updates`` and ``utd`` per agent step after seeding (trainer.OnlineTrainer.update)."""
    if agent_step < seed_steps or agent_step <= episode_length:
        return 0
    return pretrain_updates + math.floor((agent_step - seed_steps) * utd + 1e-9)


def eval_marks(agent_steps: int, episode_length: int, eval_every: int) -> list[int]:
    """The agent steps at which the online trainer evaluates with fixed-length episodes: the first episode
    end at or past each multiple of ``eval_every``, and the last step."""
    marks, step, nxt = [], 0, eval_every
    while step < agent_steps:
        step = min(step + episode_length, agent_steps)
        if step >= nxt or step == agent_steps:
            marks.append(step)
            while nxt <= step:
                nxt += eval_every
    return marks


def bc_schedule(cfg: TrainerConfig, episode_length: int) -> tuple[list[int], list[int]]:
    """The evaluation marks (agent steps) of a BC run and the update count due at each (see the module
    docstring); with ``eval_episodes`` 0 the one mark is the last step."""
    seed_steps, pretrain = cfg.seeding(episode_length)
    period = cfg.eval_every_agent_steps if cfg.eval_every_agent_steps > 0 else cfg.agent_steps
    marks = eval_marks(cfg.agent_steps, episode_length, period) if cfg.eval_episodes > 0 else [cfg.agent_steps]
    return marks, [updates_by(m, seed_steps, pretrain, cfg.utd, episode_length) for m in marks]


def train_bc(eval_env_fn: Callable[[], Any], agent: TDMPC2Agent, expert_buffer: ReplayBuffer, cfg: TrainerConfig,
             out_dir: "str | Path", *, episode_length: int, action_repeat: int, extra: Optional[dict[str, Any]] = None,
             reference_lines: Optional[dict[str, float]] = None, progress: bool = True,
             log: Optional[LogTargets] = None) -> dict[str, Any]:
    """Clone the expert buffer's actions on the online schedule of ``cfg`` (:func:`bc_schedule`); writes
    ``agent.pt`` (at every mark), ``metrics.jsonl`` (an ``eval`` row per mark with ``agent_step``,
    ``env_step``, ``update_step`` and the mean BC loss since the last mark), ``curve.png`` and, with ``log``,
    the TensorBoard / W&B views of the rows (:mod:`cdred_pipeline.logging_sinks`). A rerun on the same
    folder resumes from the last mark's ``agent.pt`` (weights, optimisers, every RNG and the expert buffer's
    sampling generator), exactly. Returns a summary with the online trainer's keys."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": out / "agent.pt", "metrics": out / "metrics.jsonl", "curve": out / "curve.png"}
    marks, due = bc_schedule(cfg, episode_length)
    done, elapsed = _bc_resume(agent, expert_buffer, cfg, paths)
    title, extra = str((extra or {}).get("task", "")), {**(extra or {}), "trainer_config": dataclasses.asdict(cfg),
                                                         "action_repeat": action_repeat}
    env, clock, sinks = eval_env_fn(), (time.time(), elapsed), []

    def wall_s() -> float:
        return clock[1] + time.time() - clock[0]

    def plot() -> None:
        plot_learning_curve(paths["metrics"], paths["curve"], title=title, reference_lines=reference_lines,
                            env_reward_seen=False)

    bar = tqdm(total=due[-1], initial=agent.update_step, desc="bc", disable=not progress)
    try:
        sinks = log.open(out, read_jsonl(paths["metrics"])) if log else []
        for step, n in ((m, d) for m, d in zip(marks, due) if done is None or m > done):
            losses = [bc_update(agent, expert_buffer.sample(agent.cfg.batch_size, 1))
                      for _ in range(n - agent.update_step)]
            bar.update(len(losses))
            if cfg.eval_episodes > 0:
                log_row(paths["metrics"], {
                    "kind": "eval", "agent_step": step, "env_step": step * action_repeat,
                    "update_step": agent.update_step, "episode": -(-step // episode_length),
                    "bc_loss": float(np.mean(losses)) if losses else None,
                    **evaluation_figures(env, agent, cfg), "wall_s": wall_s()}, sinks)
                plot()
            agent.save(paths["checkpoint"], extra={**extra, "bc_agent_step": step, "bc_elapsed_s": wall_s(),
                                                   "samplers": {"expert": expert_buffer.sampler_state()}})
    finally:
        bar.close()
        env.close()
        close_sinks(sinks)
    plot()
    return _bc_summary(agent, cfg, action_repeat, paths, wall_s(), done)


def _bc_resume(agent: TDMPC2Agent, expert_buffer: ReplayBuffer, cfg: TrainerConfig,
               paths: dict[str, Path]) -> tuple[Optional[int], float]:
    """Continue from ``agent.pt`` when it is a BC checkpoint of this run (restoring the agent, the global
    RNGs and the expert buffer's sampler, and dropping metrics rows after it), else start fresh (seeding
    the global RNGs, clearing old metrics). Returns (agent step resumed from or None, wall seconds so far)."""
    if paths["checkpoint"].exists():
        extra = agent.load_state(paths["checkpoint"], restore_rng=True)
        if "bc_agent_step" not in extra or "samplers" not in extra:
            raise CdredError(f"{paths['checkpoint']} is not a checkpoint of a BC run; use another out_dir")
        expert_buffer.load_sampler_state(extra["samplers"]["expert"], what="expert buffer")
        step = int(extra["bc_agent_step"])
        rollback_metrics(paths["metrics"], step)
        return step, float(extra.get("bc_elapsed_s", 0.0))
    paths["metrics"].unlink(missing_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)  # saved in checkpoints: seeded, so two runs' checkpoints are equal
    return None, 0.0


def _bc_summary(agent: TDMPC2Agent, cfg: TrainerConfig, action_repeat: int, paths: dict[str, Path], wall_s: float,
                resumed_from: Optional[int]) -> dict[str, Any]:
    """The online trainer's summary keys for a BC run, from its ``eval`` rows."""
    rows = [r for r in read_jsonl(paths["metrics"]) if r.get("kind") == "eval"]
    last = rows[-1] if rows else {}
    return {"agent_step": cfg.agent_steps, "env_step": cfg.agent_steps * action_repeat,
            "update_step": agent.update_step, "episodes": 0, "final_eval_return": last.get("eval_return_mean"),
            "final_eval_success_rate": last.get("eval_success_rate"),
            "best_eval_return": max((r["eval_return_mean"] for r in rows), default=None),
            "wall_s": wall_s, "resumed_from": resumed_from, "action_repeat": action_repeat,
            "torch_threads": torch.get_num_threads(), **{k: str(v) for k, v in paths.items()}}


__all__ = ["bc_loss", "bc_schedule", "bc_update", "eval_marks", "train_bc", "updates_by"]
