"""``cdred pipeline TASK``: collect-experts -> (render-visual for pixels) -> imitate -> evaluate
--tremble 0,0.1, each stage cached, so a rerun after an interruption or a changed late-stage option
only redoes what changed. Ends with a summary of expert, random and imitation returns.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdred_pipeline.artifacts import Artifact, ArtifactStore
from cdred_pipeline.errors import UsageError

# Named presets: what each stage runs. Step counts are env steps (simulator control steps).
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: a tiny model on 50-step episodes, to check an installation end to end (and for tests).
    "smoke": dict(agent_preset="tiny", expert_steps=400, episodes=2, random_episodes=2, imitate_steps=400,
                  num_demos=2, eval_episodes=2, train_eval_episodes=1, plan=False, eval_every=200,
                  seed_steps=50, episode_length=50),
    # A few minutes per stage on 2 CPU cores; shows learning, does not reach the paper's numbers.
    "quickstart": dict(agent_preset="small", expert_steps=8_000, episodes=10, random_episodes=5,
                       imitate_steps=8_000, num_demos=10, eval_episodes=5, train_eval_episodes=2, plan=False,
                       eval_every=2_000, seed_steps=1_000, episode_length=None),
    # The CPU benchmark setting (issue targets at 100k env steps): hours on 2 cores.
    "cpu": dict(agent_preset="small", expert_steps=100_000, episodes=10, random_episodes=10,
                imitate_steps=100_000, num_demos=10, eval_episodes=10, train_eval_episodes=5, plan=False,
                eval_every=10_000, seed_steps=None, episode_length=None),
    # The paper's setting (App. A-B): the 5M-parameter model, MPPI planning, 1M env steps. GPU work.
    "paper": dict(agent_preset="paper", expert_steps=1_000_000, episodes=100, random_episodes=10,
                  imitate_steps=1_000_000, num_demos=100, eval_episodes=10, train_eval_episodes=10, plan=True,
                  eval_every=50_000, seed_steps=None, episode_length=None),
}


@dataclass(frozen=True)
class PipelineConfig:
    """The whole chain's settings: a preset plus the options a user changes most."""

    task: str
    preset: str = "quickstart"
    obs: str = "state"
    reward: str = "cdred"
    seed: int = 0
    tremble: tuple[float, ...] = (0.0, 0.1)
    device: str = "auto"
    expert_policy: str | None = None   # None: scripted for Meta-World, else TD-MPC2
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        bad = sorted(set(self.overrides) - set(PRESETS[self.preset]))
        if bad:
            raise UsageError(f"unknown pipeline setting(s) {bad}; known: {sorted(PRESETS[self.preset])}")

    @property
    def settings(self) -> dict[str, Any]:
        return {**PRESETS[self.preset], **self.overrides}


@dataclass
class PipelineResult:
    """The artifacts of each stage, in order, with wall time and whether it was cached."""

    stages: list[tuple[str, Artifact, float, bool]]
    summary: dict[str, Any]

    def artifact(self, stage: str) -> Artifact:
        return next(a for s, a, _, _ in self.stages if s == stage)


def _timed(stages: list, name: str, fn: Any) -> Artifact:
    t0 = time.time()
    art = fn()
    cached = art.manifest.get("finished", 0) < t0  # completed before this call: taken from the cache
    stages.append((name, art, time.time() - t0, cached))
    return art


def run(cfg: PipelineConfig, store: ArtifactStore, *, force: bool = False, progress: bool = True) -> PipelineResult:
    """Run (or take from the cache) every stage of the chain for ``cfg.task``."""
    from cdred_pipeline.envs import parse_task
    from cdred_pipeline.stages import collect_experts, evaluate, imitate

    s = cfg.settings
    task = parse_task(cfg.task)
    policy = cfg.expert_policy or ("scripted" if task.suite == "mw" else "tdmpc2")
    stages: list[tuple[str, Artifact, float, bool]] = []
    ccfg = collect_experts.CollectConfig(
        task=task.task, policy=policy, preset=s["agent_preset"], train_steps=s["expert_steps"], seed=cfg.seed,
        episodes=s["episodes"], random_episodes=s["random_episodes"], device=cfg.device, plan=s["plan"],
        eval_every=s["eval_every"], eval_episodes=s["train_eval_episodes"], episode_length=s["episode_length"])
    expert = _timed(stages, "expert", lambda: collect_experts.train_expert(ccfg, store, force=force, progress=progress))
    demos = _timed(stages, "demos", lambda: collect_experts.collect_demos(ccfg, expert, store, force=force,
                                                                           progress=progress))
    dataset = str(demos.path / collect_experts.DATASET_NAME)
    if cfg.obs == "rgb":
        from cdred_pipeline.stages import render_visual

        rcfg = render_visual.RenderConfig()
        rendered = _timed(stages, "render-visual", lambda: render_visual.run(rcfg, dataset, store, force=force,
                                                                             progress=progress))
        dataset = str(rendered.path / collect_experts.DATASET_NAME)
    icfg = imitate.ImitateConfig(
        steps=s["imitate_steps"], preset=s["agent_preset"], obs=cfg.obs, reward=cfg.reward,
        num_demos=min(s["num_demos"], s["episodes"]), seed=cfg.seed, plan=s["plan"], eval_every=s["eval_every"],
        eval_episodes=s["train_eval_episodes"], seed_steps=s["seed_steps"], device=cfg.device)
    imit = _timed(stages, "imitate", lambda: imitate.run(icfg, dataset, store, force=force, progress=progress))
    ecfg = evaluate.EvalConfig(tremble=cfg.tremble, episodes=s["eval_episodes"], seeds=(cfg.seed,), device=cfg.device)
    ev = _timed(stages, "evaluate", lambda: evaluate.run(ecfg, str(imit.path / "agent.pt"), store, force=force,
                                                         progress=progress))
    scores = demos.manifest.get("scores", {})
    aggs = ev.manifest.get("aggregates", [])
    summary = {
        "task": task.task, "preset": cfg.preset, "obs": cfg.obs, "reward": cfg.reward,
        "expert_return": (scores.get("expert") or {}).get("return_mean"),
        "random_return": (scores.get("random") or {}).get("return_mean"),
        "imitation": {a["p"]: {"return_mean": a["return_mean"], "return_std": a["return_std"],
                               "success_rate": a["success_rate"], "normalized_score": a["normalized_score"]}
                      for a in aggs},
        "report": str(ev.path / "report.json"), "tremble_plot": str(ev.path / "tremble.png"),
        "imitation_curve": str(imit.path / "curve.png"), "expert_curve": str(expert.path / "curve.png"),
    }
    return PipelineResult(stages, summary)


def format_summary(result: PipelineResult) -> str:
    """The table printed at the end of ``cdred pipeline``."""
    s = result.summary
    lines = [f"cdred pipeline {s['task']} (preset {s['preset']}, obs {s['obs']}, reward {s['reward']})", "",
             f"{'stage':<14} {'key':<17} {'wall':>9}"]
    for name, art, wall, cached in result.stages:
        took = "cached" if cached else f"{wall:8.1f}s"
        lines.append(f"{name:<14} {art.key:<17} {took:>9}")
    lines += ["", f"{'policy':<26} {'return':>18} {'success':>8} {'score':>7}"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines.append(f"{'random':<26} {fmt(s['random_return']):>18} {'':>8} {'0.0':>7}")
    lines.append(f"{'expert (demos)':<26} {fmt(s['expert_return']):>18} {'':>8} {'100.0':>7}")
    for p, row in s["imitation"].items():
        ret = f"{row['return_mean']:.2f} ± {row['return_std']:.2f}"
        score = "-" if row["normalized_score"] is None else f"{row['normalized_score']:.1f}"
        lines.append(f"{f'CDRED imitation, p={p:g}':<26} {ret:>18} {row['success_rate']:>8.2f} {score:>7}")
    lines += ["", f"report:          {s['report']}", f"tremble plot:    {s['tremble_plot']}",
              f"imitation curve: {s['imitation_curve']}"]
    if Path(s["expert_curve"]).exists():
        lines.append(f"expert curve:    {s['expert_curve']}")
    return "\n".join(lines)


def replace(cfg: PipelineConfig, **changes: Any) -> PipelineConfig:
    """A changed copy (configs are frozen)."""
    return dataclasses.replace(cfg, **changes)
