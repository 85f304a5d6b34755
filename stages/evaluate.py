"""Stage ``evaluate``: roll a trained agent under tremble noise and write a report a person can read.

For every tremble probability p (paper App. D.4) and every seed, ``episodes`` episodes are run with the
agent in evaluation mode. Per episode we record seed, p, return, success (``success_any``: success at
any step, as LeRobot reports it; ``success_final``: success at the last step), length and the number of
trembles. ``report.json`` (schema: ``REPORT_SCHEMA`` below, documented in docs/evaluation.md) holds the
rows and aggregates; ``episodes.csv`` the rows; ``videos/*.mp4`` K rollouts at the control rate; and
``tremble.png`` return and success against p.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.artifacts import Artifact, ArtifactStore, save_figure_atomic
from cdred_pipeline.errors import CheckpointError, UsageError
from cdred_pipeline.seeding import derive
from cdred_pipeline.vector import run_eval_episodes, single_thread

STAGE, VERSION = "eval", 1
BOOTSTRAP_SAMPLES = 2000

REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["agent", "task", "obs", "config", "scores", "rows", "aggregates"],
    "properties": {
        "agent": {"type": "string"}, "task": {"type": "string"}, "obs": {"type": "string"},
        "config": {"type": "object"},
        "scores": {"type": "object", "description": "random/expert return means used for normalisation (may be empty)"},
        "rows": {"type": "array", "items": {"type": "object", "required": [
            "p", "seed", "episode", "episode_seed", "return", "success_any", "success_final", "length", "trembles"]}},
        "aggregates": {"type": "array", "items": {"type": "object", "required": [
            "p", "episodes", "return_mean", "return_std", "seed_means", "return_seed_mean", "return_ci95",
            "success_rate", "success_final_rate", "tremble_rate", "normalized_score"]}},
    },
}


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation; every field is part of the cache key."""

    tremble: tuple[float, ...] = (0.0,)
    episodes: int = 10
    seeds: tuple[int, ...] = (0,)
    videos: int = 0
    video_size: int = 256
    plan: bool | None = None
    episode_length: int | None = None
    device: str = "auto"
    num_envs: int = 1  # envs stepped together, one batched policy call per step (not in the key when 1)

    def __post_init__(self) -> None:
        from cdred_pipeline.envs import check_tremble

        object.__setattr__(self, "tremble", tuple(check_tremble(p) for p in self.tremble))
        if not self.tremble or self.episodes < 1 or not self.seeds or self.videos < 0:
            raise UsageError("evaluate needs at least one p, --episodes >= 1, one seed and --videos >= 0")
        _check_distinct("tremble p", self.tremble)
        _check_distinct("seed", self.seeds)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise UsageError(f"--seeds are integers >= 0, got {list(self.seeds)}")
        if self.episode_length is not None and (isinstance(self.episode_length, bool) or self.episode_length < 1):
            raise UsageError(f"--episode-length must be >= 1 (or unset: the checkpoint's), got {self.episode_length}")
        if isinstance(self.num_envs, bool) or not isinstance(self.num_envs, int) or self.num_envs < 1:
            raise UsageError(f"--num-envs must be a positive integer, got {self.num_envs!r}")


def _check_distinct(what: str, values: tuple) -> None:
    """A one-line UsageError when a value repeats: it would run twice and be reported as one setting with
    twice the episodes."""
    seen: set = set()
    for v in values:
        if v in seen:
            raise UsageError(f"{what} {v:g} is listed twice: name each value once")
        seen.add(v)


def parse_tremble_list(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.2"`` -> (0.0, 0.1, 0.2), each checked to lie in [0, 1]; an empty item or a repeated p is
    a one-line UsageError (never skipped or merged)."""
    from cdred_pipeline.envs import check_tremble

    items = [p.strip() for p in str(text).split(",")]
    if any(not p for p in items):
        raise UsageError(f"tremble list {text!r} has an empty item: write the probabilities separated by single "
                         "commas")
    out = tuple(check_tremble(p) for p in items)
    _check_distinct("tremble p", out)
    return out


def bootstrap_ci(values: np.ndarray, *, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (over seeds); a single value gives a zero-width interval."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float(v.mean())
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(samples, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def normalized_score(ret: float, scores: dict[str, Any]) -> float | None:
    """100 (R - R_random) / (R_expert - R_random) with the dataset's stored scores, or None."""
    try:
        r_rand = float(scores["random"]["return_mean"])
        r_exp = float(scores["expert"]["return_mean"])
    except (KeyError, TypeError):
        return None
    if not math.isfinite(r_exp - r_rand) or abs(r_exp - r_rand) < 1e-9:
        return None
    return 100.0 * (ret - r_rand) / (r_exp - r_rand)


def aggregate(rows: list[dict[str, Any]], scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Aggregates per p: over episodes (mean ± std) and over seeds (mean, 95% bootstrap CI)."""
    out = []
    for p in sorted({r["p"] for r in rows}):
        sel = [r for r in rows if r["p"] == p]
        ret = np.array([r["return"] for r in sel])
        seeds = sorted({r["seed"] for r in sel})
        seed_means = np.array([np.mean([r["return"] for r in sel if r["seed"] == s]) for s in seeds])
        lo, hi = bootstrap_ci(seed_means)
        steps = sum(r["length"] for r in sel)
        out.append({
            "p": p, "episodes": len(sel), "return_mean": float(ret.mean()), "return_std": float(ret.std()),
            "seed_means": {str(s): float(m) for s, m in zip(seeds, seed_means)},
            "return_seed_mean": float(seed_means.mean()), "return_ci95": [lo, hi],
            "success_rate": float(np.mean([r["success_any"] for r in sel])),
            "success_final_rate": float(np.mean([r["success_final"] for r in sel])),
            "tremble_rate": float(sum(r["trembles"] for r in sel) / max(steps, 1)),
            "normalized_score": normalized_score(float(ret.mean()), scores),
        })
    return out


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7,
                            ffmpeg_log_level="error") as w:
        for f in frames:
            w.append_data(f)
    os.replace(tmp, path)


def _score_levels(scores: dict[str, Any]) -> dict[str, float]:
    """The expert and random mean returns stored with the agent's demos (those known)."""
    out = {}
    for name in ("expert", "random"):
        try:
            out[name] = float(scores[name]["return_mean"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def return_axis_limits(aggs: list[dict[str, Any]], levels: dict[str, float]) -> tuple[float, float]:
    """The return axis from 0 (or lower: the random level, the lowest mean - std) to above the highest
    value drawn, so a drop is drawn at its true size relative to the returns, never zoomed in on."""
    lows = [0.0, *levels.values(), *(a["return_mean"] - a["return_std"] for a in aggs)]
    highs = [*levels.values(), *(a["return_mean"] + a["return_std"] for a in aggs)]
    lo, hi = min(lows), max(highs + [0.0])
    pad = 0.05 * (hi - lo) or 1.0
    return lo if lo == 0.0 else lo - pad, hi + pad


def _plot(path: Path, aggs: list[dict[str, Any]], scores: dict[str, Any], title: str, success: bool) -> None:
    """tremble.png: :func:`tremble_figure` saved atomically."""
    import matplotlib.pyplot as plt

    fig = tremble_figure(aggs, scores, title, success=success)
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def tremble_figure(aggs: list[dict[str, Any]], scores: dict[str, Any], title: str, success: bool = True) -> Any:
    """Return (mean, error bars: one std over the episodes of each p) and success against p, with the
    expert and random returns as reference lines and the episode count in the title and legends; without
    ``success`` (a task with no success flag, see ``envs.reports_success``) the return panel alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = [a["p"] for a in aggs]
    counts = sorted({a["episodes"] for a in aggs})
    n = "/".join(str(c) for c in counts)
    levels = _score_levels(scores)
    fig, axes = plt.subplots(1, 2 if success else 1, figsize=(10 if success else 5.5, 4), squeeze=False)
    ax1 = axes[0, 0]
    ax1.errorbar(ps, [a["return_mean"] for a in aggs], yerr=[a["return_std"] for a in aggs], marker="o", capsize=3,
                 label=f"agent: mean ± 1 std over {n} episodes")
    for name, style in (("expert", "--"), ("random", ":")):
        if name in levels:
            ax1.axhline(levels[name], color="grey", linestyle=style, label=f"{name} ({levels[name]:.1f})")
    ax1.set_ylim(*return_axis_limits(aggs, levels))
    ax1.set_xlabel("tremble probability p")
    ax1.set_ylabel("episode return")
    ax1.legend(fontsize=7, loc="best")
    if success:
        ax2 = axes[0, 1]
        ax2.plot(ps, [a["success_rate"] for a in aggs], marker="o", label=f"fraction of {n} episodes")
        ax2.set_xlabel("tremble probability p")
        ax2.set_ylabel("success rate (any step)")
        ax2.set_ylim(-0.05, 1.05)
        ax2.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title} ({n} episodes per p)")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class EvalBlock:
    """One work unit of an evaluation: ``episodes`` episodes of one (p, seed), picklable.

    The unit's rows are a pure function of its fields: the agent is loaded from ``checkpoint`` and its
    act generator is reset to the checkpoint's state at the start of every block, each episode has
    its own reset seed (``derive(seed, "eval-reset", i)``), and the tremble draws are seeded per
    episode. So the rows do not depend on the executor, the number of workers or which blocks ran before.
    """

    checkpoint: str
    task: str
    obs: str
    env_kwargs: tuple[tuple[str, Any], ...]
    episode_length: int | None
    p: float
    seed: int
    episodes: int
    device: str = "auto"
    plan: bool | None = None
    num_envs: int = 1
    videos: int = 0            # the first ``videos`` episodes of this block are filmed
    video_size: int = 256
    progress: bool = False     # a per-episode bar (in-process runs)


_AGENT_CACHE: dict[tuple, tuple[Any, Any]] = {}


def _cache_key(path: str | Path, device: str, plan: bool | None) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size, device, plan)


def _remember_agent(key: tuple, agent: Any) -> None:
    """Keep one loaded agent per process with its act-generator state as loaded."""
    _AGENT_CACHE.clear()
    _AGENT_CACHE[key] = (agent, agent.act_generator.get_state())


def _block_agent(block: EvalBlock) -> Any:
    """The block's agent, loaded once per process (keyed by file identity), act generator reset."""
    from cdred_pipeline.stages.common import load_agent

    key = _cache_key(block.checkpoint, block.device, block.plan)
    if key not in _AGENT_CACHE:
        agent, _ = load_agent(block.checkpoint, device=block.device, plan=block.plan)
        _remember_agent(key, agent)
    agent, gen_state = _AGENT_CACHE[key]
    agent.act_generator.set_state(gen_state)
    return agent


def _block_episodes(block: EvalBlock, agent: Any, seeds: list[int]) -> tuple[list[tuple[dict, list | None]], float]:
    """Roll the block's episodes through the rollout loop; returns (result, frames) per episode and
    the env's control rate (videos play in real time)."""
    from tqdm.auto import tqdm

    from cdred_pipeline.envs import make_env

    n_envs = max(1, min(block.num_envs, block.episodes))
    envs = [make_env(block.task, obs=block.obs, seed=0, tremble=block.p, episode_length=block.episode_length,
                     **dict(block.env_kwargs)) for _ in range(n_envs)]
    bar = tqdm(total=block.episodes, desc=f"evaluate p={block.p:g} seed={block.seed}", unit="ep", leave=False,
               disable=not block.progress)

    def tick(ep: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(ret=f"{ep['return']:.1f}")

    try:
        # several envs: batched rows on one thread; one env keeps the run's thread count (cdred --threads)
        with single_thread(agent.device) if n_envs > 1 else contextlib.nullcontext():
            results = run_eval_episodes(envs, agent, seeds, filmed=set(range(min(block.videos, block.episodes))),
                                        video_size=block.video_size, on_episode=tick)
        dt = getattr(envs[0].unwrapped, "control_dt", None)
    finally:
        bar.close()
        for env in envs:
            env.close()
    return results, 1.0 / dt if dt else 30.0


def _mp4_bytes(frames: list[np.ndarray], fps: float) -> bytes:
    """The frames as an mp4 file's bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        _write_video(path, frames, fps)
        return path.read_bytes()


def run_block(block: EvalBlock) -> dict[str, Any]:
    """Run one (p, seed) block; returns its rows (episode order) and its videos as mp4 bytes."""
    agent = _block_agent(block)
    seeds = [derive(block.seed, "eval-reset", i) for i in range(block.episodes)]
    results, fps = _block_episodes(block, agent, seeds)
    rows, videos = [], {}
    for i, (ep, frames) in enumerate(results):
        rows.append({"p": block.p, "seed": block.seed, "episode": i, "episode_seed": seeds[i], **ep})
        if frames is not None:
            videos[f"p{block.p:g}_seed{block.seed}_ep{i}.mp4"] = _mp4_bytes(frames, fps)
    return {"rows": rows, "videos": videos}


@dataclass(frozen=True)
class _Target:
    """What an evaluation runs on, read from the checkpoint: the agent, its task and env settings."""

    ckpt: Path
    input_key: str
    policy: Any
    task: str
    obs: str
    episode_length: int | None
    env_kwargs: dict[str, Any]
    scores: dict[str, Any]


def _target(cfg: EvalConfig, agent: str, store: ArtifactStore, scores: dict[str, Any] | None) -> _Target:
    """Load the agent and read its task, obs kind, episode length and render settings from the checkpoint."""
    from cdred_pipeline.stages.common import load_agent, resolve_checkpoint

    ckpt, input_key = resolve_checkpoint(agent, store)
    policy, extra = load_agent(ckpt, device=cfg.device, plan=cfg.plan)
    task, obs_kind = extra.get("task"), extra.get("obs", "state")
    if not task:
        raise CheckpointError(f"{ckpt}: the checkpoint does not say which task it was trained on; pass a checkpoint "
                              "written by collect-experts or imitate")
    keys = ("camera", "image_size", "render_profile", "action_repeat") if obs_kind == "rgb" else ("action_repeat",)
    # episodes as long as the agent was trained on (and the demos were), unless asked otherwise
    return _Target(ckpt=Path(ckpt), input_key=input_key, policy=policy, task=task, obs=obs_kind,
                   episode_length=cfg.episode_length or extra.get("episode_length"),
                   env_kwargs={k: extra[k] for k in keys if extra.get(k) is not None},
                   scores=scores if scores is not None else extra.get("scores", {}))


def _key_config(cfg: EvalConfig, t: _Target) -> dict[str, Any]:
    """The artifact's config. num_envs changes the bits of the rows (batched matmul rounding; MPPI's
    shared generator): part of the key when > 1. How the work is spread (executor, workers) never is."""
    config = {**{k: v for k, v in cfg.__dict__.items() if k not in ("device", "num_envs")}, "task": t.task, "obs": t.obs}
    if cfg.num_envs > 1:
        config["num_envs"] = cfg.num_envs
    return config


def _blocks(cfg: EvalConfig, t: _Target, progress: bool) -> list[EvalBlock]:
    """One block per (p, seed), in that order; the first ``cfg.videos`` episodes overall are filmed."""
    blocks, videos_left = [], cfg.videos
    for p in cfg.tremble:
        for seed in cfg.seeds:
            n_vid = min(videos_left, cfg.episodes)
            videos_left -= n_vid
            blocks.append(EvalBlock(checkpoint=str(t.ckpt.resolve()), task=t.task, obs=t.obs,
                                    env_kwargs=tuple(sorted(t.env_kwargs.items())), episode_length=t.episode_length,
                                    p=p, seed=seed, episodes=cfg.episodes, device=cfg.device, plan=cfg.plan,
                                    num_envs=cfg.num_envs, videos=n_vid, video_size=cfg.video_size, progress=progress))
    return blocks


def _check_env(cfg: EvalConfig, t: _Target) -> None:
    """The agent observes what the task's env gives (a one-line error before any episode runs)."""
    from cdred_pipeline.envs import make_env

    env = make_env(t.task, obs=t.obs, seed=0, tremble=cfg.tremble[0], episode_length=t.episode_length, **t.env_kwargs)
    try:
        _check_obs_shape(t.ckpt, t.policy, env)
    finally:
        env.close()


def _video_writer(videos_dir: Path) -> Callable[[int, dict[str, Any]], None]:
    """An executor ``on_result`` that writes a block's videos atomically as the block ends."""

    def write_videos(_: int, out: dict[str, Any]) -> None:
        for name, data in out["videos"].items():
            videos_dir.mkdir(exist_ok=True)
            tmp = videos_dir / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, videos_dir / name)

    return write_videos


def _write_report(folder: Path, t: _Target, config: dict[str, Any], rows: list[dict[str, Any]],
                  aggs: list[dict[str, Any]], wall: float) -> None:
    """report.json, episodes.csv and tremble.png."""
    report = {"agent": str(t.ckpt), "task": t.task, "obs": t.obs, "config": config, "scores": t.scores,
              "rows": rows, "aggregates": aggs, "wall_s": wall}
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    with open(folder / "episodes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from cdred_pipeline.envs import reports_success

    success = reports_success(t.task)
    _plot(folder / "tremble.png", aggs, t.scores,
          f"{t.task}: return {'and success ' if success else ''}under tremble", success)


def run(cfg: EvalConfig, agent: str, store: ArtifactStore, *, force: bool = False, progress: bool = True,
        scores: dict[str, Any] | None = None, executor: Any = None) -> Artifact:
    """Evaluate the agent under each tremble p; returns the eval artifact with report.json.

    The (p, seed) blocks (:class:`EvalBlock`) run through ``executor``
    (:func:`cdred_pipeline.executor.make_executor`; default: in this process). Units return their rows
    and videos (mp4 bytes); this driver merges them in (p, seed) order and writes every file and the
    manifest, so the result does not depend on the executor (videos: the first ``cfg.videos``
    episodes in (p, seed, episode) order, filmed by the unit that runs them).
    """
    from cdred_pipeline.executor import make_executor

    t = _target(cfg, agent, store, scores)
    if cfg.videos > 0 or t.obs == "rgb":
        from cdred_pipeline.envs.gl import check_rendering_works

        check_rendering_works()  # a missing GL backend fails now, not at the first filmed episode
    config = _key_config(cfg, t)
    art = store.begin(STAGE, VERSION, config, {"agent": t.input_key}, force=force,
                      description=f"evaluate {t.task} under tremble {list(cfg.tremble)}")
    if art.complete:
        return art
    try:
        t0 = time.time()
        _check_env(cfg, t)
        _remember_agent(_cache_key(t.ckpt.resolve(), cfg.device, cfg.plan), t.policy)  # in-process blocks reuse it
        ex = executor if executor is not None else make_executor("local")
        outs = ex.map(run_block, _blocks(cfg, t, progress and ex.kind == "local"),
                      desc=f"evaluate {t.task} (p x seed blocks)", progress=progress,
                      on_result=_video_writer(art.path / "videos"))
        rows = [r for out in outs for r in out["rows"]]
        aggs = aggregate(rows, t.scores)
        wall = round(time.time() - t0, 2)
        _write_report(art.path, t, config, rows, aggs, wall)
        steps = sum(r["length"] for r in rows)
        head = {f"return@p={a['p']:g}": round(a["return_mean"], 2) for a in aggs}
        return art.complete_with(head, task=t.task, aggregates=aggs,
                                 execution={"executor": ex.kind, "workers": ex.workers, "num_envs": cfg.num_envs,
                                            "env_steps_per_s": round(steps / max(wall, 1e-9), 1)})
    finally:
        art.release()


def _check_obs_shape(ckpt: Path, agent: Any, env: Any) -> None:
    want = tuple(agent.obs_shape)
    have = tuple(env.observation_space.shape)
    if want != have:
        raise CheckpointError(f"{ckpt}: the agent observes {want} but the env gives {have} "
                              "(a pixel agent on a state env or the reverse); evaluate with the agent's own obs kind")


def format_table(aggs: list[dict[str, Any]], success: bool = True) -> str:
    """A readable table of the aggregates, one row per p (success "-" for a task without a success flag)."""
    lines = [f"{'p':>5}  {'episodes':>8}  {'return mean ± std':>20}  {'seed mean [95% CI]':>28}  {'success':>7}  {'score':>6}"]
    for a in aggs:
        lo, hi = a["return_ci95"]
        score = "-" if a["normalized_score"] is None else f"{a['normalized_score']:.1f}"
        ret = f"{a['return_mean']:.2f} ± {a['return_std']:.2f}"
        seed = f"{a['return_seed_mean']:.2f} [{lo:.2f}, {hi:.2f}]"
        succ = f"{a['success_rate']:.2f}" if success else "-"
        lines.append(f"{a['p']:>5.2f}  {a['episodes']:>8d}  {ret:>20}  {seed:>28}  {succ:>7}  {score:>6}")
    return "\n".join(lines)
