"""``cdred pipeline TASK``: collect-experts -> (render-visual for pixels) -> imitate -> evaluate
--tremble 0,0.1, each stage cached, so a rerun after an interruption or a changed late-stage option
only redoes what changed. Ends with a summary of expert, random and imitation returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cdred_pipeline.artifacts import Artifact, ArtifactStore
from cdred_pipeline.errors import UsageError
from cdred_pipeline.logging_sinks import check_log_names
from cdred_pipeline.presets import PIPELINE_PRESETS

EXPERT_POLICIES = ("tdmpc2", "scripted")  # the pipeline trains or scripts its expert; never a given checkpoint


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
    log: tuple[str, ...] = ()          # TensorBoard / W&B views of the expert's and the imitation's training
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "log", check_log_names(self.log))
        if self.preset not in PIPELINE_PRESETS:
            raise UsageError(f"--preset {self.preset!r}: choose one of {', '.join(PIPELINE_PRESETS)}")
        if self.expert_policy is not None and self.expert_policy not in EXPERT_POLICIES:
            raise UsageError(f"--expert-policy {self.expert_policy!r}: choose one of {', '.join(EXPERT_POLICIES)}")
        bad = sorted(set(self.overrides) - set(PIPELINE_PRESETS[self.preset]))
        if bad:
            raise UsageError(f"unknown pipeline setting(s) {bad}; known: {sorted(PIPELINE_PRESETS[self.preset])}")

    @property
    def settings(self) -> dict[str, Any]:
        """The preset's settings (cdred_pipeline/presets.py) with ``overrides`` applied."""
        return {**PIPELINE_PRESETS[self.preset], **self.overrides}


@dataclass
class PipelineResult:
    """The artifacts of each stage, in order, with wall time and whether it was cached."""

    stages: list[tuple[str, Artifact, float, bool]]
    summary: dict[str, Any]

    def artifact(self, stage: str) -> Artifact:
        """The artifact of the stage called ``stage`` (expert, demos, render-visual, imitate, evaluate)."""
        return next(a for s, a, _, _ in self.stages if s == stage)


def _timed(stages: list, name: str, fn: Any) -> Artifact:
    """Run one stage, recording its artifact, wall time and whether it came from the cache."""
    t0 = time.time()
    art = fn()
    cached = art.manifest.get("finished", 0) < t0  # completed before this call: taken from the cache
    stages.append((name, art, time.time() - t0, cached))
    return art


def collect_config(cfg: PipelineConfig) -> Any:
    """The collect-experts settings of the chain: scripted experts for Meta-World, TD-MPC2 otherwise."""
    from cdred_pipeline.envs import parse_task
    from cdred_pipeline.stages import collect_experts

    s, task = cfg.settings, parse_task(cfg.task)
    policy = cfg.expert_policy or ("scripted" if task.suite == "mw" else "tdmpc2")
    return collect_experts.CollectConfig(
        task=task.task, policy=policy, preset=s["agent_preset"], train_env_steps=s["expert_env_steps"], seed=cfg.seed,
        episodes=s["episodes"], random_episodes=s["random_episodes"], device=cfg.device, plan=s["plan"],
        eval_every=s["eval_every"], eval_episodes=s["train_eval_episodes"], episode_length=s["episode_length"],
        log=cfg.log)


def imitate_config(cfg: PipelineConfig) -> Any:
    """The imitate settings of the chain (at most as many demos as collected)."""
    from cdred_pipeline.stages import imitate

    s = cfg.settings
    return imitate.ImitateConfig(
        env_steps=s["imitate_env_steps"], preset=s["agent_preset"], obs=cfg.obs, reward=cfg.reward,
        num_demos=min(s["num_demos"], s["episodes"]), seed=cfg.seed, plan=s["plan"], eval_every=s["eval_every"],
        eval_episodes=s["train_eval_episodes"], seed_agent_steps=s["seed_agent_steps"], device=cfg.device,
        log=cfg.log)


def eval_config(cfg: PipelineConfig) -> Any:
    """The evaluate settings of the chain: every tremble p, on the chain's seed."""
    from cdred_pipeline.stages import evaluate

    return evaluate.EvalConfig(tremble=cfg.tremble, episodes=cfg.settings["eval_episodes"], seeds=(cfg.seed,),
                               device=cfg.device)


def demos_chain(cfg: PipelineConfig, store: ArtifactStore, *, force: bool = False, progress: bool = True,
                step: Callable[[str, Callable[[], Artifact]], Artifact] = lambda name, fn: fn(),
                ) -> tuple[Artifact, Artifact, Artifact]:
    """The expert, its demos, and the artifact whose dataset imitation reads: the demos themselves, or
    with ``obs='rgb'`` their frames rendered by render-visual. ``step(name, fn)`` runs each stage."""
    from cdred_pipeline.stages import collect_experts

    opts = {"force": force, "progress": progress}
    ccfg = collect_config(cfg)
    expert = step("expert", lambda: collect_experts.train_expert(ccfg, store, **opts))
    demos = step("demos", lambda: collect_experts.collect_demos(ccfg, expert, store, **opts))
    if cfg.obs != "rgb":
        return expert, demos, demos
    from cdred_pipeline.stages import render_visual

    dataset = str(demos.path / collect_experts.DATASET_NAME)
    return expert, demos, step("render-visual", lambda: render_visual.run(render_visual.RenderConfig(), dataset,
                                                                          store, **opts))


def run(cfg: PipelineConfig, store: ArtifactStore, *, force: bool = False, progress: bool = True) -> PipelineResult:
    """Run (or take from the cache) every stage of the chain for ``cfg.task``."""
    from cdred_pipeline.envs import parse_task
    from cdred_pipeline.stages import collect_experts, evaluate, imitate

    opts = {"force": force, "progress": progress}
    stages: list[tuple[str, Artifact, float, bool]] = []
    expert, demos, source = demos_chain(cfg, store, step=lambda name, fn: _timed(stages, name, fn), **opts)
    dataset = str(source.path / collect_experts.DATASET_NAME)
    icfg = imitate_config(cfg)
    imit = _timed(stages, "imitate", lambda: imitate.run(icfg, dataset, store, **opts))
    ecfg = eval_config(cfg)
    ev = _timed(stages, "evaluate", lambda: evaluate.run(ecfg, str(imit.path / "agent.pt"), store, **opts))
    return PipelineResult(stages, summarize(cfg, parse_task(cfg.task).task, expert, demos, imit, ev))


def summarize(cfg: PipelineConfig, task: str, expert: Artifact, demos: Artifact, imit: Artifact,
              ev: Artifact) -> dict[str, Any]:
    """Expert, random and imitation returns (per tremble p) and where the reports and plots are."""
    scores = demos.manifest.get("scores", {})
    imitation = {a["p"]: {k: a[k] for k in ("return_mean", "return_std", "success_rate", "normalized_score")}
                 for a in ev.manifest.get("aggregates", [])}
    return {
        "task": task, "preset": cfg.preset, "obs": cfg.obs, "reward": cfg.reward,
        "expert_return": (scores.get("expert") or {}).get("return_mean"),
        "random_return": (scores.get("random") or {}).get("return_mean"),
        "imitation": imitation,
        "report": str(ev.path / "report.json"), "tremble_plot": str(ev.path / "tremble.png"),
        "imitation_curve": str(imit.path / "curve.png"), "expert_curve": str(expert.path / "curve.png"),
    }


def format_summary(result: PipelineResult) -> str:
    """The table printed at the end of ``cdred pipeline``."""
    from cdred_pipeline.envs import reports_success

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
        succ = f"{row['success_rate']:.2f}" if reports_success(s["task"]) else "-"  # DMControl: no success flag
        lines.append(f"{f'CDRED imitation, p={p:g}':<26} {ret:>18} {succ:>8} {score:>7}")
    lines += ["", f"report:          {s['report']}", f"tremble plot:    {s['tremble_plot']}",
              f"imitation curve: {s['imitation_curve']}"]
    if Path(s["expert_curve"]).exists():
        lines.append(f"expert curve:    {s['expert_curve']}")
    return "\n".join(lines)
