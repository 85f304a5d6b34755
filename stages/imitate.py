"""Stage ``imitate``: CDRED online imitation learning in the world model's latent space (paper §3, Alg. 1-2),
and the baselines in the same toolkit (``method``; docs/baselines.md): ``iqmpc`` (IQ-MPC, the world model's
critic trained by the inverse soft-Q objective, no learned reward) and ``bc`` (behavioural cloning of the
encoder and policy prior on the demos, no environment interaction while training). Every method shares
the agent preset, the demos, the seeds, the evaluations, ``metrics.jsonl``, ``curve.png`` and a checkpoint
``cdred evaluate`` loads.

The expert buffer is the demonstration dataset; the behavioural buffer is the agent's own online
experience (FIFO). Every update samples B behavioural and B expert sub-trajectories; the CDRED reward
model (``cdred_pipeline.reward``) replaces the environment reward everywhere: the TD targets, the
planner and the policy prior all see R(z, a) of Eq. 5, never the reward stored in the data or returned
by the environment (the latter is only logged, as the evaluation return).

Ablations (paper Fig. 3, 9, 11): ``reward="red"`` (uncoupled, expert predictor only),
``reward_space="obs"`` (the model on raw observation-action pairs), ``g="exp"``; beyond the paper:
``zeta``/``alpha`` (Eq. 5/6 weights), ``sigma`` (Eq. 5 decay rate) and ``detach_reward_input`` (the
predictor loss does not train the encoder and dynamics through the latent).

Seeds come from named streams of ``seed`` (:mod:`cdred_pipeline.seeding`): ``expert-replay`` (expert
buffer sampling), ``random-episodes`` and ``random-buffer`` (the random-policy data of the reward
diagnostics), and the trainer's own streams.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.logging_sinks import check_log_names, log_cached, stage_log
from cdred_pipeline.artifacts import Artifact, ArtifactStore, artifact_key
from cdred_pipeline.errors import DatasetError, UsageError
from cdred_pipeline.presets import LR_STEP_BY_SUITE, REWARD_PRESET_FOR
from cdred_pipeline.seeding import derive

STAGE, VERSION = "imitate", 2
#: ``--method`` choices: CDRED, its uncoupled RED ablation, and the two baselines.
METHODS = ("cdred", "red", "iqmpc", "bc")
BASELINES = ("iqmpc", "bc")


@dataclass(frozen=True)
class ImitateConfig:
    """Settings of ``cdred imitate``. ``env_steps`` and ``eval_every`` count env steps (simulator
    control steps after action repeat), as the paper's curves and collect-experts' ``eval_every`` do;
    ``seed_agent_steps`` counts agent steps (decisions), as the trainer does."""

    env_steps: int = 100_000
    preset: str = "small"
    obs: str = "state"
    reward: str = "cdred"
    method: str = "cdred"                # one of METHODS; --reward red is --method red
    reward_space: str = "latent"
    g: str = "identity"
    zeta: float | None = None   # None: the reward preset's (paper 0.8)
    alpha: float | None = None  # None: the reward preset's (paper 0.9)
    sigma: float | None = None  # None: the reward preset's (paper 1)
    detach_reward_input: bool = False  # stop the predictor loss's gradient into the latent (paper code: flows)
    reward_init: str = "released"      # the reward model's init: the released code's scales, or "rnd" (CDREDConfig.init)
    num_demos: int | None = None
    tremble: float = 0.0
    seed: int = 0
    plan: bool = False
    camera: str | None = None
    eval_every: int = 10_000             # env steps between evaluations
    eval_episodes: int = 5
    seed_agent_steps: int | None = None  # None: the trainer's max(1000, 5 x episode length)
    utd: float = 1.0
    buffer_capacity: int | None = None
    lr_step_every: int | None = None     # StepLR period in updates; None: LR_STEP_BY_SUITE of the task's suite
    diagnose: bool = True
    device: str = "auto"
    compile: bool | None = None          # None: the agent preset's (fused torch.compile losses where a compiler exists)
    log: tuple[str, ...] = ()            # TensorBoard / W&B views of metrics.jsonl; not a result, not in the key

    def __post_init__(self) -> None:
        from cdred_pipeline.agent.config import REWARD_SPACES
        from cdred_pipeline.envs import OBS_KINDS, check_tremble
        from cdred_pipeline.reward.config import G_NAMES, INITS, MODES

        check_tremble(self.tremble)
        object.__setattr__(self, "log", check_log_names(self.log))
        self._resolve_method()
        for name, value, choices in (("--obs", self.obs, OBS_KINDS), ("--reward", self.reward, MODES),
                                     ("--reward-space", self.reward_space, REWARD_SPACES), ("--g", self.g, G_NAMES),
                                     ("--reward-init", self.reward_init, INITS)):
            if value not in choices:
                raise UsageError(f"{name} {value!r}: choose one of {', '.join(choices)}")
        for name, w in (("--zeta", self.zeta), ("--alpha", self.alpha)):
            if w is not None and not 0.0 <= w <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {w}")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0.0):
            raise UsageError(f"--sigma must be a finite number > 0, got {self.sigma}")
        if self.reward_space == "obs" and self.obs == "rgb":
            raise UsageError("--reward-space obs needs state observations; pixel runs use the latent space")
        if self.reward_space == "obs" and self.plan:
            raise UsageError("--reward-space obs cannot plan (imagined latents have no observation); use --no-plan")
        if self.env_steps < 1 or self.eval_episodes < 0 or (self.num_demos is not None and self.num_demos < 1):
            raise UsageError("--steps must be >= 1, --eval-episodes >= 0 and --num-demos >= 1")

    def _resolve_method(self) -> None:
        """``--reward red`` and ``--method red`` name the same run (both fields say red); the baselines
        take none of CDRED's reward options, and BC neither trembles nor plans while it trains."""
        if self.method not in METHODS:
            raise UsageError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method in ("cdred", "red"):
            mode = "red" if "red" in (self.method, self.reward) else self.reward
            object.__setattr__(self, "reward", mode)
            object.__setattr__(self, "method", mode)
            return
        cdred_only = {"--reward": self.reward != "cdred", "--reward-space": self.reward_space != "latent",
                      "--g": self.g != "identity", "--zeta": self.zeta is not None, "--alpha": self.alpha is not None,
                      "--sigma": self.sigma is not None,
                      "--detach-reward-input": self.detach_reward_input, "--reward-init": self.reward_init != "released"}
        given = [k for k, v in cdred_only.items() if v]
        if given:
            raise UsageError(f"{', '.join(given)}: CDRED reward-model options, and --method {self.method} has no "
                             "reward model; drop them or use --method cdred")
        if self.method == "bc" and self.tremble > 0:
            raise UsageError("--tremble with --method bc: BC never acts while it trains; evaluate it under "
                             "tremble with `cdred evaluate --tremble`")
        if self.method == "bc" and self.plan:
            raise UsageError("--plan with --method bc: BC learns no reward or value to plan with; use --no-plan")

    def key_config(self) -> dict[str, Any]:
        """The config keys the artifact depends on: not the device, compile or log (they do not change the
        results' meaning), and not an unset zeta/alpha/sigma, detach_reward_input off or the released init,
        which are the preset's and already in the key through the resolved reward-model config; the method
        only for the baselines (cdred and red are in the key as ``reward``)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("device", "compile", "log") and not (k in ("zeta", "alpha", "sigma") and v is None)
                and not (k == "detach_reward_input" and not v) and not (k == "reward_init" and v == "released")
                and not (k == "method" and v not in BASELINES)}


# ------------------------------------------------------------------------------------------ checks
def check_dataset_fits(ds: Any, spec: Any, obs: str, camera: str | None) -> dict[str, Any]:
    """One-line errors when the dataset does not fit the online env.

    For pixel runs returns the ``make_env`` settings that show the dataset's pixels online (camera,
    image size, render profile, as render-visual recorded them in ``attrs.env``) plus ``rgb_key``.
    """
    env_attrs = ds.attrs.get("env", {})
    if int(env_attrs.get("obs_dim", -1)) != spec.obs_dim or int(env_attrs.get("action_dim", -1)) != spec.action_dim:
        raise DatasetError(f"{ds.path}: dataset has obs_dim {env_attrs.get('obs_dim')} / action_dim "
                           f"{env_attrs.get('action_dim')} but {spec.task} has {spec.obs_dim} / {spec.action_dim}")
    if obs != "rgb":
        return {}
    if not ds.cameras:
        raise DatasetError(f"{ds.path}: no data/rgb in this dataset; run `cdred render-visual {ds.path}` first and "
                           "imitate from its output")
    cam = camera if camera is not None else env_attrs.get("camera", ds.cameras[0])
    cam = int(cam) if isinstance(cam, str) and cam.isdigit() else cam  # dm_control cameras are indices
    if str(cam) not in ds.cameras:
        raise DatasetError(f"{ds.path}: no data/rgb/{cam}; rendered cameras: {', '.join(ds.cameras)}")
    return {"camera": cam, "image_size": int(env_attrs.get("image_size", ds.image_shape(str(cam))[0])),
            "render_profile": env_attrs.get("render_profile", "fast"), "rgb_key": str(cam)}


# ------------------------------------------------------------------------------------------ diagnostics
def random_policy_episodes(env: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` uniform-random episodes (obs (T+1, ...), action, reward, ...) for the reward diagnostics,
    through the batched rollout loop on one env: reset seeds from the ``random-episodes`` stream,
    actions from :func:`cdred_pipeline.vector.random_act`."""
    from cdred_pipeline.vector import random_act, run_trajectories

    seeds = [derive(seed, "random-episodes", i) for i in range(n)]
    return run_trajectories([env], seeds, random_act(seed, int(env.action_space.shape[0])))


def reward_model_stats(agent: Any, obs: Any, action: Any) -> dict[str, float]:
    """Means of the reward R (Eq. 5), the bonuses b_E, b_B (Eq. 6) and Lemma 1's y over (obs, action)
    tensors, read where the agent's reward model lives (the encoded latent, or the raw observation)."""
    x = agent.model.encode(obs if agent.is_pixel else obs.float()) if agent.cfg.reward_space == "latent" \
        else obs.float()
    return agent.reward_head.diagnostics(x, action)


def reward_diagnostics(agent: Any, buffers: dict[str, Any], n: int = 512) -> dict[str, float]:
    """Mean CDRED reward R (Eq. 5) and bonuses b_E, b_B on samples of each buffer (expert, random, current).

    A trustworthy reward ranks expert data highest; ``diag_expert_highest`` says whether it does.
    """
    import torch

    out: dict[str, float] = {}
    head = agent.reward_head
    with torch.no_grad():
        for name, buf in buffers.items():
            if buf is None or buf.num_valid_starts(1) == 0:
                continue
            b = buf.sample(n, 1)
            d = reward_model_stats(agent, b["obs"][0].to(agent.device), b["action"][0].to(agent.device))
            out[f"diag_reward_{name}"] = float(d["R"])
            out[f"diag_bE_{name}"] = float(d["b_E"])
            out[f"diag_bB_{name}"] = float(d["b_B"])
    if "diag_reward_expert" in out:
        others = [v for k, v in out.items() if k.startswith("diag_reward_") and not k.endswith("_expert")]
        out["diag_expert_highest"] = float(all(out["diag_reward_expert"] > v for v in others))
    terms = getattr(head, "last_loss_terms", None) or {}
    for k, v in terms.items():
        out[f"predictor_loss_{k}"] = float(v.mean()) if hasattr(v, "mean") else float(v)
    return out


# ------------------------------------------------------------------------------------------ stage
@dataclass(frozen=True)
class RunInputs:
    """What :func:`run` resolves from the config and the dataset before it opens the artifact."""

    path: Path
    input_key: str
    task: str
    timing: dict[str, int]       # the demos' episode_length and action_repeat (the online env runs the same)
    render: dict[str, Any]       # pixel runs: make_env's camera, image size and render profile
    rgb_key: str | None
    scores: dict[str, Any]       # the dataset's expert and random-policy scores
    num_demos: int
    agent: Any                   # AgentConfig
    reward_model: Any            # CDREDConfig


def resolve_inputs(cfg: ImitateConfig, dataset: str, store: ArtifactStore) -> RunInputs:
    """Open DATASET and check it against the task, the agent preset and the number of demos, before the
    artifact folder exists: bad input leaves nothing behind (:func:`run` reads every chunk once, uncached only)."""
    from cdred_pipeline.datasets import open_dataset
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.stages.common import resolve_dataset

    path, input_key = resolve_dataset(dataset, store)
    ds = open_dataset(path)
    env_attrs = ds.attrs.get("env", {})
    task = env_attrs.get("task")
    if not task:
        raise DatasetError(f"{path}: attrs.env.task is missing; cannot tell which environment to imitate in")
    timing = {k: int(env_attrs[k]) for k in ("episode_length", "action_repeat") if env_attrs.get(k)}
    state_spec = make_env(task, seed=cfg.seed, **timing).spec_info
    render = check_dataset_fits(ds, state_spec, cfg.obs, cfg.camera)
    rgb_key = render.pop("rgb_key", None)
    acfg = agent_config(cfg, state_spec)
    num_demos = check_demos(ds, path, cfg.num_demos, acfg)
    return RunInputs(path=path, input_key=input_key, task=task, timing=timing, render=render, rgb_key=rgb_key,
                     scores=dict(ds.attrs.get("scores", {})), num_demos=num_demos,
                     agent=acfg, reward_model=reward_model_config(cfg))


def agent_config(cfg: ImitateConfig, spec: Any) -> Any:
    """The agent preset for the task (episode length, acting, reward space, StepLR period by suite)."""
    from cdred_pipeline.agent import AgentConfig
    from cdred_pipeline.agent.compiled import with_compile

    lr_step = cfg.lr_step_every if cfg.lr_step_every is not None else LR_STEP_BY_SUITE[spec.suite]
    acfg = AgentConfig.preset(cfg.preset, seed=cfg.seed, episode_length=spec.episode_length, plan=cfg.plan,
                              reward_space=cfg.reward_space, lr_step_every=lr_step)
    return with_compile(acfg, cfg.compile, cfg.device)


def reward_model_config(cfg: ImitateConfig) -> Any:
    """The CDRED reward-model preset that goes with the agent preset, with the run's mode, g, weights and sigma."""
    from cdred_pipeline.reward import CDREDConfig

    weights = {k: v for k, v in (("zeta", cfg.zeta), ("alpha", cfg.alpha), ("sigma", cfg.sigma)) if v is not None}
    return CDREDConfig.preset(REWARD_PRESET_FOR.get(cfg.preset, "small"), mode=cfg.reward, g=cfg.g, seed=cfg.seed,
                              detach_input=cfg.detach_reward_input, init=cfg.reward_init, **weights)


def check_demos(ds: Any, path: Path, num_demos: int | None, acfg: Any) -> int:
    """The number of demos to use; a one-line error when there are too few or they cannot fill a batch."""
    n_demos = ds.num_episodes if num_demos is None else num_demos
    if n_demos > ds.num_episodes:
        raise DatasetError(f"{path}: --num-demos {n_demos} but the dataset has {ds.num_episodes} episodes")
    lengths = np.asarray(ds.lengths[:n_demos])
    valid = int(np.clip(lengths - acfg.horizon + 1, 0, None).sum())
    if valid < acfg.batch_size:
        raise DatasetError(f"{path}: {n_demos} demos hold {int(lengths.sum())} transitions, {valid} sub-trajectories "
                           f"of {acfg.horizon} steps; a batch needs {acfg.batch_size}: use more demos or a smaller preset")
    return n_demos


def trainer_config(cfg: ImitateConfig, action_repeat: int) -> Any:
    """The trainer's schedule (agent steps) from the stage's env-step counts."""
    from cdred_pipeline.agent.trainer import TrainerConfig

    agent_steps = max(1, cfg.env_steps // action_repeat)
    return TrainerConfig(
        agent_steps=agent_steps, seed=cfg.seed, utd=cfg.utd, eval_episodes=cfg.eval_episodes,
        eval_every_agent_steps=max(1, cfg.eval_every // action_repeat),
        seed_agent_steps=cfg.seed_agent_steps, buffer_capacity=cfg.buffer_capacity,
        checkpoint_every_agent_steps=max(1, min(10_000, cfg.env_steps // action_repeat // 4)))


def run(cfg: ImitateConfig, dataset: str, store: ArtifactStore, *, force: bool = False,
        progress: bool = True, timings: dict[str, float] | None = None) -> Artifact:
    """Train a CDRED imitation agent online from DATASET; returns the ``imitate`` artifact. ``timings``
    receives the wall seconds of each part of the training loop (benchmarks/speed/imitate_loop.py)."""
    inp = resolve_inputs(cfg, dataset, store)
    # the key holds the resolved agent and reward-model configs: a changed preset definition is a new artifact
    key_config = {**cfg.key_config(), "agent": inp.agent.key_dict(), **method_key(cfg, inp)}
    if force or store.get(STAGE, artifact_key(STAGE, VERSION, key_config, {"dataset": inp.input_key})) is None:
        from cdred_pipeline.datasets import check_readable

        # a damaged chunk stops the run before its artifact; a cached run reads no chunk
        check_readable(inp.path, inp.num_demos, obs=cfg.obs, camera=inp.rgb_key)
    art = store.begin(STAGE, VERSION, key_config, {"dataset": inp.input_key}, force=force,
                      description=f"{cfg.method} imitation on {inp.task} ({cfg.obs})" if cfg.method in BASELINES
                      else f"CDRED imitation on {inp.task} ({cfg.reward}, {cfg.obs})")
    if art.complete:
        log_cached(cfg.log, art)
        return art
    try:
        result = train(cfg, inp, art, progress=progress, timings=timings)
        final_dir = art.final_path  # the trainer wrote its paths in .partial
        result = {k: str(final_dir / Path(v).name) if k in ("checkpoint", "metrics", "curve") else v
                  for k, v in result.items()}
        return art.complete_with(_headline(result, inp.scores), task=inp.task, train=result, scores=inp.scores)
    finally:
        art.release()


def iq_config(cfg: ImitateConfig) -> Any:
    """The IQ-MPC objective's preset that goes with the agent preset (cdred_pipeline/agent/iq_critic.py)."""
    from cdred_pipeline.agent.iq_critic import IQ_PRESETS, IQConfig

    return IQConfig.preset(cfg.preset if cfg.preset in IQ_PRESETS else "small")


def method_key(cfg: ImitateConfig, inp: RunInputs) -> dict[str, Any]:
    """The method's own resolved config in the cache key: CDRED's reward model, IQ-MPC's objective, none for BC."""
    if cfg.method == "iqmpc":
        return {"iq": iq_config(cfg).to_dict()}
    if cfg.method == "bc":
        return {}
    return {"reward_model": inp.reward_model.to_dict()}


def train(cfg: ImitateConfig, inp: RunInputs, art: Artifact, *, progress: bool = True,
          timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Build the agent with its CDRED reward head and the buffers, then train online in the artifact's
    folder (evaluating without tremble); returns the trainer's summary."""
    from cdred_pipeline.agent import TDMPC2Agent
    from cdred_pipeline.agent.trainer import train_online
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.reward import CDREDRewardHead

    def env_fn(tremble: float = cfg.tremble) -> Any:
        return make_env(inp.task, obs=cfg.obs, seed=cfg.seed, tremble=tremble, **inp.timing, **inp.render)

    env = env_fn()
    spec = env.spec_info
    env.close()
    if cfg.method == "bc":
        return train_bc_run(cfg, inp, art, spec, env_fn, progress=progress)
    if cfg.method == "iqmpc":
        from cdred_pipeline.agent.iq_critic import IQMPCAgent, iq_reward_diagnostics

        agent = IQMPCAgent(inp.agent, spec.obs_shape, spec.action_dim, device=cfg.device, iq=iq_config(cfg))
        diagnose, method_extra = iq_reward_diagnostics, {}
    else:
        x_dim = inp.agent.latent_dim if cfg.reward_space == "latent" else spec.obs_dim
        agent = TDMPC2Agent(inp.agent, spec.obs_shape, spec.action_dim,
                            reward_head=CDREDRewardHead(x_dim, spec.action_dim, inp.reward_model), device=cfg.device)
        diagnose, method_extra = reward_diagnostics, {"reward_config": inp.reward_model.to_dict()}
    art.update(agent_params=agent.num_params(), agent_params_without_reward=agent.num_params(False))
    buffers = diagnostic_buffers(cfg, inp, spec, agent.device, env_fn)

    def eval_hook(agent_: Any, behavioural: Any) -> dict[str, float]:
        return diagnose(agent_, {**buffers, "current": behavioural})

    return train_online(env_fn, agent, trainer_config(cfg, spec.action_repeat), art.path, progress=progress,
                        expert_buffer=buffers["expert"], extra=checkpoint_extra(cfg, inp, **method_extra),
                        eval_env_fn=lambda: env_fn(0.0), eval_hook=eval_hook if cfg.diagnose else None,
                        hook_buffers=buffers, reference_lines=_reference_lines(inp.scores), timings=timings,
                        log=stage_log(cfg.log, art))


def checkpoint_extra(cfg: ImitateConfig, inp: RunInputs, **method_extra: Any) -> dict[str, Any]:
    """What every method's checkpoint records beside its weights (``extra``): the method, task, observation
    kind, preset, scores, dataset key and env timing/rendering, plus the method's own fields."""
    return {"method": cfg.method, "task": inp.task, "obs": cfg.obs, "preset": cfg.preset, "scores": inp.scores,
            "dataset": inp.input_key, **method_extra, **inp.timing, **inp.render}


def train_bc_run(cfg: ImitateConfig, inp: RunInputs, art: Artifact, spec: Any, env_fn: Any, *,
                 progress: bool = True) -> dict[str, Any]:
    """Behavioural cloning of the demos with the online methods' update count and evaluation marks
    (cdred_pipeline/agent/bc.py); the agent is the plain TD-MPC2 agent, so its checkpoint loads anywhere."""
    from cdred_pipeline.agent import TDMPC2Agent
    from cdred_pipeline.agent.bc import train_bc

    agent = TDMPC2Agent(inp.agent, spec.obs_shape, spec.action_dim, device=cfg.device, cuda_graphs=False)
    art.update(agent_params=agent.num_params(), agent_params_without_reward=agent.num_params(False))
    expert = diagnostic_buffers(cfg, inp, spec, agent.device, env_fn, random_episodes=False)["expert"]
    extra = checkpoint_extra(cfg, inp)
    return train_bc(lambda: env_fn(0.0), agent, expert, trainer_config(cfg, spec.action_repeat), art.path,
                    episode_length=spec.episode_length, action_repeat=spec.action_repeat, extra=extra,
                    reference_lines=_reference_lines(inp.scores), progress=progress, log=stage_log(cfg.log, art))


def diagnostic_buffers(cfg: ImitateConfig, inp: RunInputs, spec: Any, device: Any, env_fn: Any,
                       random_episodes: bool = True) -> dict[str, Any]:
    """The expert buffer (the demos, which the trainer also samples) and, with ``cfg.diagnose`` and
    ``random_episodes``, a buffer of two random-policy episodes: the data the reward diagnostics score at
    every evaluation."""
    import torch

    from cdred_pipeline.agent import ReplayBuffer
    from cdred_pipeline.datasets import load_episodes

    episodes = load_episodes(inp.path, inp.num_demos, obs=cfg.obs, camera=inp.rgb_key)
    like = dict(obs_shape=spec.obs_shape, action_dim=spec.action_dim, device=device,
                obs_dtype=torch.uint8 if cfg.obs == "rgb" else torch.float32)
    out = {"expert": ReplayBuffer.from_episodes(episodes, **like, seed=derive(cfg.seed, "expert-replay"))}
    if cfg.diagnose and random_episodes:
        env = env_fn(0.0)
        out["random"] = ReplayBuffer.from_episodes(random_policy_episodes(env, 2, cfg.seed), **like,
                                                   seed=derive(cfg.seed, "random-buffer"))
        env.close()
    return out


def _headline(result: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """The final evaluation return, its expert-normalised score and the env steps trained."""
    from cdred_pipeline.stages.evaluate import normalized_score

    final = result.get("final_eval_return")
    return {"eval_return": final, "normalized_score": None if final is None else normalized_score(final, scores),
            "env_steps": result.get("env_step")}


def _reference_lines(scores: dict[str, Any]) -> dict[str, float]:
    """Expert and random-policy returns drawn as horizontal lines on the learning curve."""
    out = {}
    for name in ("expert", "random"):
        value = (scores.get(name) or {}).get("return_mean")
        if value is not None:
            out[f"{name} return"] = float(value)
    return out


def read_metrics(art: Artifact) -> list[dict[str, Any]]:
    """The eval rows of an imitation artifact's metrics.jsonl (for benchmarks and plots)."""
    path = Path(art.path) / "metrics.jsonl"
    return [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
            if r.get("kind") == "eval"]

