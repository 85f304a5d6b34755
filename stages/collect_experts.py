"""Stage ``collect-experts``: train (or load, or script) an expert for a task, then collect its
demonstrations with every simulator state into the zarr episode store (docs/design.md §5, §6).

Two cached artifacts:

* ``experts/<key>/``: ``agent.pt``, ``metrics.jsonl``, ``curve.png`` (absent for scripted policies);
* ``demos/<key>/demos.zarr``: the demonstrations, keyed by the expert artifact and the collection
  settings, so collecting more episodes from the same expert never retrains it.

Both resume after a kill: training from its last checkpoint, collection from the last episode that
was flushed to the store.

Collection steps ``num_envs`` environments together with ONE batched policy call per step (the
rollout loop of :mod:`cdred_pipeline.vector`), for the expert episodes and the random-policy
baseline. Episode ``i`` depends only on (seed, i) (its seeds come from the named streams of
:mod:`cdred_pipeline.seeding`), so the dataset is bitwise the same for every ``num_envs`` (not part
of the cache key) and after any number of resumes. :func:`run_units` runs tasks x seeds through the
executor (docs/design.md §7).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.logging_sinks import check_log_names, log_cached, stage_log
from cdred_pipeline.artifacts import Artifact, ArtifactStore
from cdred_pipeline.errors import CdredError, CheckpointError, UsageError
from cdred_pipeline.stages.common import DATASET_NAME, file_sha256
from cdred_pipeline.seeding import derive
from cdred_pipeline.vector import BatchAct, agent_act, random_act, run_trajectories, single_thread

# a version changes whenever the same config would give other bytes (trainer, rollout loop, seed streams)
EXPERT_STAGE, EXPERT_VERSION = "experts", 2
DEMO_STAGE, DEMO_VERSION = "demos", 4
POLICIES = ("tdmpc2", "scripted", "checkpoint")


@dataclass(frozen=True)
class CollectConfig:
    """Settings of collect-experts. ``train_env_steps`` counts environment steps (simulator steps
    after action repeat), as TD-MPC2 and the paper report them; ``eval_every`` too."""

    task: str
    policy: str = "tdmpc2"
    checkpoint: str | None = None
    preset: str = "small"
    train_env_steps: int = 100_000
    seed: int = 0
    episodes: int = 100
    random_episodes: int = 10
    episode_length: int | None = None
    device: str = "auto"
    plan: bool | None = None
    eval_every: int | None = None     # env steps between evaluations during training (trainer default if unset)
    eval_episodes: int = 5
    probe: bool = True
    num_envs: int = 1  # envs stepped together while collecting; does not change the data, not in the key
    compile: bool | None = None  # None: the agent preset's; a runtime choice like device, not in the key
    log: tuple[str, ...] = ()  # TensorBoard / W&B views of a trained expert's metrics.jsonl; not in the key

    def __post_init__(self) -> None:
        object.__setattr__(self, "log", check_log_names(self.log))
        if self.policy not in POLICIES:
            raise UsageError(f"--policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.policy == "checkpoint" and not self.checkpoint:
            raise UsageError("--policy checkpoint needs --checkpoint PATH")
        if self.policy == "scripted":
            from cdred_pipeline.envs import scripted_policy

            scripted_policy(self.task)  # one-line UsageError for tasks without a scripted expert
        if self.episodes < 1 or self.random_episodes < 0 or self.train_env_steps < 1:
            raise UsageError("--episodes must be >= 1, --random-episodes >= 0, --train-steps >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.episode_length is not None and self.episode_length < 1:
            raise UsageError(f"--episode-length must be >= 1 (or unset: the task's), got {self.episode_length}")
        if isinstance(self.num_envs, bool) or not isinstance(self.num_envs, int) or self.num_envs < 1:
            raise UsageError(f"--num-envs must be a positive integer, got {self.num_envs!r}")


# ------------------------------------------------------------------------------------------ helpers
def random_scores(task: str, n: int, seed: int, episode_length: int | None, *, num_envs: int = 1) -> dict[str, float]:
    """Mean return and success of the uniform random policy over ``n`` seeded episodes (``num_envs``
    envs stepped together; the scores do not depend on it)."""
    from cdred_pipeline.envs import make_env

    if n == 0:
        return {}
    envs = [make_env(task, seed=seed, episode_length=episode_length) for _ in range(max(1, min(num_envs, n)))]
    try:
        eps = run_trajectories(envs, [derive(seed, "baseline-reset", i) for i in range(n)],
                               random_act(seed, envs[0].action_space.shape[0]))
    finally:
        for env in envs:
            env.close()
    rets, succ = [e["return"] for e in eps], [e["success"] for e in eps]
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
    keys = ("task", "policy", "preset", "train_env_steps", "seed", "episode_length", "plan", "eval_every", "eval_episodes")
    out = {k: getattr(cfg, k) for k in keys}
    _spec, acfg = _agent_config(cfg)
    out["agent"] = acfg.key_dict()
    return out


def _agent_config(cfg: CollectConfig) -> tuple[Any, Any]:
    """The task's spec and the expert's resolved AgentConfig."""
    from cdred_pipeline.agent import AgentConfig
    from cdred_pipeline.agent.compiled import with_compile
    from cdred_pipeline.envs import make_env

    spec = make_env(cfg.task, seed=cfg.seed, episode_length=cfg.episode_length).spec_info
    overrides = {} if cfg.plan is None else {"plan": cfg.plan}
    acfg = AgentConfig.preset(cfg.preset, seed=cfg.seed, episode_length=spec.episode_length, **overrides)
    return spec, with_compile(acfg, cfg.compile, cfg.device)


def _trainer_config(cfg: CollectConfig, action_repeat: int) -> Any:
    """The trainer's settings: the env-step counts of ``cfg`` as agent steps (env steps / action repeat)."""
    from cdred_pipeline.agent.trainer import TrainerConfig

    agent_steps = max(1, cfg.train_env_steps // action_repeat)
    every = {} if cfg.eval_every is None else {"eval_every_agent_steps": max(1, cfg.eval_every // action_repeat)}
    return TrainerConfig(agent_steps=agent_steps, seed=cfg.seed, eval_episodes=cfg.eval_episodes,
                         checkpoint_every_agent_steps=max(1, min(10_000, agent_steps // 4)), **every)


def _train(cfg: CollectConfig, art: Artifact, progress: bool) -> Artifact:
    """Train a TD-MPC2 expert online in the artifact's folder and complete the artifact."""
    from cdred_pipeline.agent import TDMPC2Agent
    from cdred_pipeline.agent.trainer import train_online
    from cdred_pipeline.envs import make_env

    spec, acfg = _agent_config(cfg)
    agent = TDMPC2Agent(acfg, spec.obs_shape, spec.action_dim, device=cfg.device)
    art.update(agent_params=agent.num_params())
    env_fn = lambda: make_env(cfg.task, seed=cfg.seed, episode_length=cfg.episode_length)  # noqa: E731
    result = train_online(env_fn, agent, _trainer_config(cfg, spec.action_repeat), art.path, progress=progress,
                          extra={"task": cfg.task, "preset": cfg.preset, "obs": "state",
                                 "episode_length": spec.episode_length}, log=stage_log(cfg.log, art))
    final = art.final_path  # the trainer wrote its paths in .partial
    result = {k: str(final / Path(v).name) if k in ("checkpoint", "metrics", "curve") else v for k, v in result.items()}
    return art.complete_with({"eval_return": result.get("final_eval_return"), "env_steps": result.get("env_step")},
                             task=cfg.task, train=result)


def train_expert(cfg: CollectConfig, store: ArtifactStore, *, force: bool = False, progress: bool = True) -> Artifact:
    """The expert artifact: a TD-MPC2 agent trained online on the task's own reward (resumable), a
    copied checkpoint, or the mark of a scripted policy."""
    if cfg.policy == "checkpoint":  # check the file before any artifact exists: bad input leaves nothing behind
        check_expert_checkpoint(cfg.checkpoint, cfg)
    art = store.begin(EXPERT_STAGE, EXPERT_VERSION, _expert_config(cfg), {}, force=force,
                      description=f"{cfg.policy} expert for {cfg.task}")
    if art.complete:
        log_cached(cfg.log, art)
        return art
    try:
        if cfg.policy == "scripted":
            return art.complete_with({"policy": "scripted"}, task=cfg.task)
        if cfg.policy == "checkpoint":
            import shutil

            shutil.copyfile(cfg.checkpoint, art.path / "agent.pt")
            return art.complete_with({"policy": "checkpoint"}, task=cfg.task)
        return _train(cfg, art, progress)
    finally:
        art.release()


def trained_env_steps(extra: dict[str, Any]) -> int:
    """Env steps an expert checkpoint was trained for (its trainer state counts agent steps); 0 when it
    holds no trainer state (a checkpoint made elsewhere)."""
    return int(extra.get("trainer", {}).get("agent_step", 0)) * int(extra.get("action_repeat", 1) or 1)


def check_expert_checkpoint(path: str | Path, cfg: CollectConfig) -> tuple[Any, dict[str, Any]]:
    """Load an expert checkpoint and check it acts on this task's state observations (one-line errors)."""
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.stages.common import load_agent

    agent, extra = load_agent(path, device=cfg.device, plan=cfg.plan)
    if extra.get("task") not in (None, cfg.task):
        raise CheckpointError(f"{path}: checkpoint is for task {extra.get('task')!r}, not {cfg.task!r}; "
                              "pass a checkpoint trained on this task")
    want = make_env(cfg.task, episode_length=cfg.episode_length).spec_info.obs_shape
    if tuple(agent.obs_shape) != tuple(want):
        raise CheckpointError(f"{path}: checkpoint observes {tuple(agent.obs_shape)} but {cfg.task} state "
                              f"observations are {tuple(want)}; pass a state-observation checkpoint of this task")
    return agent, extra


def load_expert_policy(cfg: CollectConfig, expert: Artifact) -> tuple[BatchAct, dict[str, Any], Any]:
    """The expert as a batched ``act(obs (K, ...), slots) -> (K, A)`` (one call per step for all envs),
    the dataset's ``source`` attrs, and the device the policy runs on.

    * scripted (Meta-World): the stateless scripted policy, called per env (it is a Python function of
      one observation);
    * TD-MPC2 policy prior: ``model.encode`` + the mean of ``model.pi`` (paper Eq. 1-2), one forward
      pass per env (``per_row``), so that each episode's actions, and so the dataset, do not depend on
      the number of envs or on the row an episode sits in;
    * TD-MPC2 MPPI (``--plan``): one plan per env (the planner takes one latent), each with its
      own warm start and its own generator seeded per episode (stream "mppi"), so episode ``i`` samples
      the same noise whatever ran before it or beside it (``slot.index`` is the episode index).
    """
    if cfg.policy == "scripted":
        from cdred_pipeline.envs import scripted_policy

        one = scripted_policy(cfg.task)
        return ((lambda obs, slots: np.stack([one(o) for o in obs])),
                {"kind": "scripted", "policy": f"metaworld {cfg.task}"}, "cpu")
    path = expert.path / "agent.pt"
    agent, extra = check_expert_checkpoint(path, cfg)
    source = {"kind": "tdmpc2", "checkpoint_sha256": file_sha256(path),
              "train_env_steps": trained_env_steps(extra), "preset": extra.get("preset")}
    act = agent_act(agent, per_row=True, generator_seed=lambda i: derive(cfg.seed, "mppi", i))
    return act, source, agent.device


# ------------------------------------------------------------------------------------------ demos
def _demo_config(cfg: CollectConfig) -> dict[str, Any]:
    return {"task": cfg.task, "seed": cfg.seed, "episodes": cfg.episodes, "random_episodes": cfg.random_episodes,
            "episode_length": cfg.episode_length, "probe": cfg.probe}


class _InOrderWriter:
    """The rollout loop's ``on_episode`` for the demos: finished episodes are appended in index order
    (an episode that ends early waits for the lower ones) and flushed one by one, so the store always
    holds episodes 0..n-1 and a killed collection resumes at episode n."""

    def __init__(self, writer: Any, seeds: list[int], bar: Any) -> None:
        self.writer, self.seeds, self.bar = writer, seeds, bar
        self.ready: dict[int, dict[str, Any]] = {}
        self.returns: list[float] = []
        self.steps = 0

    def __call__(self, index: int, ep: dict[str, Any]) -> None:
        self.ready[index] = ep
        while self.writer.num_episodes in self.ready:
            i = self.writer.num_episodes
            self._append(i, self.ready.pop(i))

    def _append(self, i: int, e: dict[str, Any]) -> None:
        self.writer.append_episode(e["obs"][:-1], e["action"], e["reward"], e["terminated"], e["physics_state"],
                                   e["obs"][-1], e["final_physics_state"], seed=self.seeds[i],
                                   success=e["success"])
        self.writer.flush()  # an episode counts as done once it is on disk: a kill loses no finished episode
        self.steps += len(e["reward"])
        self.returns.append(e["return"])
        self.bar.update(1)
        self.bar.set_postfix(ret=f"{e['return']:.1f}", mean=f"{np.mean(self.returns):.1f}")


def _make_envs(cfg: CollectConfig, n: int) -> list[Any]:
    from cdred_pipeline.envs import make_env

    return [make_env(cfg.task, seed=cfg.seed, episode_length=cfg.episode_length) for _ in range(n)]


def _baseline_scores(cfg: CollectConfig, art: Artifact) -> dict[str, Any]:
    """The random-policy scores, computed once per artifact (kept in its manifest across resumes)."""
    scores = art.manifest.get("random_scores")
    if scores is None:
        scores = random_scores(cfg.task, cfg.random_episodes, cfg.seed, cfg.episode_length, num_envs=cfg.num_envs)
        art.update(random_scores=scores)
    return scores


def _dataset_attrs(env: Any, source: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    spec = env.spec_info
    return {"env": {**spec.to_dict(), "task": spec.task, "obs_dim": spec.obs_dim, "action_dim": spec.action_dim},
            "sim": _sim_attrs(env), "source": source, "scores": {"random": scores}}


def _finish_dataset(cfg: CollectConfig, writer: Any, env: Any, scores: dict[str, Any]) -> dict[str, Any]:
    """Check the count, write the scores (and the render probe) into the attrs, close; returns the expert scores."""
    if writer.num_episodes != cfg.episodes:
        raise CdredError(f"collected {writer.num_episodes} of {cfg.episodes} episodes; rerun to resume")
    ds_meta = _episode_meta(writer)
    expert_scores = {"return_mean": float(np.mean(ds_meta["return"])), "return_std": float(np.std(ds_meta["return"])),
                     "success_rate": float(np.mean(ds_meta["success"])), "episodes": cfg.episodes}
    writer.group.attrs.update({"scores": {"random": scores, "expert": expert_scores}})
    if cfg.probe:
        writer.group.attrs.update({"sim": {**_sim_attrs(env), "probe": _probe(cfg, env, writer)}})
    writer.close()
    return expert_scores


def _roll_demos(cfg: CollectConfig, writer: Any, envs: list[Any], act: BatchAct, device: Any,
                progress: bool) -> tuple[int, float]:
    """Roll the episodes the store lacks into it; returns the steps written and the seconds taken."""
    from tqdm.auto import tqdm

    t0 = time.time()
    bar = tqdm(total=cfg.episodes, initial=writer.num_episodes, desc=f"collect {cfg.task}", unit="ep",
               disable=not progress)
    seeds = [derive(cfg.seed, "demo-reset", i) for i in range(cfg.episodes)]
    sink = _InOrderWriter(writer, seeds, bar)
    with single_thread(device):
        run_trajectories(envs, seeds, act, record_state=True, on_episode=sink, keep=False, start=writer.num_episodes)
    bar.close()
    return sink.steps, time.time() - t0


def _collect(cfg: CollectConfig, expert: Artifact, art: Artifact, envs: list[Any], progress: bool) -> Artifact:
    """Write the demos store of the artifact (resuming a partial one) and complete the artifact."""
    from cdred_pipeline.datasets import EpisodeWriter, open_dataset

    act, source, device = load_expert_policy(cfg, expert)
    envs += _make_envs(cfg, 1)
    scores = _baseline_scores(cfg, art)
    path = art.path / DATASET_NAME
    writer = EpisodeWriter.resume(path, _dataset_attrs(envs[0], source, scores))
    first = writer.num_episodes
    n_envs = max(1, min(cfg.num_envs, cfg.episodes - first))
    envs += _make_envs(cfg, n_envs - 1)
    try:
        steps, collect_s = _roll_demos(cfg, writer, envs, act, device, progress)
        expert_scores = _finish_dataset(cfg, writer, envs[0], scores)
    except BaseException:
        writer.abort(discard=False)  # keep flushed episodes for the resume
        raise
    ds = open_dataset(path)
    env_steps = steps * int(getattr(envs[0].spec_info, "action_repeat", 1) or 1)
    return art.complete_with(
        {"expert_return": expert_scores["return_mean"], "random_return": scores.get("return_mean"),
         "expert_success": expert_scores["success_rate"]},
        task=cfg.task, dataset=str(art.final_path / DATASET_NAME), episodes=ds.num_episodes, steps=ds.num_steps,
        scores={"random": scores, "expert": expert_scores},
        collection={"num_envs": n_envs, "episodes_this_run": cfg.episodes - first,
                    "env_steps_per_s": round(env_steps / max(collect_s, 1e-9), 1)},
        timings={**art.manifest["timings"], "collect_s": round(collect_s, 2)},
    )


def collect_demos(cfg: CollectConfig, expert: Artifact, store: ArtifactStore, *, force: bool = False,
                  progress: bool = True) -> Artifact:
    """Roll the expert for ``cfg.episodes`` seeded episodes and write them with simulator states.

    ``cfg.num_envs`` envs step together with one batched policy call per step
    (:func:`cdred_pipeline.vector.run_trajectories`). Episodes end out of order across envs; they are
    appended in index order and flushed one by one (:class:`_InOrderWriter`), so a killed collection
    resumes at the first missing episode. Episode ``i`` is a function of (seed, i) alone (reset seed,
    per-episode MPPI generator, row-independent padded policy batches), so the dataset is the same
    whatever ``num_envs`` and however often the collection was resumed.
    """
    art = store.begin(DEMO_STAGE, DEMO_VERSION, _demo_config(cfg), {"expert": expert.key}, force=force,
                      description=f"{cfg.episodes} expert episodes of {cfg.task}")
    if art.complete:
        return art
    envs: list[Any] = []
    try:
        return _collect(cfg, expert, art, envs, progress)
    finally:
        for env in envs:
            env.close()
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
def check_rendering(cfg: CollectConfig) -> None:
    """Render one frame now when the dataset gets probe frames (one-line MissingDependencyError otherwise)."""
    if cfg.probe:
        from cdred_pipeline.envs.gl import check_rendering_works

        check_rendering_works()


def run(cfg: CollectConfig, store: ArtifactStore, *, force: bool = False, progress: bool = True) -> Artifact:
    """collect-experts: expert artifact (cached) then demos artifact (cached); returns the demos. Rendering
    (the probe frames written with the dataset) is checked first, so a missing GL backend fails before
    any expert is trained or episode collected."""
    check_rendering(cfg)
    expert = train_expert(cfg, store, force=force, progress=progress)
    return collect_demos(cfg, expert, store, force=force, progress=progress)


# ------------------------------------------------------------------------------------------ tasks x seeds
def _seed_unit(unit: tuple[CollectConfig, str, dict[str, Any] | None, bool, bool]) -> dict[str, Any]:
    """One executor unit: collect-experts for one (task, seed), run by the stage functions in the worker.

    Writes the expert and demos artifacts into the work dir (a path every worker sees) and returns
    the demos key; the driver reads the manifests. The driver store's replay record goes with the unit.
    """
    cfg, workdir, replay, force, progress = unit
    art = run(cfg, ArtifactStore(workdir, replay=replay), force=force, progress=progress)
    return {"task": cfg.task, "seed": cfg.seed, "key": art.key, "expert": art.manifest["inputs"]["expert"]}


def parse_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"dmc:cartpole-balance,dmc:reacher-easy"`` (or a list) -> canonical task ids, every one checked
    by :func:`cdred_pipeline.envs.parse_task` (the one-line UsageError for an unknown id) and distinct."""
    from cdred_pipeline.envs import parse_task

    items = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    if not items or any(not t for t in items):
        raise UsageError(f"TASK must be a task id or a comma list of task ids, got {tasks!r}")
    out = [parse_task(t).task for t in items]
    if len(set(out)) != len(out):
        raise UsageError(f"TASK lists a task twice: {', '.join(out)}")
    return out


def run_units(cfg: CollectConfig, tasks: list[str] | tuple[str, ...], seeds: list[int] | tuple[int, ...],
              store: ArtifactStore, *, executor: Any = None, force: bool = False,
              progress: bool = True) -> list[Artifact]:
    """collect-experts for every (task, seed), task-major, through ``executor``: one (expert, demos)
    pair each. Returns the demos artifacts in that order.

    Each unit calls :func:`run` with ``cfg`` for its task and seed, so its artifacts (keys, files,
    dataset bytes) are those of a single ``cdred collect-experts TASK --seed S`` run; a unit whose
    artifacts are complete is served from the cache, a killed one resumes. Every task id and every
    unit's config is checked before any unit starts (an unknown task, ``--policy scripted`` on a
    non-Meta-World task, ``--checkpoint`` with several tasks: one-line UsageError).
    ``executor``: :func:`cdred_pipeline.executor.make_executor` (default: one unit after the other here).
    """
    from cdred_pipeline.executor import make_executor

    tasks = parse_tasks(list(tasks))
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds needs distinct integers, got {seeds}")
    if cfg.policy == "checkpoint" and len(tasks) > 1:
        raise UsageError(f"--checkpoint is the expert of one task, got {len(tasks)} tasks; "
                         "pass one TASK with --checkpoint (or train experts for several tasks)")
    cfgs = [dataclasses.replace(cfg, task=t, seed=s) for t in tasks for s in seeds]  # checks every unit's config now
    check_rendering(cfg)
    ex = executor if executor is not None else make_executor("local")
    inline = progress and ex.kind == "local"
    root = str(Path(store.root).resolve())
    what = tasks[0] if len(tasks) == 1 else f"{len(tasks)} tasks"
    outs = ex.map(_seed_unit, [(c, root, store.replay, force, inline) for c in cfgs],
                  desc=f"collect-experts {what} x {len(seeds)} seeds", progress=progress)
    arts = []
    for out in outs:
        art = store.get(DEMO_STAGE, out["key"])
        if art is None:
            raise CdredError(f"{out['task']} seed {out['seed']}: the worker reported demos/{out['key']} but "
                             f"{store.root} does not hold it; on a cluster, --workdir must be a folder every node "
                             "sees (shared filesystem)")
        arts.append(art)
    return arts


def run_seeds(cfg: CollectConfig, seeds: list[int] | tuple[int, ...], store: ArtifactStore, *,
              executor: Any = None, force: bool = False, progress: bool = True) -> list[Artifact]:
    """collect-experts for every seed of ``cfg.task``: :func:`run_units` with one task."""
    return run_units(cfg, [cfg.task], seeds, store, executor=executor, force=force, progress=progress)
