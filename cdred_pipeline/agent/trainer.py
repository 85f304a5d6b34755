"""Online training loop (paper Alg. 1): collect with the agent, update the world model, evaluate,
checkpoint, resume.

```python
summary = train_online(lambda: make_env("dmc:cartpole-balance", seed=1), agent,
                       TrainerConfig(steps=50_000), "runs/cartpole")
```

Counters, all logged in ``metrics.jsonl`` under explicit names:

- ``agent_step``: decisions, i.e. ``env.step`` calls on the cdred env (TD-MPC2 counts these);
- ``env_step``: simulator control steps = ``agent_step * action_repeat``;
- ``update_step``: gradient steps.

Imitation reuses this loop: pass the CDRED reward head inside ``agent`` and ``expert_buffer``; each
update then samples B behavioural and B expert sub-trajectories and concatenates them along the batch
with ``is_expert`` = [False]*B + [True]*B (ARCHITECTURE §4). Checkpoints are written at episode ends
(``agent.pt``, atomically, plus ``buffer.pt`` when ``save_buffer``); rerunning with the same
``out_dir`` resumes from ``agent.pt`` and rolls ``metrics.jsonl`` back to that step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from cdred_pipeline.agent.agent import TDMPC2Agent
from cdred_pipeline.agent.buffer import ReplayBuffer
from cdred_pipeline.agent.checkpoint import atomic_torch_save, safe_torch_load
from cdred_pipeline.artifacts import save_figure_atomic
from cdred_pipeline.errors import CdredError, TrainingDivergedError, UsageError


@dataclass(frozen=True)
class TrainerConfig:
    """Online-training schedule. Step counts are *agent* steps unless the name says otherwise."""

    steps: int = 100_000                    # agent steps to train for
    seed_steps: Optional[int] = None        # uniform-random agent steps first; None -> max(1000, 5 * episode_length)
    pretrain_updates: Optional[int] = None  # updates run once when seeding ends; None -> seed_steps (TD-MPC2)
    utd: float = 1.0                        # update-to-data ratio: updates per agent step after seeding
    eval_every: int = 10_000                # agent steps between evaluations (0: only at the end)
    eval_episodes: int = 10
    checkpoint_every: int = 10_000          # agent steps between checkpoints (taken at the next episode end)
    save_buffer: bool = True                # also checkpoint the replay buffer (exact resume)
    buffer_capacity: Optional[int] = None   # slots; None -> enough for every step (capped at 1M)
    seed: int = 1
    num_threads: Optional[int] = None       # torch.set_num_threads (CPU); None leaves torch's default

    def __post_init__(self) -> None:
        if self.steps < 1 or self.utd < 0 or self.eval_episodes < 0 or self.checkpoint_every < 1:
            raise UsageError("steps and checkpoint_every must be >= 1, utd and eval_episodes >= 0")


def evaluate_agent(
    agent: TDMPC2Agent, env: Any, num_episodes: int, *, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Run ``num_episodes`` episodes with ``eval_mode=True``; episode i is reset with ``seed + i``.

    Returns mean/std return, success rate, mean length and the per-episode returns.
    """
    returns, successes, lengths = [], [], []
    from tqdm.auto import tqdm

    for i in tqdm(range(num_episodes), desc="eval", leave=False, disable=not progress):
        obs, info = env.reset(seed=seed + i)
        done, t, ret, success = False, 0, 0.0, False
        while not done:
            obs, r, term, trunc, info = env.step(agent.act(obs, t0=(t == 0), eval_mode=True))
            ret += float(r)
            success = success or bool(info.get("success", False))
            t += 1
            done = term or trunc
        returns.append(ret), successes.append(success), lengths.append(t)
    arr = np.asarray(returns, dtype=np.float64)
    return {
        "return_mean": float(arr.mean()) if len(arr) else float("nan"),
        "return_std": float(arr.std()) if len(arr) else float("nan"),
        "success_rate": float(np.mean(successes)) if successes else float("nan"),
        "length_mean": float(np.mean(lengths)) if lengths else float("nan"),
        "returns": [float(x) for x in returns],
    }


def sample_batch(
    buffer: ReplayBuffer, batch_size: int, horizon: int, expert_buffer: Optional[ReplayBuffer] = None, device=None
) -> dict[str, torch.Tensor]:
    """One training batch: B behavioural sub-trajectories, plus B expert ones when ``expert_buffer``
    is given (concatenated along the batch dim, ``is_expert`` marks them)."""
    b = buffer.sample(batch_size, horizon)
    if expert_buffer is None:
        b["is_expert"] = torch.zeros(batch_size, dtype=torch.bool, device=b["action"].device)
        return b
    e = expert_buffer.sample(batch_size, horizon)
    dev = device if device is not None else b["action"].device
    out = {k: torch.cat([b[k].to(dev), e[k].to(dev).to(b[k].dtype)], dim=1) for k in ("obs", "action", "reward")}
    out["is_expert"] = torch.cat([torch.zeros(batch_size, dtype=torch.bool), torch.ones(batch_size, dtype=torch.bool)]).to(dev)
    return out


# ------------------------------------------------------------------------------------------ files
def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
    return rows


def _rollback_metrics(path: Path, agent_step: int) -> None:
    """Keep only rows up to ``agent_step`` (rows written after the checkpoint are redone)."""
    if not path.exists():
        return
    rows = [r for r in _read_jsonl(path) if r.get("agent_step", 0) <= agent_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def plot_learning_curve(metrics_path: "str | Path", png_path: "str | Path", title: str = "",
                        reference_lines: Optional[dict[str, float]] = None) -> None:
    """Episode returns (train) and evaluation returns against env steps, written atomically (Agg).

    ``reference_lines`` ({label: return}) are drawn as horizontal lines (e.g. the expert's return)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _read_jsonl(Path(metrics_path))
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot([r["env_step"] for r in train], [r["episode_return"] for r in train], ".", alpha=0.4, label="train episode")
    if evals:
        x = [r["env_step"] for r in evals]
        m = np.array([r["eval_return_mean"] for r in evals])
        s = np.array([r["eval_return_std"] for r in evals])
        ax.plot(x, m, "-o", label="eval (mean)")
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    for i, (label, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{i + 2}", label=label)
    ax.set_xlabel("env steps (simulator control steps)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals or reference_lines:
        ax.legend(loc="lower right")
    save_figure_atomic(fig, png_path)


# ------------------------------------------------------------------------------------------ loop
def train_online(
    env_fn: Callable[[], Any],
    agent: TDMPC2Agent,
    cfg: TrainerConfig,
    out_dir: "str | Path",
    *,
    eval_env_fn: Optional[Callable[[], Any]] = None,
    progress: bool = True,
    expert_buffer: Optional[ReplayBuffer] = None,
    extra: Optional[dict[str, Any]] = None,
    eval_hook: Optional[Callable[[TDMPC2Agent, ReplayBuffer], dict[str, float]]] = None,
    reference_lines: Optional[dict[str, float]] = None,
) -> dict[str, Any]:
    """Train ``agent`` online for ``cfg.steps`` agent steps; resumable. Returns a summary dict.

    ``env_fn``/``eval_env_fn`` build gymnasium envs (``make_env``); their ``spec_info`` supplies the
    episode length and action repeat when present. ``expert_buffer``: see the module docstring.
    ``extra``: plain data stored in every checkpoint (task, preset, ...).
    ``eval_hook(agent, behavioural_buffer) -> dict``: extra figures merged into every eval row of
    ``metrics.jsonl`` (imitation logs its reward diagnostics this way).
    ``reference_lines``: horizontal lines on ``curve.png`` ({label: return}).
    Files in ``out_dir``: ``agent.pt``, ``buffer.pt``, ``metrics.jsonl``, ``curve.png``.
    A diverged update raises :class:`TrainingDivergedError` naming the step and the last checkpoint.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, buf_path, metrics_path, png_path = out / "agent.pt", out / "buffer.pt", out / "metrics.jsonl", out / "curve.png"
    env = env_fn()
    spec = getattr(env, "spec_info", None)
    episode_length = int(getattr(spec, "episode_length", agent.cfg.episode_length))
    action_repeat = int(getattr(spec, "action_repeat", 1) or 1)
    task = getattr(spec, "task", None)
    obs_shape = tuple(env.observation_space.shape)
    if obs_shape != agent.obs_shape or int(env.action_space.shape[0]) != agent.action_dim:
        raise CdredError(
            f"env ({task or 'env'}) has obs {obs_shape} / action_dim {env.action_space.shape[0]}, "
            f"the agent was built for {agent.obs_shape} / {agent.action_dim}"
        )
    if episode_length != agent.cfg.episode_length and agent.cfg.discount is None:
        warnings.warn(
            f"agent cfg.episode_length={agent.cfg.episode_length} but the env's is {episode_length}: "
            "the discount heuristic uses the agent's value", stacklevel=2,
        )
    seed_steps = cfg.seed_steps if cfg.seed_steps is not None else max(1000, 5 * episode_length)
    pretrain_updates = cfg.pretrain_updates if cfg.pretrain_updates is not None else seed_steps
    capacity = cfg.buffer_capacity or min(cfg.steps + cfg.steps // max(1, episode_length) + episode_length + 2, 1_000_000)
    buffer = ReplayBuffer(capacity, agent.obs_shape, agent.action_dim, agent.device,
                          torch.uint8 if agent.is_pixel else torch.float32, seed=cfg.seed)
    B, H = agent.cfg.batch_size, agent.cfg.horizon
    user_extra = dict(extra or {})
    if task is not None:
        user_extra.setdefault("task", task)

    state: dict[str, Any] = {
        "agent_step": 0, "episode": 0, "pretrained": False, "utd_updates": 0, "elapsed_s": 0.0,
        "next_eval": cfg.eval_every if cfg.eval_every > 0 else cfg.steps, "next_ckpt": cfg.checkpoint_every,
        "updates_from": seed_steps, "last_eval": None, "best_eval_return": None, "eval_at_step": -1,
    }
    resumed_from: Optional[int] = None
    if ckpt_path.exists():
        loaded = agent.load_state(ckpt_path, restore_rng=True)
        if "trainer" not in loaded:
            raise CdredError(f"{ckpt_path} is an agent checkpoint without trainer state; use another out_dir")
        state.update(loaded["trainer"])
        resumed_from = state["agent_step"]
        buf_ok = False
        if cfg.save_buffer and buf_path.exists():
            saved = safe_torch_load(buf_path, what="replay buffer")
            if saved.get("agent_step") == state["agent_step"]:
                buffer.load_state_dict(saved["state"])
                buf_ok = True
        if not buf_ok and state["agent_step"] < cfg.steps:
            # no matching buffer: refill it by acting with the (trained) agent before updating again
            state["updates_from"] = state["agent_step"] + min(seed_steps, cfg.steps - state["agent_step"])
            state["utd_updates"] = 0
            warnings.warn(f"resuming at agent step {state['agent_step']} without a saved replay buffer; "
                          f"refilling {seed_steps} steps before updates resume", stacklevel=2)
        _rollback_metrics(metrics_path, state["agent_step"])
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        metrics_path.unlink(missing_ok=True)

    eval_env = None

    def run_eval() -> dict[str, Any]:
        nonlocal eval_env
        if eval_env is None:
            eval_env = (eval_env_fn or env_fn)()
        res = evaluate_agent(agent, eval_env, cfg.eval_episodes, seed=cfg.seed * 7919 + 10_000_000, progress=False)
        row = {"kind": "eval", "agent_step": state["agent_step"], "env_step": state["agent_step"] * action_repeat,
               "update_step": agent.update_step, "episode": state["episode"],
               "eval_return_mean": res["return_mean"], "eval_return_std": res["return_std"],
               "eval_success_rate": res["success_rate"], "eval_episodes": cfg.eval_episodes,
               "eval_returns": res["returns"], "wall_s": wall()}
        if eval_hook is not None:
            row.update(eval_hook(agent, buffer))
        _append_jsonl(metrics_path, row)
        state["last_eval"] = {k: row[k] for k in ("agent_step", "eval_return_mean", "eval_return_std", "eval_success_rate")}
        best = state["best_eval_return"]
        state["best_eval_return"] = res["return_mean"] if best is None else max(best, res["return_mean"])
        state["eval_at_step"] = state["agent_step"]
        plot_learning_curve(metrics_path, png_path, title=str(task or ""), reference_lines=reference_lines)
        return res

    def checkpoint() -> None:
        state["elapsed_s"] = wall()
        if cfg.save_buffer:
            atomic_torch_save({"agent_step": state["agent_step"], "state": buffer.state_dict()}, buf_path)
        trainer_state = json.loads(json.dumps(state))  # plain types only
        agent.save(ckpt_path, extra={**user_extra, "trainer": trainer_state,
                                     "trainer_config": dataclasses.asdict(cfg), "action_repeat": action_repeat})
        last_ckpt[0] = state["agent_step"]

    from tqdm.auto import tqdm

    t_start, elapsed_before = time.time(), float(state["elapsed_s"])

    def wall() -> float:
        return elapsed_before + time.time() - t_start

    last_ckpt = [resumed_from if resumed_from is not None else None]
    bar = tqdm(total=cfg.steps, initial=state["agent_step"], desc=f"train {task or ''}".strip(), disable=not progress,
               unit="step", dynamic_ncols=True)
    try:
        while state["agent_step"] < cfg.steps:
            ep = state["episode"]
            obs, info = env.reset(seed=cfg.seed * 1_000_003 + ep)
            rng = np.random.default_rng([cfg.seed, ep])
            obs_l, act_l, rew_l = [obs], [], []
            done, t, ep_ret, success = False, 0, 0.0, False
            upd_sums: dict[str, float] = defaultdict(float)
            n_upd = 0
            while not done and state["agent_step"] < cfg.steps:
                if state["agent_step"] < seed_steps:  # seeding: uniform random actions
                    action = rng.uniform(-1, 1, agent.action_dim).astype(np.float32)
                else:
                    action = agent.act(obs, t0=(t == 0), eval_mode=False)
                obs, r, term, trunc, info = env.step(action)
                obs_l.append(obs), act_l.append(action), rew_l.append(float(r))
                ep_ret += float(r)
                success = success or bool(info.get("success", False))
                t += 1
                state["agent_step"] += 1
                done = bool(term or trunc)
                # --- updates (Alg. 1 "num updates per step")
                # every step after seeding earns utd updates (exact count, no float drift);
                # they run once the buffer can be sampled
                if state["agent_step"] >= state["updates_from"] and buffer.num_valid_starts(H) > 0:
                    due = math.floor((state["agent_step"] - state["updates_from"]) * cfg.utd + 1e-9)
                    n, state["utd_updates"] = due - state["utd_updates"], due
                    if not state["pretrained"]:  # TD-MPC2: a burst of updates when seeding ends
                        n, state["pretrained"] = n + pretrain_updates, True
                    for _ in tqdm(range(n), desc="pretrain", leave=False, disable=not progress or n < 100):
                        m = agent.update(sample_batch(buffer, B, H, expert_buffer, agent.device))
                        for k, v in m.items():
                            upd_sums[k] += v
                        n_upd += 1
                bar.update(1)
            buffer.add_episode(np.stack(obs_l), np.stack(act_l), np.asarray(rew_l, dtype=np.float32))
            state["episode"] += 1
            row = {"kind": "train", "agent_step": state["agent_step"], "env_step": state["agent_step"] * action_repeat,
                   "update_step": agent.update_step, "episode": state["episode"], "episode_return": ep_ret,
                   "episode_length": t, "success": success, "updates_this_episode": n_upd,
                   "wall_s": wall()}
            row.update({k: v / n_upd for k, v in upd_sums.items()} if n_upd else {})
            _append_jsonl(metrics_path, row)
            post = {"ret": f"{ep_ret:.1f}"}
            finished = state["agent_step"] >= cfg.steps
            if cfg.eval_episodes > 0 and (state["agent_step"] >= state["next_eval"] or finished) \
                    and state["eval_at_step"] != state["agent_step"]:
                while state["next_eval"] <= state["agent_step"]:
                    state["next_eval"] += cfg.eval_every if cfg.eval_every > 0 else cfg.steps
                res = run_eval()
                post["eval"] = f"{res['return_mean']:.1f}"
            bar.set_postfix(post)
            if state["agent_step"] >= state["next_ckpt"] or finished:
                while state["next_ckpt"] <= state["agent_step"]:
                    state["next_ckpt"] += cfg.checkpoint_every
                checkpoint()
    except TrainingDivergedError as exc:
        where = (f"{ckpt_path} (agent step {last_ckpt[0]}), kept; rerun to resume from it"
                 if last_ckpt[0] is not None else "none written yet")
        raise TrainingDivergedError(f"{exc}, at agent step {state['agent_step']}; last good checkpoint: {where}") from None
    finally:
        bar.close()
    plot_learning_curve(metrics_path, png_path, title=str(task or ""), reference_lines=reference_lines)
    last = state["last_eval"] or {}
    return {
        "agent_step": state["agent_step"], "env_step": state["agent_step"] * action_repeat,
        "update_step": agent.update_step, "episodes": state["episode"],
        "final_eval_return": last.get("eval_return_mean"), "final_eval_success_rate": last.get("eval_success_rate"),
        "best_eval_return": state["best_eval_return"], "wall_s": wall(),
        "resumed_from": resumed_from, "checkpoint": str(ckpt_path), "metrics": str(metrics_path), "curve": str(png_path),
        "action_repeat": action_repeat, "seed_steps": seed_steps,
    }


__all__ = ["TrainerConfig", "train_online", "evaluate_agent", "sample_batch", "plot_learning_curve"]
