"""Stage ``collect-experts``: train (or load, or script) an expert for a task, then collect its
demonstrations with every simulator state into the zarr episode store (ARCHITECTURE §5, §6).

Two cached artifacts:

* ``experts/<key>/``: ``agent.pt``, ``metrics.jsonl``, ``curve.png`` (absent for scripted policies);
* ``demos/<key>/demos.zarr``: the demonstrations, keyed by the expert artifact and the collection
  settings, so collecting more episodes from the same expert never retrains it.

Both resume after a kill: training from its last checkpoint, collection from the last episode that
was flushed to the store.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.artifacts import Artifact, ArtifactStore
from cdred_pipeline.errors import CdredError, UsageError
from cdred_pipeline.stages.common import DATASET_NAME, file_sha256

EXPERT_STAGE, EXPERT_VERSION = "experts", 1
DEMO_STAGE, DEMO_VERSION = "demos", 1
POLICIES = ("tdmpc2", "scripted", "checkpoint")

Policy = Callable[[np.ndarray, bool], np.ndarray]
"""``policy(obs, first_step) -> action in [-1, 1]``."""


@dataclass(frozen=True)
class CollectConfig:
    """Settings of collect-experts. ``train_steps`` counts environment steps (simulator steps after
    action repeat), as TD-MPC2 and the paper report them."""

    task: str
    policy: str = "tdmpc2"
    checkpoint: str | None = None
    preset: str = "small"
    train_steps: int = 100_000
    seed: int = 0
    episodes: int = 100
    random_episodes: int = 10
    episode_length: int | None = None
    device: str = "auto"
    plan: bool | None = None
    eval_every: int | None = None     # env steps between evaluations during training (trainer default if unset)
    eval_episodes: int = 5
    probe: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise UsageError(f"--policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.policy == "checkpoint" and not self.checkpoint:
            raise UsageError("--policy checkpoint needs --checkpoint PATH")
        if self.policy == "scripted":
            from cdred_pipeline.envs import scripted_policy

            scripted_policy(self.task)  # one-line UsageError for tasks without a scripted expert
        if self.episodes < 1 or self.random_episodes < 0 or self.train_steps < 1:
            raise UsageError("--episodes must be >= 1, --random-episodes >= 0, --train-steps >= 1")


# ------------------------------------------------------------------------------------------ helpers
def _episode_seed(seed: int, index: int, stream: int) -> int:
    """Seed of episode ``index`` of a stream (0: demos, 1: random-policy baseline); independent of order."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def run_episode(env: Any, policy: Policy, seed: int, *, record_state: bool = True) -> dict[str, Any]:
    """Roll one episode; returns the arrays of the dataset layout (obs before each action, states...)."""
    obs, info = env.reset(seed=seed)
    rows: dict[str, list] = {"obs": [], "action": [], "reward": [], "terminated": [], "physics_state": []}
    success, first = False, True
    while True:
        if record_state:
            rows["physics_state"].append(env.get_physics_state())
        action = np.asarray(policy(obs, first), dtype=np.float32)
        first = False
        next_obs, reward, terminated, truncated, info = env.step(action)
        rows["obs"].append(obs)
        rows["action"].append(np.asarray(info.get("executed_action", np.clip(action, -1, 1)), dtype=np.float32))
        rows["reward"].append(float(reward))
        rows["terminated"].append(bool(terminated))
        success = success or bool(info.get("success", False))
        obs = next_obs
        if terminated or truncated:
            break
    out = {k: np.asarray(v) for k, v in rows.items() if v}
    out["final_obs"] = np.asarray(obs)
    if record_state:
        out["final_physics_state"] = env.get_physics_state()
    out["success"] = success
    out["return"] = float(np.sum(rows["reward"]))
    return out


def random_policy(action_dim: int, seed: int) -> Policy:
    """Uniform random actions in [-1, 1] from a seeded generator (the random-policy baseline)."""
    rng = np.random.default_rng(seed)
    return lambda obs, first: rng.uniform(-1.0, 1.0, size=action_dim).astype(np.float32)


def random_scores(task: str, n: int, seed: int, episode_length: int | None) -> dict[str, float]:
    """Mean return and success of the uniform random policy over ``n`` seeded episodes."""
    from cdred_pipeline.envs import make_env

    if n == 0:
        return {}
    env = make_env(task, seed=seed, episode_length=episode_length)
    rets, succ = [], []
    for i in range(n):
        ep = run_episode(env, random_policy(env.action_space.shape[0], _episode_seed(seed, i, 2)),
                         _episode_seed(seed, i, 1), record_state=False)
        rets.append(ep["return"])
        succ.append(ep["success"])
    env.close()
    return {"return_mean": float(np.mean(rets)), "return_std": float(np.std(rets)),
            "success_rate": float(np.mean(succ)), "episodes": n}




# ------------------------------------------------------------------------------------------ experts
def _expert_config(cfg: CollectConfig) -> dict[str, Any]:
    """The config keys the expert artifact depends on (collection settings excluded), with the agent
    config resolved from its preset, so that a changed preset definition is a new artifact."""
    if cfg.policy == "checkpoint":
        return {"task": cfg.task, "policy": "checkpoint", "checkpoint_sha256": file_sha256(cfg.checkpoint)}
    if cfg.policy == "scripted":
        return {"task": cfg.task, "policy": "scripted"}
    keys = ("task", "policy", "preset", "train_steps", "seed", "episode_length", "plan", "eval_every", "eval_episodes")
    out = {k: getattr(cfg, k) for k in keys}
    _spec, acfg = _agent_config(cfg)
    out["agent"] = acfg.to_dict()
    return out


def _agent_config(cfg: CollectConfig) -> tuple[Any, Any]:
    """The task's spec and the expert's resolved AgentConfig."""
    from cdred_pipeline.agent import AgentConfig
    from cdred_pipeline.envs import make_env

    spec = make_env(cfg.task, seed=cfg.seed, episode_length=cfg.episode_length).spec_info
    overrides = {} if cfg.plan is None else {"plan": cfg.plan}
    return spec, AgentConfig.preset(cfg.preset, seed=cfg.seed, episode_length=spec.episode_length, **overrides)


def train_expert(cfg: CollectConfig, store: ArtifactStore, *, force: bool = False, progress: bool = True) -> Artifact:
    """The expert artifact: a TD-MPC2 agent trained online on the task's own reward (resumable)."""
    from cdred_pipeline.envs import make_env

    if cfg.policy == "checkpoint":  # check the file before any artifact exists: bad input leaves nothing behind
        check_expert_checkpoint(cfg.checkpoint, cfg)
    art = store.begin(EXPERT_STAGE, EXPERT_VERSION, _expert_config(cfg), {}, force=force,
                      description=f"{cfg.policy} expert for {cfg.task}")
    if art.complete:
        return art
    try:
        if cfg.policy == "scripted":
            return art.complete_with({"policy": "scripted"}, task=cfg.task)
        if cfg.policy == "checkpoint":
            import shutil

            shutil.copyfile(cfg.checkpoint, art.path / "agent.pt")
            return art.complete_with({"policy": "checkpoint"}, task=cfg.task)
        from cdred_pipeline.agent import TDMPC2Agent
        from cdred_pipeline.agent.trainer import TrainerConfig, train_online

        spec, acfg = _agent_config(cfg)
        agent_steps = max(1, cfg.train_steps // spec.action_repeat)
        tcfg = TrainerConfig(steps=agent_steps, seed=cfg.seed, checkpoint_every=max(1, min(10_000, agent_steps // 4)),
                             eval_episodes=cfg.eval_episodes,
                             **({} if cfg.eval_every is None else {"eval_every": max(1, cfg.eval_every // spec.action_repeat)}))
        agent = TDMPC2Agent(acfg, spec.obs_shape, spec.action_dim, device=cfg.device)
        art.update(agent_params=agent.num_params())
        env_fn = lambda: make_env(cfg.task, seed=cfg.seed, episode_length=cfg.episode_length)  # noqa: E731
        result = train_online(env_fn, agent, tcfg, art.path, progress=progress,
                              extra={"task": cfg.task, "preset": cfg.preset, "obs": "state",
                                     "episode_length": spec.episode_length})
        final = store.folder(EXPERT_STAGE, art.key)  # the trainer wrote its paths in .partial
        result = {k: str(final / Path(v).name) if k in ("checkpoint", "metrics", "curve") else v for k, v in result.items()}
        return art.complete_with({"eval_return": result.get("final_eval_return"), "env_steps": result.get("env_step")},
                                 task=cfg.task, train=result)
    finally:
        art.release()


def check_expert_checkpoint(path: str | Path, cfg: CollectConfig) -> tuple[Any, dict[str, Any]]:
    """Load an expert checkpoint and check it acts on this task's state observations (one-line errors)."""
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.stages.common import load_agent

    agent, extra = load_agent(path, device=cfg.device, plan=cfg.plan)
    if extra.get("task") not in (None, cfg.task):
        raise CdredError(f"{path}: checkpoint is for task {extra.get('task')!r}, not {cfg.task!r}; "
                         "pass a checkpoint trained on this task", exit_code=2)
    want = make_env(cfg.task, episode_length=cfg.episode_length).spec_info.obs_shape
    if tuple(agent.obs_shape) != tuple(want):
        raise CdredError(f"{path}: checkpoint observes {tuple(agent.obs_shape)} but {cfg.task} state observations "
                         f"are {tuple(want)}; pass a state-observation checkpoint of this task", exit_code=2)
    return agent, extra


def load_expert_policy(cfg: CollectConfig, expert: Artifact) -> tuple[Policy, dict[str, Any]]:
    """A ``policy(obs, first)`` callable for the expert artifact, and the dataset's ``source`` attrs."""
    if cfg.policy == "scripted":
        from cdred_pipeline.envs import scripted_policy

        act = scripted_policy(cfg.task)
        return (lambda obs, first: act(obs)), {"kind": "scripted", "policy": f"metaworld {cfg.task}"}
    path = expert.path / "agent.pt"
    agent, extra = check_expert_checkpoint(path, cfg)
    source = {"kind": "tdmpc2", "checkpoint_sha256": file_sha256(path),
              "train_steps": int(extra.get("env_step", 0)), "preset": extra.get("preset")}
    return (lambda obs, first: agent.act(obs, t0=first, eval_mode=True)), source


# ------------------------------------------------------------------------------------------ demos
def _demo_config(cfg: CollectConfig) -> dict[str, Any]:
    return {"task": cfg.task, "seed": cfg.seed, "episodes": cfg.episodes, "random_episodes": cfg.random_episodes,
            "episode_length": cfg.episode_length, "probe": cfg.probe}


def collect_demos(cfg: CollectConfig, expert: Artifact, store: ArtifactStore, *, force: bool = False,
                  progress: bool = True) -> Artifact:
    """Roll the expert for ``cfg.episodes`` seeded episodes and write them with simulator states."""
    from tqdm.auto import tqdm

    from cdred_pipeline.datasets import EpisodeWriter, open_dataset
    from cdred_pipeline.envs import make_env

    art = store.begin(DEMO_STAGE, DEMO_VERSION, _demo_config(cfg), {"expert": expert.key}, force=force,
                      description=f"{cfg.episodes} expert episodes of {cfg.task}")
    if art.complete:
        return art
    try:
        policy, source = load_expert_policy(cfg, expert)
        env = make_env(cfg.task, seed=cfg.seed, episode_length=cfg.episode_length)
        spec = env.spec_info
        scores = art.manifest.get("random_scores")
        if scores is None:
            scores = random_scores(cfg.task, cfg.random_episodes, cfg.seed, cfg.episode_length)
            art.update(random_scores=scores)
        attrs = {
            "env": {**spec.to_dict(), "task": spec.task, "obs_dim": spec.obs_dim, "action_dim": spec.action_dim},
            "sim": _sim_attrs(env),
            "source": source,
            "scores": {"random": scores},
        }
        path = art.path / DATASET_NAME
        writer = EpisodeWriter.resume(path, attrs)
        t0 = time.time()
        bar = tqdm(total=cfg.episodes, initial=writer.num_episodes, desc=f"collect {cfg.task}", unit="ep",
                   disable=not progress)
        returns: list[float] = []
        try:
            for i in range(writer.num_episodes, cfg.episodes):
                ep = run_episode(env, policy, _episode_seed(cfg.seed, i, 0))
                writer.append_episode(ep["obs"], ep["action"], ep["reward"], ep["terminated"],
                                      ep["physics_state"], ep["final_obs"], ep["final_physics_state"],
                                      seed=_episode_seed(cfg.seed, i, 0), success=ep["success"])
                writer.flush()  # an episode counts as done once it is on disk: a kill loses no finished episode
                returns.append(ep["return"])
                bar.update(1)
                bar.set_postfix(ret=f"{ep['return']:.1f}", mean=f"{np.mean(returns):.1f}")
            bar.close()
            ds_meta = _episode_meta(writer)
            expert_scores = {"return_mean": float(np.mean(ds_meta["return"])),
                             "return_std": float(np.std(ds_meta["return"])),
                             "success_rate": float(np.mean(ds_meta["success"])), "episodes": cfg.episodes}
            writer.group.attrs.update({"scores": {"random": scores, "expert": expert_scores}})
            if cfg.probe:
                writer.group.attrs.update({"sim": {**_sim_attrs(env), "probe": _probe(cfg, env, writer)}})
            writer.close()
        except BaseException:
            writer.abort(discard=False)  # keep flushed episodes for the resume
            raise
        finally:
            env.close()
        ds = open_dataset(path)
        return art.complete_with(
            {"expert_return": expert_scores["return_mean"], "random_return": scores.get("return_mean"),
             "expert_success": expert_scores["success_rate"]},
            task=cfg.task, dataset=str(path), episodes=ds.num_episodes, steps=ds.num_steps,
            scores={"random": scores, "expert": expert_scores},
            timings={**art.manifest["timings"], "collect_s": round(time.time() - t0, 2)},
        )
    finally:
        art.release()


def _episode_meta(writer: Any) -> dict[str, np.ndarray]:
    writer.flush()
    g = writer.group
    return {"return": np.asarray(g["meta/return"][:]), "success": np.asarray(g["meta/success"][:])}


def _sim_attrs(env: Any) -> dict[str, Any]:
    from cdred_pipeline.artifacts import environment_versions

    import os

    versions = environment_versions()
    sim: dict[str, Any] = {"engine": "mujoco" if "mujoco" in versions else "unknown",
                           "versions": versions, "gl_backend": os.environ.get("MUJOCO_GL", "")}
    model = getattr(getattr(env, "unwrapped", env), "model_xml_sha256", None)
    if callable(model):
        sim["model_xml_sha256"] = model()
    return sim


def _probe(cfg: CollectConfig, env: Any, writer: Any) -> dict[str, Any]:
    """Hashes of a few rendered frames of episode 0, so render-visual can verify it reproduces the pixels."""
    from cdred_pipeline.render import probe_frames

    g = writer.group
    first_end = int(g["meta/episode_ends"][0])
    states = np.asarray(g["data/physics_state"][:first_end])
    spec = env.spec_info
    return probe_frames(cfg.task, states, size=spec.image_size, camera=spec.camera,
                        render_profile=spec.render_profile)


# ------------------------------------------------------------------------------------------ stage
def run(cfg: CollectConfig, store: ArtifactStore, *, force: bool = False, progress: bool = True) -> Artifact:
    """collect-experts: expert artifact (cached) then demos artifact (cached); returns the demos."""
    expert = train_expert(cfg, store, force=force, progress=progress)
    return collect_demos(cfg, expert, store, force=force, progress=progress)


def replace(cfg: CollectConfig, **changes: Any) -> CollectConfig:
    """A changed copy of a config (configs are frozen, never mutated)."""
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------ seeds
def _seed_unit(unit: tuple[CollectConfig, str, bool, bool]) -> dict[str, Any]:
    """One executor unit: collect-experts for one seed, run by the stage functions in the worker.

    Writes the expert and demos artifacts into the work dir (a path every worker sees) and returns
    the demos key; the driver reads the manifests.
    """
    cfg, workdir, force, progress = unit
    art = run(cfg, ArtifactStore(workdir), force=force, progress=progress)
    return {"seed": cfg.seed, "key": art.key, "expert": art.manifest["inputs"]["expert"]}


def run_seeds(cfg: CollectConfig, seeds: list[int] | tuple[int, ...], store: ArtifactStore, *,
              executor: Any = None, force: bool = False, progress: bool = True) -> list[Artifact]:
    """collect-experts for every seed (one (expert, demos) pair each) through ``executor``.

    Each seed is a work unit that calls :func:`run` with ``cfg`` for that seed, so its artifacts
    (keys, files, dataset bytes) are those of a single-seed run; a seed whose artifacts are complete
    is served from the cache, a killed one resumes. Returns the demos artifacts in seed order.
    ``executor``: :func:`cdred_pipeline.executor.make_executor` (default: one seed after the other here).
    """
    from cdred_pipeline.executor import make_executor

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds needs distinct integers, got {seeds}")
    ex = executor if executor is not None else make_executor("local")
    inline = progress and ex.kind == "local"
    units = [(replace(cfg, seed=s), str(Path(store.root).resolve()), force, inline) for s in seeds]
    outs = ex.map(_seed_unit, units, desc=f"collect-experts {cfg.task} x {len(seeds)} seeds", progress=progress)
    arts = []
    for out in outs:
        art = store.get(DEMO_STAGE, out["key"])
        if art is None:
            raise CdredError(f"seed {out['seed']}: the worker reported demos/{out['key']} but {store.root} does not "
                             "hold it; on a cluster, --workdir must be a folder every node sees (shared filesystem)")
        arts.append(art)
    return arts
