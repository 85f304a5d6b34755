"""Online training loop (paper Alg. 1): collect with the agent, update the world model, evaluate,
checkpoint, resume.

```python
summary = train_online(lambda: make_env("dmc:cartpole-balance", seed=1), agent,
                       TrainerConfig(agent_steps=50_000), "runs/cartpole")
# the same, verb by verb: OnlineTrainer(env_fn, agent, cfg, out_dir).run()
```

Counters, all logged in ``metrics.jsonl`` under explicit names:

- ``agent_step``: decisions, i.e. ``env.step`` calls on the cdred env (TD-MPC2 counts these);
- ``env_step``: simulator control steps = ``agent_step * action_repeat``;
- ``update_step``: gradient steps.

Imitation reuses this loop: pass the CDRED reward head inside ``agent`` and ``expert_buffer``; each
update then samples B behavioural and B expert sub-trajectories and concatenates them along the batch
with ``is_expert`` = [False]*B + [True]*B (docs/design.md §4). Every random draw comes from a named
stream of ``cfg.seed`` (:mod:`cdred_pipeline.seeding`): ``train-reset`` and ``seed-actions`` per
training episode, ``train-eval-reset`` per evaluation episode (the same episodes at every
evaluation), ``replay`` for the replay buffer's sampling.

Resume is exact (on CPU, bit for bit): checkpoints are taken only at episode ends, where the env holds
nothing the next episode needs (it is reset with the episode's seed, the tremble generator with it), and
hold everything the rest of the run draws from: the weights, both optimisers, the schedulers, the
running scale, the acting generators and the last MPPI mean, the global torch, numpy and Python RNGs,
the trainer's counters, the replay buffer with its sampling generator (``buffer.pt``, when
``save_buffer``) and the sampling generators of the expert buffer and of the buffers the eval hook
samples (the caller rebuilds their contents from the same data). Rerunning with the same ``out_dir``
resumes from ``agent.pt`` and rolls ``metrics.jsonl`` back to its step.

``log`` (:class:`~cdred_pipeline.logging_sinks.LogTargets`) adds TensorBoard / W&B views of
``metrics.jsonl``: opened after the resume with the rows kept, then fed every row the file gets
(:func:`log_row`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
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
from cdred_pipeline.logging_sinks import LogTargets, MetricSink, close_sinks
from cdred_pipeline.artifacts import save_figure_atomic
from cdred_pipeline.errors import CdredError, TrainingDivergedError, UsageError
from cdred_pipeline.seeding import derive, numpy_rng
from cdred_pipeline.vector import run_eval_episodes

EvalHook = Callable[[TDMPC2Agent, ReplayBuffer], dict[str, float]]


@dataclass(frozen=True)
class TrainerConfig:
    """Online-training schedule; every step count is in agent steps (decisions), as its name says."""

    agent_steps: int = 100_000                   # agent steps to train for
    seed_agent_steps: Optional[int] = None       # uniform-random agent steps first; None -> max(1000, 5 * episode_length)
    pretrain_updates: Optional[int] = None       # updates run once when seeding ends; None -> seed_agent_steps (TD-MPC2)
    utd: float = 1.0                             # update-to-data ratio: updates per agent step after seeding
    eval_every_agent_steps: int = 10_000         # between evaluations (0: only at the end)
    eval_episodes: int = 10
    checkpoint_every_agent_steps: int = 10_000   # between checkpoints (taken at the next episode end)
    save_buffer: bool = True                     # also checkpoint the replay buffer (exact resume)
    buffer_capacity: Optional[int] = None        # slots; None -> enough for every step (capped at 1M)
    seed: int = 1
    num_threads: Optional[int] = None            # torch.set_num_threads (CPU); None keeps the process's (cdred --threads)

    def __post_init__(self) -> None:
        if self.agent_steps < 1 or self.utd < 0 or self.eval_episodes < 0 or self.checkpoint_every_agent_steps < 1:
            raise UsageError("agent_steps and checkpoint_every_agent_steps must be >= 1, utd and eval_episodes >= 0")

    def seeding(self, episode_length: int) -> tuple[int, int]:
        """(seed agent steps, pretraining updates) for episodes of ``episode_length``: the set values, else
        TD-MPC2's max(1000, 5 x episode length) and as many updates as seed steps."""
        seed_steps = self.seed_agent_steps if self.seed_agent_steps is not None else max(1000, 5 * episode_length)
        return seed_steps, self.pretrain_updates if self.pretrain_updates is not None else seed_steps


@dataclass
class TrainerState:
    """The loop's counters and schedule; every checkpoint holds them as plain types (``extra["trainer"]``)."""

    agent_step: int = 0
    episode: int = 0                       # training episodes finished
    pretrained: bool = False               # the burst of pretraining updates has run
    utd_updates: int = 0                   # updates earned since ``updates_from`` (floor of utd * steps)
    elapsed_s: float = 0.0                 # wall time of the run, over every resume
    next_eval: int = 0                     # agent step of the next evaluation
    next_ckpt: int = 0                     # agent step of the next checkpoint
    updates_from: int = 0                  # agent step from which updates run (end of seeding, or of a refill)
    last_eval: Optional[dict[str, Any]] = None
    best_eval_return: Optional[float] = None
    eval_at_step: int = -1                 # agent step of the last evaluation (one evaluation per step at most)
    last_checkpoint_step: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (a checkpoint's ``extra`` must load with ``weights_only``)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def updated(self, saved: dict[str, Any]) -> "TrainerState":
        """This state with a checkpoint's saved fields; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in saved.items() if k in known})


def sample_batch(
    buffer: ReplayBuffer, batch_size: int, horizon: int, expert_buffer: Optional[ReplayBuffer] = None,
    device: "str | torch.device | None" = None,
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


def evaluation_figures(env: Any, agent: TDMPC2Agent, cfg: TrainerConfig) -> dict[str, Any]:
    """``cfg.eval_episodes`` eval-mode episodes of ``agent`` on ``env`` through the rollout loop, reset with
    the ``train-eval-reset`` seeds (the same episodes every time): an ``eval`` row's figures."""
    seeds = [derive(cfg.seed, "train-eval-reset", i) for i in range(cfg.eval_episodes)]
    results = [res for res, _ in run_eval_episodes([env], agent, seeds)]
    returns = np.asarray([r["return"] for r in results], dtype=np.float64)
    return {"eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()),
            "eval_success_rate": float(np.mean([r["success_any"] for r in results])),
            "eval_episodes": cfg.eval_episodes, "eval_returns": [float(x) for x in returns]}


# ------------------------------------------------------------------------------------------ files
def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one row to a JSON-lines file and flush it (a kill loses at most the line being written)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def log_row(path: Path, row: dict[str, Any], sinks: "list[MetricSink] | tuple[()]" = ()) -> None:
    """Append a metrics row to ``metrics.jsonl`` (the source of truth), then give it to every sink."""
    append_jsonl(path, row)
    for sink in sinks:
        sink.write(row)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a line cut by a kill is skipped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
    return rows


def rollback_metrics(path: Path, agent_step: int) -> None:
    """Keep only rows up to ``agent_step`` (rows written after the checkpoint are redone)."""
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if r.get("agent_step", 0) <= agent_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def plot_learning_curve(metrics_path: "str | Path", png_path: "str | Path", title: str = "",
                        reference_lines: Optional[dict[str, float]] = None, env_reward_seen: bool = True) -> None:
    """Write :func:`learning_curve_figure` of ``metrics.jsonl`` to ``png_path``, atomically (Agg)."""
    fig = learning_curve_figure(read_jsonl(Path(metrics_path)), title, reference_lines, env_reward_seen)
    save_figure_atomic(fig, png_path)


def learning_curve_figure(rows: list[dict[str, Any]], title: str = "",
                          reference_lines: Optional[dict[str, float]] = None, env_reward_seen: bool = True) -> Any:
    """Episode returns (train) and evaluation returns against env steps, as a matplotlib Figure.

    The evaluation band is mean +- std over each evaluation's episodes (the legend says how many).
    ``reference_lines`` ({label: return}) are drawn as horizontal lines (e.g. the expert's return).
    ``env_reward_seen`` False (imitation: the learner trains on its own reward model, or on the demos'
    actions) labels the returns as the environment's, which the learner never saw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot([r["env_step"] for r in train], [r["episode_return"] for r in train], ".", alpha=0.4, label="train episode")
    if evals:
        _plot_evals(ax, evals)
    for i, (label, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{i + 2}", label=label)
    ax.set_xlabel("env steps (simulator control steps)")
    ax.set_ylabel("episode return" if env_reward_seen else "env return (not seen by the learner)")
    ax.set_title(title if env_reward_seen else f"{title}\n(the learner never saw the env reward)".strip())
    ax.grid(alpha=0.3)
    if train or evals or reference_lines:
        ax.legend(loc="lower right")
    return fig


def _plot_evals(ax: Any, evals: list[dict[str, Any]]) -> None:
    """The evaluation means and their +-std band, labelled with the number of episodes per evaluation."""
    x = [r["env_step"] for r in evals]
    m = np.array([r["eval_return_mean"] for r in evals])
    s = np.array([r["eval_return_std"] for r in evals])
    counts = sorted({int(r.get("eval_episodes", 0)) for r in evals})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.plot(x, m, "-o", label="eval mean")
    ax.fill_between(x, m - s, m + s, alpha=0.2, label=f"eval \u00b1 std over {n} episodes")


# ------------------------------------------------------------------------------------------ loop
class Laps:
    """Wall seconds per part of the loop, added into ``into`` (keys: env, act, update, buffer, eval,
    diagnostics, writes, other); with ``into=None`` nothing is timed."""

    def __init__(self, into: Optional[dict[str, float]]) -> None:
        self.into, self.t = into, 0.0

    def start(self) -> None:
        """Start a lap."""
        if self.into is not None:
            self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        """Charge the time since the last lap (or start) to ``name``; the next lap starts now."""
        if self.into is not None:
            now = time.perf_counter()
            self.into[name] = self.into.get(name, 0.0) + now - self.t
            self.t = now


class OnlineTrainer:
    """Alg. 1 as verbs: :meth:`resume`, :meth:`collect_episode` (acting, with :meth:`update` after
    every step), :meth:`evaluate`, :meth:`checkpoint`; :meth:`run` strings them together until
    ``cfg.agent_steps``. The arguments are :func:`train_online`'s; ``timings`` (optional) receives the
    wall seconds of each part of the loop (:class:`Laps`)."""

    def __init__(self, env_fn: Callable[[], Any], agent: TDMPC2Agent, cfg: TrainerConfig, out_dir: "str | Path", *,
                 eval_env_fn: Optional[Callable[[], Any]] = None, progress: bool = True,
                 expert_buffer: Optional[ReplayBuffer] = None, extra: Optional[dict[str, Any]] = None,
                 eval_hook: Optional[EvalHook] = None, reference_lines: Optional[dict[str, float]] = None,
                 timings: Optional[dict[str, float]] = None,
                 hook_buffers: Optional[dict[str, ReplayBuffer]] = None, log: Optional[LogTargets] = None) -> None:
        self.laps = Laps(timings)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.agent, self.cfg, self.progress = agent, cfg, progress
        self.log, self.sinks = log, []
        self.expert_buffer, self.eval_hook, self.reference_lines = expert_buffer, eval_hook, reference_lines
        self.samplers = {**{f"hook:{k}": b for k, b in (hook_buffers or {}).items() if b is not expert_buffer},
                         **({"expert": expert_buffer} if expert_buffer is not None else {})}
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path, self.buf_path, self.next_buf_path = out / "agent.pt", out / "buffer.pt", out / "buffer-next.pt"
        self.metrics_path, self.png_path = out / "metrics.jsonl", out / "curve.png"
        self.env, self.eval_env_fn, self.eval_env = env_fn(), eval_env_fn or env_fn, None
        spec = getattr(self.env, "spec_info", None)
        self.episode_length = int(getattr(spec, "episode_length", agent.cfg.episode_length))
        self.action_repeat = int(getattr(spec, "action_repeat", 1) or 1)
        self.task = getattr(spec, "task", None)
        self._check_env()
        self.seed_steps, self.pretrain_updates = cfg.seeding(self.episode_length)
        self.buffer = ReplayBuffer(self._capacity(), agent.obs_shape, agent.action_dim, agent.device,
                                   torch.uint8 if agent.is_pixel else torch.float32, seed=derive(cfg.seed, "replay"))
        self.extra = dict(extra or {})
        if self.task is not None:
            self.extra.setdefault("task", self.task)
        self.state = TrainerState(next_eval=self._eval_period(), next_ckpt=cfg.checkpoint_every_agent_steps,
                                  updates_from=self.seed_steps)
        self.resumed_from: Optional[int] = None
        self._clock = (time.time(), 0.0)  # (start of this process's run, elapsed_s before it)

    def _check_env(self) -> None:
        """One-line error when the env does not fit the agent; a warning when the episode lengths differ."""
        obs_shape, action_dim = tuple(self.env.observation_space.shape), int(self.env.action_space.shape[0])
        if obs_shape != self.agent.obs_shape or action_dim != self.agent.action_dim:
            raise CdredError(f"env ({self.task or 'env'}) has obs {obs_shape} / action_dim {action_dim}, "
                             f"the agent was built for {self.agent.obs_shape} / {self.agent.action_dim}")
        if self.episode_length != self.agent.cfg.episode_length and self.agent.cfg.discount is None:
            warnings.warn(f"agent cfg.episode_length={self.agent.cfg.episode_length} but the env's is "
                          f"{self.episode_length}: the discount heuristic uses the agent's value", stacklevel=3)

    def _capacity(self) -> int:
        """Buffer slots: ``cfg.buffer_capacity``, or every step of the run plus one final obs per episode."""
        n, length = self.cfg.agent_steps, self.episode_length
        return self.cfg.buffer_capacity or min(n + n // max(1, length) + length + 2, 1_000_000)

    def _eval_period(self) -> int:
        """Agent steps between evaluations (``eval_every_agent_steps`` 0: one evaluation, at the end)."""
        return self.cfg.eval_every_agent_steps if self.cfg.eval_every_agent_steps > 0 else self.cfg.agent_steps

    def wall_s(self) -> float:
        """Wall time of the whole run so far, over every resume."""
        started, before = self._clock
        return before + time.time() - started

    # -------------------------------------------------------------------------------- resume
    def resume(self) -> Optional[int]:
        """Continue from ``agent.pt`` when ``out_dir`` holds one, else start fresh (seeding the global
        RNGs, clearing old metrics). Restores the agent with the global RNGs, the trainer state, the
        sampling generators of the expert and hook buffers, and the replay buffer when one was saved at
        the same step (else refills it by acting before updating again); metrics rows after the
        checkpoint are dropped. Returns the agent step resumed from, or None."""
        if not self.ckpt_path.exists():
            torch.manual_seed(self.cfg.seed)
            np.random.seed(self.cfg.seed)
            random.seed(self.cfg.seed)  # saved in checkpoints: seeded, so two runs' checkpoints are equal
            self.metrics_path.unlink(missing_ok=True)
            return None
        loaded = self.agent.load_state(self.ckpt_path, restore_rng=True)
        if "trainer" not in loaded:
            raise CdredError(f"{self.ckpt_path} is an agent checkpoint without trainer state; use another out_dir")
        st = self.state = self.state.updated(loaded["trainer"])
        st.last_checkpoint_step = self.resumed_from = st.agent_step
        self._load_samplers(loaded.get("samplers") or {})
        if not self._load_buffer() and st.agent_step < self.cfg.agent_steps:
            st.updates_from = st.agent_step + min(self.seed_steps, self.cfg.agent_steps - st.agent_step)
            st.utd_updates = 0
            warnings.warn(f"resuming at agent step {st.agent_step} without a saved replay buffer; "
                          f"refilling {self.seed_steps} steps before updates resume", stacklevel=3)
        rollback_metrics(self.metrics_path, st.agent_step)
        return st.agent_step

    def _load_samplers(self, saved: dict[str, Any]) -> None:
        """Give the expert and hook buffers (rebuilt by the caller from the same data) the sampling
        generator states of the checkpoint, so they draw what they would have drawn without the stop."""
        missing = sorted(set(self.samplers) - set(saved))
        if missing:
            warnings.warn(f"{self.ckpt_path} holds no sampling state for the {', '.join(missing)} buffer(s); the "
                          "resumed run draws other batches from them than an uninterrupted run", stacklevel=4)
        for name, buf in self.samplers.items():
            if name in saved:
                buf.load_sampler_state(saved[name], what=f"{name.removeprefix('hook:')} buffer")

    def _load_buffer(self) -> bool:
        """Load the replay buffer saved at the checkpoint's step (``buffer.pt``, or ``buffer-next.pt``
        when the run stopped between writing ``agent.pt`` and renaming the buffer: the rename is then
        done here); whether there was one."""
        if not self.cfg.save_buffer:
            return False
        for path in (self.buf_path, self.next_buf_path):
            if path.exists():
                saved = safe_torch_load(path, what="replay buffer")
                if saved.get("agent_step") == self.state.agent_step:
                    self.buffer.load_state_dict(saved["state"])
                    if path == self.next_buf_path:
                        os.replace(self.next_buf_path, self.buf_path)
                    return True
        return False

    # -------------------------------------------------------------------------------- collect and update
    def collect_episode(self, bar: Any = None) -> dict[str, Any]:
        """One training episode (Alg. 1's inner loop): act (uniform-random while seeding), step, run the
        updates each step earns; the episode goes into the buffer. Returns its ``train`` metrics row."""
        st, ep, laps = self.state, self.state.episode, self.laps
        laps.start()
        obs, _ = self.env.reset(seed=derive(self.cfg.seed, "train-reset", ep))
        laps.lap("env")
        rng = numpy_rng(self.cfg.seed, "seed-actions", ep)
        obs_l, act_l, rew_l = [obs], [], []
        done, success, sums, n_upd = False, False, defaultdict(float), 0
        while not done and st.agent_step < self.cfg.agent_steps:
            if st.agent_step < self.seed_steps:
                action = rng.uniform(-1, 1, self.agent.action_dim).astype(np.float32)
            else:
                action = self.agent.act(obs, t0=not act_l, eval_mode=False)
            laps.lap("act")
            obs, r, term, trunc, info = self.env.step(action)
            laps.lap("env")
            obs_l.append(obs), act_l.append(action), rew_l.append(float(r))
            success = success or bool(info.get("success", False))
            st.agent_step += 1
            done = bool(term or trunc)
            n_upd += self.update(sums)
            laps.lap("update")
            if bar is not None:
                bar.update(1)
            laps.lap("other")
        self.buffer.add_episode(np.stack(obs_l), np.stack(act_l), np.asarray(rew_l, dtype=np.float32))
        laps.lap("buffer")
        st.episode += 1
        row = {"kind": "train", **self._counters(), "episode_return": sum(rew_l), "episode_length": len(act_l),
               "success": success, "updates_this_episode": n_upd, "wall_s": self.wall_s()}
        return {**row, **({k: v / n_upd for k, v in sums.items()} if n_upd else {})}

    def update(self, sums: dict[str, float]) -> int:
        """The updates the current agent step earns (Alg. 1: ``utd`` per step after seeding, counted
        exactly, plus TD-MPC2's burst of pretraining updates when seeding ends), once the buffer can be
        sampled; adds their metrics to ``sums`` and returns how many ran."""
        st, B, H = self.state, self.agent.cfg.batch_size, self.agent.cfg.horizon
        if st.agent_step < st.updates_from or self.buffer.num_valid_starts(H) == 0:
            return 0
        due = math.floor((st.agent_step - st.updates_from) * self.cfg.utd + 1e-9)
        n, st.utd_updates = due - st.utd_updates, due
        if not st.pretrained:
            n, st.pretrained = n + self.pretrain_updates, True
        from tqdm.auto import tqdm

        for _ in tqdm(range(n), desc="pretrain", leave=False, disable=not self.progress or n < 100):
            for k, v in self.agent.update(sample_batch(self.buffer, B, H, self.expert_buffer, self.agent.device)).items():
                sums[k] += v
        return n

    def _counters(self) -> dict[str, Any]:
        """The counters every metrics row starts with."""
        st = self.state
        return {"agent_step": st.agent_step, "env_step": st.agent_step * self.action_repeat,
                "update_step": self.agent.update_step, "episode": st.episode}

    # -------------------------------------------------------------------------------- evaluate
    def evaluate(self) -> dict[str, Any]:
        """``cfg.eval_episodes`` eval-mode episodes on the eval env through the batched rollout loop (one
        env), reset with the ``train-eval-reset`` seeds (the same episodes every time); logs an ``eval``
        row (with ``eval_hook``'s figures), keeps the best return and redraws ``curve.png``."""
        self.laps.start()
        if self.eval_env is None:
            self.eval_env = self.eval_env_fn()
        figures = evaluation_figures(self.eval_env, self.agent, self.cfg)
        self.laps.lap("eval")
        row = {"kind": "eval", **self._counters(), **figures, "wall_s": self.wall_s()}
        if self.eval_hook is not None:
            row.update(self.eval_hook(self.agent, self.buffer))
            self.laps.lap("diagnostics")
        log_row(self.metrics_path, row, self.sinks)
        st = self.state
        st.last_eval = {k: row[k] for k in ("agent_step", "eval_return_mean", "eval_return_std", "eval_success_rate")}
        best = row["eval_return_mean"]
        st.best_eval_return = best if st.best_eval_return is None else max(st.best_eval_return, best)
        st.eval_at_step = st.agent_step
        self.plot()
        self.laps.lap("writes")
        return row

    def plot(self) -> None:
        """Redraw ``curve.png`` from ``metrics.jsonl``."""
        plot_learning_curve(self.metrics_path, self.png_path, title=str(self.task or ""),
                            reference_lines=self.reference_lines,
                            env_reward_seen=bool(self.agent.reward_head.uses_env_reward))

    # -------------------------------------------------------------------------------- checkpoint
    def checkpoint(self) -> None:
        """Write the replay buffer (when ``save_buffer``) to ``buffer-next.pt``, then ``agent.pt`` with the
        trainer state and the expert and hook buffers' sampling generators, then rename the buffer to
        ``buffer.pt``. Each write is atomic and a stop between two of them leaves the buffer of
        ``agent.pt``'s step in one of the two files, so a resume is always exact."""
        st = self.state
        st.elapsed_s, st.last_checkpoint_step = self.wall_s(), st.agent_step
        if self.cfg.save_buffer:
            atomic_torch_save({"agent_step": st.agent_step, "state": self.buffer.state_dict()}, self.next_buf_path)
        self.agent.save(self.ckpt_path, extra={**self.extra, "trainer": st.to_dict(),
                                               "samplers": {k: b.sampler_state() for k, b in self.samplers.items()},
                                               "trainer_config": dataclasses.asdict(self.cfg),
                                               "action_repeat": self.action_repeat})
        if self.cfg.save_buffer:
            os.replace(self.next_buf_path, self.buf_path)

    # -------------------------------------------------------------------------------- schedule
    def _finished(self) -> bool:
        """Whether the run has taken its ``cfg.agent_steps``."""
        return self.state.agent_step >= self.cfg.agent_steps

    def _take_eval(self) -> bool:
        """Whether an evaluation is due at this episode end (on schedule, or the run's last); when so,
        moves the schedule past the current step."""
        st = self.state
        if self.cfg.eval_episodes == 0 or st.eval_at_step == st.agent_step:
            return False
        if st.agent_step < st.next_eval and not self._finished():
            return False
        while st.next_eval <= st.agent_step:
            st.next_eval += self._eval_period()
        return True

    def _take_checkpoint(self) -> bool:
        """Whether a checkpoint is due at this episode end; when so, moves the schedule past the current step."""
        st = self.state
        if st.agent_step < st.next_ckpt and not self._finished():
            return False
        while st.next_ckpt <= st.agent_step:
            st.next_ckpt += self.cfg.checkpoint_every_agent_steps
        return True

    def _episode_end(self, row: dict[str, Any], bar: Any) -> None:
        """Log the episode, then evaluate and checkpoint when due."""
        self.laps.start()
        log_row(self.metrics_path, row, self.sinks)
        self.laps.lap("writes")
        post = {"ret": f"{row['episode_return']:.1f}"}
        if self._take_eval():
            post["eval"] = f"{self.evaluate()['eval_return_mean']:.1f}"
        bar.set_postfix(post)
        self.laps.start()
        if self._take_checkpoint():
            self.checkpoint()
        self.laps.lap("writes")

    # -------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Resume (or start), then train until ``cfg.agent_steps``; returns :meth:`summary`.

        A diverged update raises :class:`TrainingDivergedError` naming the step and the last checkpoint."""
        from tqdm.auto import tqdm

        self.resume()
        self._clock = (time.time(), float(self.state.elapsed_s))
        self.sinks = self.log.open(self.metrics_path.parent, read_jsonl(self.metrics_path)) if self.log else []
        bar = tqdm(total=self.cfg.agent_steps, initial=self.state.agent_step, desc=f"train {self.task or ''}".strip(),
                   disable=not self.progress, unit="step", dynamic_ncols=True)
        try:
            while not self._finished():
                self._episode_end(self.collect_episode(bar), bar)
        except TrainingDivergedError as exc:
            raise TrainingDivergedError(self._diverged(exc)) from None
        finally:
            bar.close()
            close_sinks(self.sinks)
        self.laps.start()
        self.plot()
        self.laps.lap("writes")
        return self.summary()

    def _diverged(self, exc: Exception) -> str:
        """The divergence message: the step it happened at and the last good checkpoint."""
        step = self.state.last_checkpoint_step
        where = (f"{self.ckpt_path} (agent step {step}), kept; rerun to resume from it"
                 if step is not None else "none written yet")
        return f"{exc}, at agent step {self.state.agent_step}; last good checkpoint: {where}"

    def summary(self) -> dict[str, Any]:
        """Counters, the final and best evaluation, the wall time and the files of the run."""
        st, last = self.state, self.state.last_eval or {}
        return {
            "agent_step": st.agent_step, "env_step": st.agent_step * self.action_repeat,
            "update_step": self.agent.update_step, "episodes": st.episode,
            "final_eval_return": last.get("eval_return_mean"), "final_eval_success_rate": last.get("eval_success_rate"),
            "best_eval_return": st.best_eval_return, "wall_s": self.wall_s(), "resumed_from": self.resumed_from,
            "checkpoint": str(self.ckpt_path), "metrics": str(self.metrics_path), "curve": str(self.png_path),
            "action_repeat": self.action_repeat, "seed_steps": self.seed_steps,
            "torch_threads": torch.get_num_threads(),
        }


def train_online(env_fn: Callable[[], Any], agent: TDMPC2Agent, cfg: TrainerConfig, out_dir: "str | Path",
                 **kw: Any) -> dict[str, Any]:
    """Train ``agent`` online for ``cfg.agent_steps`` agent steps, resuming from ``out_dir``; returns the
    summary. ``env_fn``/``eval_env_fn`` build gymnasium envs (``make_env``; their ``spec_info`` gives the
    episode length and action repeat). Keywords: ``eval_env_fn``, ``progress``, ``expert_buffer`` (see
    the module docstring), ``extra`` (plain data stored in every checkpoint), ``eval_hook(agent,
    behavioural_buffer) -> dict`` (figures merged into every eval row), ``hook_buffers`` ({name: buffer}
    the eval hook samples: their sampling generators are checkpointed, their contents rebuilt by the
    caller), ``reference_lines`` ({label: return} drawn on ``curve.png``), ``log`` (TensorBoard / W&B
    views of the metrics, :mod:`cdred_pipeline.logging_sinks`). Files in ``out_dir``: ``agent.pt``,
    ``buffer.pt``, ``metrics.jsonl``, ``curve.png`` (and ``tb/``); ``timings``: see :class:`OnlineTrainer`."""
    return OnlineTrainer(env_fn, agent, cfg, out_dir, **kw).run()


__all__ = ["Laps", "OnlineTrainer", "TrainerConfig", "TrainerState", "append_jsonl", "evaluation_figures", "log_row",
           "train_online", "sample_batch", "learning_curve_figure", "plot_learning_curve", "read_jsonl", "rollback_metrics"]
