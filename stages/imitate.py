"""Stage ``imitate``: CDRED online imitation learning in the world model's latent space (paper §3, Alg. 1-2).

The expert buffer is the demonstration dataset; the behavioural buffer is the agent's own online
experience (FIFO). Every update samples B behavioural and B expert sub-trajectories; the CDRED reward
model (``cdred_pipeline.reward``) replaces the environment reward everywhere: the TD targets, the
planner and the policy prior all see R(z, a) of Eq. 5, never the reward stored in the data or returned
by the environment (the latter is only logged, as the evaluation return).

Ablations (paper Fig. 3, 9, 11): ``reward="red"`` (uncoupled, expert predictor only),
``reward_space="obs"`` (the model on raw observation-action pairs), ``g="exp"``; beyond the paper:
``zeta``/``alpha`` (Eq. 5/6 weights) and ``detach_reward_input`` (the predictor loss does not train the
encoder and dynamics through the latent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.artifacts import Artifact, ArtifactStore
from cdred_pipeline.errors import DatasetError, UsageError

STAGE, VERSION = "imitate", 1
REWARDS = ("cdred", "red")
REWARD_SPACES = ("latent", "obs")
G_CHOICES = ("identity", "exp")
# StepLR x0.1 period in updates (paper App. A.2): 500k for Meta-World and ManiSkill2, 2M for DMControl.
LR_STEP_BY_SUITE = {"dmc": 2_000_000, "mw": 500_000, "ms2": 500_000, "gym": 2_000_000}
# CDRED network sizes that go with each agent preset.
REWARD_PRESET_FOR = {"paper": "paper", "small": "small", "tiny": "tiny"}


@dataclass(frozen=True)
class ImitateConfig:
    """Settings of ``cdred imitate``; ``steps`` and ``eval_every`` count env steps (simulator control
    steps after action repeat), as the paper's curves do."""

    steps: int = 100_000
    preset: str = "small"
    obs: str = "state"
    reward: str = "cdred"
    reward_space: str = "latent"
    g: str = "identity"
    zeta: float | None = None   # None: the reward preset's (paper 0.8)
    alpha: float | None = None  # None: the reward preset's (paper 0.9)
    detach_reward_input: bool = False  # stop the predictor loss's gradient into the latent (paper code: flows)
    num_demos: int | None = None
    tremble: float = 0.0
    seed: int = 0
    plan: bool = False
    camera: str | None = None
    eval_every: int = 10_000
    eval_episodes: int = 5
    seed_steps: int | None = None
    utd: float = 1.0
    buffer_capacity: int | None = None
    lr_step_every: int | None = None
    diagnose: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        from cdred_pipeline.envs import check_tremble

        check_tremble(self.tremble)
        for name, value, choices in (("--obs", self.obs, ("state", "rgb")), ("--reward", self.reward, REWARDS),
                                     ("--reward-space", self.reward_space, REWARD_SPACES), ("--g", self.g, G_CHOICES)):
            if value not in choices:
                raise UsageError(f"{name} {value!r}: choose one of {', '.join(choices)}")
        for name, w in (("--zeta", self.zeta), ("--alpha", self.alpha)):
            if w is not None and not 0.0 <= w <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {w}")
        if self.reward_space == "obs" and self.obs == "rgb":
            raise UsageError("--reward-space obs needs state observations; pixel runs use the latent space")
        if self.reward_space == "obs" and self.plan:
            raise UsageError("--reward-space obs cannot plan (imagined latents have no observation); use --no-plan")
        if self.steps < 1 or self.eval_episodes < 0 or (self.num_demos is not None and self.num_demos < 1):
            raise UsageError("--steps must be >= 1, --eval-episodes >= 0 and --num-demos >= 1")

    def key_config(self) -> dict[str, Any]:
        """The config keys the artifact depends on (the device does not change results' meaning; an unset
        zeta/alpha, or detach_reward_input off, is the preset's, which the resolved reward-model config in the
        key already holds: artifacts made before these options existed keep their keys)."""
        return {k: v for k, v in self.__dict__.items()
                if k != "device" and not (k in ("zeta", "alpha") and v is None)
                and not (k == "detach_reward_input" and not v)}


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
def random_policy_episodes(env: Any, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` uniform-random episodes (obs (T+1, ...), action, reward) for the reward diagnostics."""
    rng = np.random.default_rng([seed, 99])
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        obs_l, act_l, rew_l = [obs], [], []
        done = False
        while not done:
            a = rng.uniform(-1, 1, env.action_space.shape[0]).astype(np.float32)
            obs, r, term, trunc, _ = env.step(a)
            obs_l.append(obs), act_l.append(a), rew_l.append(r)
            done = bool(term or trunc)
        out.append({"obs": np.stack(obs_l), "action": np.stack(act_l), "reward": np.asarray(rew_l, np.float32)})
    return out


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
def run(cfg: ImitateConfig, dataset: str, store: ArtifactStore, *, force: bool = False,
        progress: bool = True) -> Artifact:
    """Train a CDRED imitation agent online from DATASET; returns the ``imitate`` artifact."""
    import torch

    from cdred_pipeline.agent import AgentConfig, ReplayBuffer, TDMPC2Agent
    from cdred_pipeline.agent.trainer import TrainerConfig, train_online
    from cdred_pipeline.datasets import load_episodes, open_dataset
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.reward import CDREDConfig, CDREDRewardHead
    from cdred_pipeline.stages.common import resolve_dataset

    path, input_key = resolve_dataset(dataset, store)
    ds = open_dataset(path)
    task = ds.attrs.get("env", {}).get("task")
    if not task:
        raise DatasetError(f"{path}: attrs.env.task is missing; cannot tell which environment to imitate in")
    env_attrs = ds.attrs.get("env", {})
    # the online env runs episodes as the demos were collected (length and action repeat)
    timing = {k: int(env_attrs[k]) for k in ("episode_length", "action_repeat") if env_attrs.get(k)}
    state_spec = make_env(task, seed=cfg.seed, **timing).spec_info
    render = check_dataset_fits(ds, state_spec, cfg.obs, cfg.camera)
    rgb_key = render.pop("rgb_key", None)
    scores = dict(ds.attrs.get("scores", {}))

    # every input check happens before the artifact folder exists: bad input leaves nothing behind
    acfg = AgentConfig.preset(
        cfg.preset, seed=cfg.seed, episode_length=state_spec.episode_length, plan=cfg.plan,
        reward_space=cfg.reward_space,
        lr_step_every=cfg.lr_step_every if cfg.lr_step_every is not None else LR_STEP_BY_SUITE[state_spec.suite])
    n_demos = ds.num_episodes if cfg.num_demos is None else cfg.num_demos
    if n_demos > ds.num_episodes:
        raise DatasetError(f"{path}: --num-demos {n_demos} but the dataset has {ds.num_episodes} episodes")
    lengths = np.asarray(ds.lengths[:n_demos])
    valid = int(np.clip(lengths - acfg.horizon + 1, 0, None).sum())
    if valid < acfg.batch_size:
        raise DatasetError(f"{path}: {n_demos} demos hold {int(lengths.sum())} transitions, {valid} sub-trajectories "
                           f"of {acfg.horizon} steps; a batch needs {acfg.batch_size}: use more demos or a smaller preset")

    weights = {k: v for k, v in (("zeta", cfg.zeta), ("alpha", cfg.alpha)) if v is not None}
    rcfg = CDREDConfig.preset(REWARD_PRESET_FOR.get(cfg.preset, "small"), mode=cfg.reward, g=cfg.g, seed=cfg.seed,
                              detach_input=cfg.detach_reward_input, **weights)
    # the key holds the resolved agent and reward-model configs: a changed preset definition is a new artifact
    key_config = {**cfg.key_config(), "agent": acfg.to_dict(), "reward_model": rcfg.to_dict()}
    art = store.begin(STAGE, VERSION, key_config, {"dataset": input_key}, force=force,
                      description=f"CDRED imitation on {task} ({cfg.reward}, {cfg.obs})")
    if art.complete:
        return art
    try:
        def env_fn(tremble: float = cfg.tremble) -> Any:
            return make_env(task, obs=cfg.obs, seed=cfg.seed, tremble=tremble, **timing, **render)

        env = env_fn()
        spec = env.spec_info
        episodes = load_episodes(path, n_demos, obs=cfg.obs, camera=rgb_key)
        obs_dtype = torch.uint8 if cfg.obs == "rgb" else torch.float32
        x_dim = acfg.latent_dim if cfg.reward_space == "latent" else spec.obs_dim
        agent = TDMPC2Agent(acfg, spec.obs_shape, spec.action_dim,
                            reward_head=CDREDRewardHead(x_dim, spec.action_dim, rcfg), device=cfg.device)
        art.update(agent_params=agent.num_params(), agent_params_without_reward=agent.num_params(False))
        expert_buffer = ReplayBuffer.from_episodes(episodes, obs_shape=spec.obs_shape, action_dim=spec.action_dim,
                                                   device=agent.device, obs_dtype=obs_dtype, seed=cfg.seed + 1)
        diag_buffers: dict[str, Any] = {"expert": expert_buffer}
        if cfg.diagnose:
            rand = random_policy_episodes(env_fn(0.0), 2, cfg.seed)
            diag_buffers["random"] = ReplayBuffer.from_episodes(
                rand, obs_shape=spec.obs_shape, action_dim=spec.action_dim, device=agent.device,
                obs_dtype=obs_dtype, seed=cfg.seed + 2)
        env.close()

        def eval_hook(agent_: Any, buffer: Any) -> dict[str, float]:
            row = reward_diagnostics(agent_, {**diag_buffers, "current": buffer}) if cfg.diagnose else {}
            return row

        repeat = spec.action_repeat
        tcfg = TrainerConfig(
            steps=max(1, cfg.steps // repeat), seed=cfg.seed, utd=cfg.utd, eval_episodes=cfg.eval_episodes,
            eval_every=max(1, cfg.eval_every // repeat), seed_steps=cfg.seed_steps,
            checkpoint_every=max(1, min(10_000, cfg.steps // repeat // 4)), buffer_capacity=cfg.buffer_capacity)
        extra = {"task": task, "obs": cfg.obs, "preset": cfg.preset, "scores": scores, "dataset": input_key,
                 "reward_config": rcfg.to_dict(), **timing, **render}
        result = train_online(lambda: env_fn(), agent, tcfg, art.path, progress=progress, expert_buffer=expert_buffer,
                              extra=extra, eval_env_fn=lambda: env_fn(0.0), eval_hook=eval_hook,
                              reference_lines=_reference_lines(scores))
        from cdred_pipeline.stages.evaluate import normalized_score

        final = result.get("final_eval_return")
        head = {"eval_return": final,
                "normalized_score": None if final is None else normalized_score(final, scores),
                "env_steps": result.get("env_step")}
        final_dir = store.folder(STAGE, art.key)  # the trainer wrote its paths in .partial
        result = {k: str(final_dir / Path(v).name) if k in ("checkpoint", "metrics", "curve") else v for k, v in result.items()}
        return art.complete_with(head, task=task, train=result, scores=scores)
    finally:
        art.release()


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


def target_check(rows: list[dict[str, Any]], expert_return: float, *, fraction: float = 0.9,
                 within_env_steps: int = 100_000) -> dict[str, Any]:
    """Issue 6's learning target on an eval curve (``read_metrics`` rows): the curve reaches ``fraction``
    of the expert's return within ``within_env_steps`` and stays there until the end of the run.

    Read as: some evaluation at or before ``within_env_steps`` from which every evaluation to the end is
    at or above the threshold, confirmed by at least one later evaluation (a run that gets there only
    at its last evaluation has not shown that it stays). An earlier hit followed by a dip is reported
    (``first_env_step``, ``worst_after_first``), not hidden. Assumes a positive expert return.

    Returns {threshold, first_env_step, settled_env_step, met, best, worst_after_first,
    worst_after_first_env_step, final, final_env_step}; the env steps are None where there is none.
    """
    if not rows:
        raise ValueError("target_check needs at least one evaluation row")
    thr = fraction * float(expert_return)
    rets = [(int(r["env_step"]), float(r["eval_return_mean"])) for r in rows]
    first = next((s for s, v in rets if s <= within_env_steps and v >= thr), None)
    k = len(rets)  # start of the trailing run of evaluations at or above the threshold
    while k > 0 and rets[k - 1][1] >= thr:
        k -= 1
    settled = rets[k][0] if k <= len(rets) - 2 and rets[k][0] <= within_env_steps else None
    after = [(s, v) for s, v in rets if first is not None and s >= first]
    worst = min(after, key=lambda sv: sv[1]) if after else (None, None)
    return {"threshold": thr, "first_env_step": first, "settled_env_step": settled, "met": settled is not None,
            "best": max(v for _, v in rets), "worst_after_first": worst[1], "worst_after_first_env_step": worst[0],
            "final": rets[-1][1], "final_env_step": rets[-1][0]}


def describe_target(check: dict[str, Any], expert_return: float) -> str:
    """One line for a person: whether ``target_check`` holds and, if not, where the curve falls short."""
    def ret(v: float) -> str:
        return f"{v:.1f} ({100 * v / expert_return:.1f}%)"

    thr, first, settled = f"{check['threshold']:.1f}", check["first_env_step"], check["settled_env_step"]
    dip = (f"{ret(check['worst_after_first'])} at {check['worst_after_first_env_step'] // 1000}k"
           if first is not None else "")
    if check["met"]:
        line = f"met: at or above {thr} from {settled // 1000}k env steps to the end, final {ret(check['final'])}"
        if first < settled:
            line += f" (first reached at {first // 1000}k, then down to {dip})"
        return line
    if first is None:
        return f"not met: never reached {thr} in time; best {ret(check['best'])}"
    if first == check["final_env_step"]:
        return f"not met: reached {thr} only at the last evaluation, {ret(check['final'])}: run longer to tell"
    line = f"not met: reached {thr} at {first // 1000}k env steps, fell to {dip}, final {ret(check['final'])}"
    if check["final"] >= check["threshold"]:
        line += " (above it again at the end, but only from the last evaluation or after the deadline)"
    return line
