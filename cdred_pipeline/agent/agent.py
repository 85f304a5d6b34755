"""TD-MPC2-style agent: world model + optimisers + acting + checkpoints (paper App. A-B).

```python
agent = TDMPC2Agent(AgentConfig.preset("small"), obs_shape=(5,), action_dim=1)
a = agent.act(obs, t0=True, eval_mode=False)        # MPPI (cfg.plan) or the policy prior
info = agent.update(buffer.sample(256, 3))          # one gradient step -> dict of floats
agent.save("agent.pt", extra={"task": "dmc:cartpole-balance"})
agent = TDMPC2Agent.load("agent.pt", device="auto")
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cdred_pipeline import __version__
from cdred_pipeline.agent.compiled import compile_fn
from cdred_pipeline.agent.checkpoint import atomic_torch_save, get_rng_state, safe_torch_load, set_rng_state
from cdred_pipeline.agent.config import AgentConfig, resolve_device
from cdred_pipeline.agent.cuda_graphs import GraphedCall, graphs_available
from cdred_pipeline.agent.layers import RunningScale
from cdred_pipeline.agent.ops import two_hot
from cdred_pipeline.agent.planner import mppi_core, mppi_plan
from cdred_pipeline.agent.reward_head import RewardHead, TwoHotRewardHead
from cdred_pipeline.agent.world_model import WorldModel, latent_rollout
from cdred_pipeline.errors import CheckpointError, TrainingDivergedError, UsageError

CHECKPOINT_FORMAT = "cdred-agent"
CHECKPOINT_VERSION = 1
UPDATE_METRICS = ("total_loss", "consistency_loss", "reward_loss", "value_loss", "td_target",
                  "grad_norm", "pi_loss", "pi_grad_norm", "pi_entropy", "pi_scale")


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _check_plain(value: Any, where: str = "extra") -> None:
    """Checkpoint ``extra`` may hold only tensors and plain Python types (weights_only-safe)."""
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be str, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} holds a {type(value).__name__}; checkpoints store only tensors and plain types")


@dataclass
class ActState:
    """One episode's acting state: the previous MPPI mean (the warm start of the next plan, ``None``
    at the episode's start) and the generator its samples are drawn from."""

    prev_mean: Optional[Tensor] = None
    generator: Optional[torch.Generator] = None


class TDMPC2Agent:
    """The agent of paper Alg. 1-2 with a pluggable reward head.

    Args:
        cfg: :class:`AgentConfig` (frozen).
        obs_shape: ``(D,)`` (float32 states) or ``(C, H, W)`` (uint8 stacked frames).
        action_dim: A (actions in [-1, 1]^A).
        reward_head: ``None`` builds a :class:`TwoHotRewardHead` on environment reward; pass the
            CDRED head for imitation. Built for x = z (``cfg.reward_space="latent"``, x_dim =
            latent_dim) or x = obs ("obs", x_dim = obs_dim, state observations only).
        device: ``auto`` | ``cpu`` | ``cuda`` | a torch.device.
        cuda_graphs: capture the update and the MPPI plan as CUDA graphs (one launch each instead of
            hundreds of kernel launches). ``None``: on when the device is CUDA and ``cfg.compile`` is
            off. A runtime choice like ``device``: not part of the config or the checkpoint.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        obs_shape: Sequence[int],
        action_dim: int,
        reward_head: Optional[RewardHead] = None,
        device: "str | torch.device" = "auto",
        cuda_graphs: Optional[bool] = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(device)
        if cuda_graphs and not graphs_available(self.device):
            raise UsageError(f"cuda_graphs needs a CUDA device and torch>=2.4 (device here: {self.device})")
        self.cuda_graphs = (graphs_available(self.device) and not cfg.compile) if cuda_graphs is None else bool(cuda_graphs)
        self._update_graph: Optional[tuple[tuple, GraphedCall]] = None
        self._plan_graph: Optional[GraphedCall] = None
        self.obs_shape, self.action_dim = tuple(int(s) for s in obs_shape), int(action_dim)
        self.is_pixel = len(self.obs_shape) == 3
        if cfg.reward_space == "obs" and self.is_pixel:
            raise UsageError("reward_space='obs' needs state observations; pixel observations use 'latent'")
        self.x_dim = cfg.latent_dim if cfg.reward_space == "latent" else self.obs_shape[0]
        with torch.random.fork_rng(devices=[]):  # reproducible init that leaves the global RNG alone
            torch.manual_seed(cfg.seed)
            if reward_head is None:
                reward_head = TwoHotRewardHead(
                    self.x_dim, self.action_dim, mlp_dim=cfg.mlp_dim, num_bins=cfg.num_bins, vmin=cfg.vmin, vmax=cfg.vmax
                )
            for attr in ("reward", "loss", "uses_env_reward"):
                if not hasattr(reward_head, attr):
                    raise TypeError(f"reward_head must implement the RewardHead interface; {type(reward_head).__name__} lacks {attr!r}")
            self.model = WorldModel(cfg, self.obs_shape, self.action_dim, reward_head).to(self.device)
        self.model.eval()
        m = self.model
        self._model_params = [p for part in (m._encoder, m._dynamics, m._reward, m._Qs) for p in part.parameters() if p.requires_grad]
        self.optim = torch.optim.Adam(
            [
                {"params": [p for p in m._encoder.parameters() if p.requires_grad], "lr": cfg.lr * cfg.enc_lr_scale},
                {"params": [p for part in (m._dynamics, m._reward, m._Qs) for p in part.parameters() if p.requires_grad]},
            ],
            lr=cfg.lr,
            capturable=self.cuda_graphs,  # optimiser state on the device: the step can live in a graph
        )
        self.pi_optim = torch.optim.Adam(m._pi.parameters(), lr=cfg.lr, eps=1e-5, capturable=self.cuda_graphs)
        self.schedulers = (
            [torch.optim.lr_scheduler.StepLR(o, cfg.lr_step_every, cfg.lr_gamma) for o in (self.optim, self.pi_optim)]
            if cfg.lr_step_every > 0 else []
        )
        self.scale = RunningScale(cfg.scale_tau).to(self.device)
        self.gamma = cfg.gamma
        self.update_step = 0
        self._act_gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self._state = ActState(generator=self._act_gen)  # the acting state of act()
        self._batch_gen = torch.Generator(device=self.device).manual_seed(0)  # act_batch's unused prior sample
        self._rho = cfg.rho ** torch.arange(cfg.horizon + 1, device=self.device, dtype=torch.float32)
        self._model_loss_fn = compile_fn(self._model_loss, self.device) if cfg.compile else self._model_loss
        self._pi_loss_fn = compile_fn(self._pi_loss, self.device) if cfg.compile else self._pi_loss
        self.extra: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ info
    @property
    def reward_head(self) -> RewardHead:
        return self.model._reward

    def num_params(self, include_reward: bool = True) -> int:
        """Trainable parameters (encoder, dynamics, policy, Q ensemble, and the reward head)."""
        return self.model.num_trainable(include_reward)

    # ------------------------------------------------------------------------------------ acting
    def _obs_tensor(self, obs: Any) -> Tensor:
        t = torch.as_tensor(np.asarray(obs), device=self.device)
        if tuple(t.shape) != self.obs_shape:
            raise ValueError(f"observation shape {tuple(t.shape)} does not match the agent's {self.obs_shape}")
        return (t if self.is_pixel else t.float()).unsqueeze(0)

    def new_act_state(self, generator: "torch.Generator | int | None" = None) -> ActState:
        """A fresh episode's acting state. ``generator``: the episode's own ``torch.Generator``, a seed for
        a new one on the agent's device, or ``None`` for the agent's own generator (seeded by
        ``cfg.seed``, saved in checkpoints)."""
        if generator is None:
            generator = self._act_gen
        elif not isinstance(generator, torch.Generator):
            generator = torch.Generator(device=self.device).manual_seed(int(generator))
        return ActState(generator=generator)

    @property
    def act_generator(self) -> torch.Generator:
        """The agent's own acting generator (its state is saved in checkpoints)."""
        return self._act_gen

    @torch.no_grad()
    def act(self, obs: np.ndarray, t0: bool = False, eval_mode: bool = False) -> np.ndarray:
        """An action in [-1, 1]^A (float32 numpy) for one observation, on the agent's own acting state.

        ``cfg.plan``: MPPI (App. B.2) warm-started from the previous step unless ``t0`` (first step of
        an episode). Otherwise the policy prior. ``eval_mode``: the mean action (MPPI: the final
        elite-weighted mean; policy: tanh(mu)) instead of a sample. Randomness comes from the agent's
        own generator (seeded by ``cfg.seed``, saved in checkpoints).
        """
        if t0:
            self._state.prev_mean = None
        return self._act_one(self._obs_tensor(obs), self._state, eval_mode).float().cpu().numpy()

    @torch.no_grad()
    def act_batch(self, obs: np.ndarray, states: Sequence[ActState], eval_mode: bool = True,
                  per_row: bool = False) -> np.ndarray:
        """Actions (K, A) for K observations of K episodes, each acting on its own :class:`ActState`.

        Policy prior in eval mode (paper Eq. 1-2: ``tanh(mu(z))``, ``z = h(s)``): ONE forward pass for
        the K rows; ``per_row`` makes one pass per row instead, so that a row's action is bitwise the
        same whatever K and whatever its place in the batch (collect-experts relies on it: CPU matmul
        kernels can round a row differently by its position, even in a batch of fixed shape). MPPI
        (App. B.2, Alg. 2) plans one latent at a time: one plan per row, warm-started from and drawing
        from that row's state (rows on the agent's own generator share its draws).
        """
        if len(obs) != len(states):
            raise ValueError(f"act_batch got {len(obs)} observations but {len(states)} states")
        if self.cfg.plan or not eval_mode:
            rows = [self._act_one(self._obs_tensor(o), st, eval_mode) for o, st in zip(obs, states)]
            return torch.stack(rows).float().cpu().numpy()
        return self._prior_mean_batch(obs, per_row)

    def _prior_mean_batch(self, obs: np.ndarray, per_row: bool) -> np.ndarray:
        """``tanh(mu(encode(obs)))`` for a batch, in one pass or one pass per row."""
        x = torch.as_tensor(np.asarray(obs), device=self.device)
        if tuple(x.shape[1:]) != self.obs_shape:
            raise ValueError(f"observation shape {tuple(x.shape[1:])} does not match the agent's {self.obs_shape}")
        if not self.is_pixel:
            x = x.float()
        parts = x.split(1) if per_row else (x,)
        means = [self.model.pi(self.model.encode(p), generator=self._batch_gen)[1]["mean"] for p in parts]
        return torch.cat(means).float().cpu().numpy()  # the policy's samples are not used

    def _act_one(self, obs_t: Tensor, state: ActState, eval_mode: bool) -> Tensor:
        """One action (A,) for one observation (1, ...) on ``state`` (its warm start is updated)."""
        gen = state.generator if state.generator is not None else self._act_gen
        if self.cfg.plan and self.cuda_graphs and gen is self._act_gen:
            warm = state.prev_mean is not None
            sample, mean_action, mean = self._graphed_plan(
                obs_t, state.prev_mean if warm else torch.zeros(self.cfg.horizon, self.action_dim, device=self.device),
                torch.tensor(1.0 if warm else 0.0))
            state.prev_mean = mean.clone()  # the graph's output buffers are overwritten by the next plan
            return (mean_action if eval_mode else sample).clone()
        z = self.model.encode(obs_t)
        if self.cfg.plan:
            a, state.prev_mean = mppi_plan(self.model, z, self.cfg, gamma=self.gamma, prev_mean=state.prev_mean,
                                           eval_mode=eval_mode, generator=gen)
            return a
        sample, info = self.model.pi(z, generator=gen)
        return (info["mean"] if eval_mode else sample)[0]

    def _graphed_plan(self, obs: Tensor, prev_mean: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """encode + :func:`mppi_core` as one CUDA graph (built on first use, drawing from the agent's
        own generator)."""
        if self._plan_graph is None:
            def plan(o: Tensor, pm: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
                return mppi_core(self.model, self.model.encode(o), self.cfg, self.gamma, pm, k, self._act_gen)

            self._plan_graph = GraphedCall(plan, (obs, prev_mean, keep.to(self.device)), warmup=2,
                                           generators=[self._act_gen])
        return self._plan_graph(obs, prev_mean, keep)

    # ------------------------------------------------------------------------------------ learning
    def _model_loss(self, obs: Tensor, action: Tensor, reward: Optional[Tensor], is_expert: Tensor) -> dict[str, Tensor]:
        """World-model loss of Alg. 1 / Eq. 15 (TD-MPC2 ``_update``): consistency + reward + value."""
        cfg, m = self.cfg, self.model
        H = action.shape[0]
        rho = self._rho[:H]
        with torch.no_grad():
            next_z = m.encode(obs[1:], augment=self.is_pixel)                       # consistency targets
        zs_all, consistency = latent_rollout(m, m.encode(obs[0], augment=self.is_pixel), action, next_z, rho)
        x = zs_all[:-1] if cfg.reward_space == "latent" else obs[:-1].float()
        head_loss, head_reward = m._reward.loss_and_reward(x, action, reward, is_expert)
        reward_loss = (head_loss * rho).sum() / H
        with torch.no_grad():                                                        # TD targets
            r = reward if m._reward.uses_env_reward else head_reward
            next_a, _ = m.pi(next_z)
            td = r + self.gamma * m.Q(next_z, next_a, "min", target=True)            # (H, B, 1)
            td_probs = two_hot(td, cfg.num_bins, cfg.vmin, cfg.vmax)                 # (H, B, bins)
        q_logits = m.Q(zs_all[:-1], action, "all")                                   # (E, H, B, bins)
        value_ce = -(td_probs * F.log_softmax(q_logits, dim=-1)).sum(-1).mean(dim=(0, 2))  # (H,)
        value_loss = (value_ce * rho).sum() / H
        total = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
        return {"total_loss": total, "consistency_loss": consistency, "reward_loss": reward_loss,
                "value_loss": value_loss, "zs": zs_all, "td_target": td.mean()}

    def _pi_loss(self, zs: Tensor) -> dict[str, Tensor]:
        """Policy-prior loss (Eq. 16 / TD-MPC2): -(entropy_coef * scaled entropy + Q / S), rho-weighted,
        on detached latents; Q from detached parameters of two random heads, S the RunningScale."""
        a, info = self.model.pi(zs)
        q = self.model.Q(zs, a, "avg", detach=True)                                  # (H+1, B, 1)
        self.scale.update(q[0])
        q = self.scale(q)
        rho = self._rho[: zs.shape[0]]
        loss = (-(self.cfg.entropy_coef * info["scaled_entropy"] + q).mean(dim=(1, 2)) * rho).mean()
        return {"pi_loss": loss, "pi_entropy": info["entropy"].mean(), "pi_scale": self.scale.value.clone()}

    def _check_finite(self, name: str, value: Tensor) -> None:
        if not torch.isfinite(value).all():
            raise TrainingDivergedError(
                f"non-finite {name} ({float(value):.4g}) at update step {self.update_step + 1}; "
                "training stopped (lower the learning rate or check the data)"
            )

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One gradient step on a batch (docs/interfaces.md): ``obs`` (H+1, B, ...), ``action`` (H, B, A),
        ``reward`` (H, B, 1), optional ``is_expert`` (B,) bool (default all False).

        Returns floats: total/consistency/reward/value losses, grad norms, pi loss/entropy/scale, lr.
        A NaN/inf loss raises :class:`TrainingDivergedError` before any weight changes (with CUDA
        graphs: right after the step, whose weights the trainer then never saves).
        """
        missing = {"obs", "action"} - set(batch)
        if missing:
            raise KeyError(f"batch lacks {sorted(missing)}; need obs, action, reward (and optionally is_expert)")
        obs = batch["obs"].to(self.device, non_blocking=True)
        action = batch["action"].to(self.device, non_blocking=True).float()
        reward = batch.get("reward")
        reward = reward.to(self.device, non_blocking=True).float() if reward is not None else None
        H, B = action.shape[:2]
        if H > self.cfg.horizon:
            raise ValueError(f"batch horizon {H} exceeds cfg.horizon {self.cfg.horizon}")
        is_expert = batch.get("is_expert")
        is_expert = (torch.zeros(B, dtype=torch.bool, device=self.device) if is_expert is None
                     else is_expert.to(self.device).bool())
        if self.reward_head.uses_env_reward and reward is None:
            raise KeyError("the reward head learns from environment reward but the batch has no 'reward'")

        self.model.train()
        try:
            if self.cuda_graphs:
                vals = self._graphed_update(obs, action, reward, is_expert).tolist()
            else:
                vals = self._update_core(obs, action, reward, is_expert, checked=True).tolist()
        finally:
            self.model.eval()
            self.optim.zero_grad(set_to_none=True)
            self.pi_optim.zero_grad(set_to_none=True)
        for s in self.schedulers:
            s.step()
        self.update_step += 1
        result = dict(zip(UPDATE_METRICS, vals))
        if self.cuda_graphs and not all(np.isfinite(vals)):
            bad = [k for k, v in result.items() if not np.isfinite(v)]
            raise TrainingDivergedError(
                f"non-finite {', '.join(bad)} at update step {self.update_step} (CUDA-graph update: these "
                "weights are not saved); training stopped (lower the learning rate or check the data)"
            )
        result["lr"] = self.optim.param_groups[1]["lr"]
        return result

    def _update_core(self, obs: Tensor, action: Tensor, reward: Optional[Tensor], is_expert: Tensor,
                     checked: bool = True) -> Tensor:
        """World-model step then policy step then the Polyak update of the target Qs (Alg. 1); returns
        the :data:`UPDATE_METRICS` as one tensor. ``checked``: stop with TrainingDivergedError before a
        non-finite loss or gradient changes any weight (host synchronisations); unchecked, the step has
        none and can be captured in a CUDA graph (the caller checks the returned metrics)."""
        out = self._model_loss_fn(obs, action, reward, is_expert)
        if checked:
            self._check_finite("world-model loss", out["total_loss"].detach())
        self.optim.zero_grad(set_to_none=True)
        out["total_loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self._model_params, self.cfg.grad_clip_norm)
        if checked:
            self._check_finite("world-model grad norm", grad_norm)
        self.optim.step()

        pi = self._pi_loss_fn(out["zs"].detach())
        if checked:
            self._check_finite("policy loss", pi["pi_loss"].detach())
        self.pi_optim.zero_grad(set_to_none=True)
        pi["pi_loss"].backward()
        pi_grad_norm = torch.nn.utils.clip_grad_norm_(self.model._pi.parameters(), self.cfg.grad_clip_norm)
        self.pi_optim.step()
        self.model.soft_update_target_Q(self.cfg.tau)
        return torch.stack([out[n].detach().float() for n in UPDATE_METRICS[:5]]
                           + [grad_norm.float(), pi["pi_loss"].detach(), pi_grad_norm.float(), pi["pi_entropy"].detach(),
                              pi["pi_scale"]])

    def _graphed_update(self, obs: Tensor, action: Tensor, reward: Optional[Tensor], is_expert: Tensor) -> Tensor:
        """:meth:`_update_core` (unchecked) as a CUDA graph; captured again when the batch shape or a
        learning rate (a scheduler step) changes, since both are baked into the graph."""
        lrs = tuple(g["lr"] for o in (self.optim, self.pi_optim) for g in o.param_groups)
        key = (tuple(obs.shape), obs.dtype, tuple(action.shape), reward is not None, lrs)
        args = (obs, action, is_expert) if reward is None else (obs, action, reward, is_expert)
        if self._update_graph is None or self._update_graph[0] != key:
            if reward is None:
                def step(o: Tensor, a: Tensor, e: Tensor) -> Tensor:
                    return self._update_core(o, a, None, e, checked=False)
            else:
                def step(o: Tensor, a: Tensor, r: Tensor, e: Tensor) -> Tensor:  # type: ignore[misc]
                    return self._update_core(o, a, r, e, checked=False)
            self._update_graph = (key, GraphedCall(step, args, warmup=3 if self._update_graph is None else 1))
        return self._update_graph[1](*args)

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self, extra: Optional[dict] = None) -> dict[str, Any]:
        """Everything needed to resume, as tensors and plain types (weights_only-safe)."""
        extra = dict(extra or {})
        _check_plain(extra)
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "package_version": __version__,
            "torch_version": str(torch.__version__),
            "config": self.cfg.to_dict(),
            "obs_shape": list(self.obs_shape),
            "action_dim": self.action_dim,
            "reward_head": {"class": _class_path(self.reward_head), "uses_env_reward": bool(self.reward_head.uses_env_reward),
                            "x_dim": self.x_dim},
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scale": self.scale.state_dict(),
            "update_step": self.update_step,
            "prev_mean": self._state.prev_mean,
            "act_generator": {"device": self.device.type, "state": self._act_gen.get_state()},
            "batch_generator": {"device": self.device.type, "state": self._batch_gen.get_state()},
            "rng": get_rng_state(self.device),
            "last_loss_terms": self._last_loss_terms(),
            "extra": extra,
            **({} if type(self) is TDMPC2Agent else {"agent_class": _class_path(self)}),  # a subclass (baselines)
        }

    def save(self, path: "str | Path", extra: Optional[dict] = None) -> None:
        """Atomically write a self-describing checkpoint; ``extra`` (task, preset, step counters, ...)
        must hold only tensors and plain Python types."""
        atomic_torch_save(self.state_dict(extra), path)

    @staticmethod
    def read_checkpoint(path: "str | Path") -> dict[str, Any]:
        """Load and validate a checkpoint file (weights_only); foreign files are a one-line CheckpointError."""
        ckpt = safe_torch_load(path, what="agent checkpoint")
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a cdred agent checkpoint (format {ckpt.get('format')!r})")
        if ckpt.get("format_version", 0) > CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} was written by a newer cdred (checkpoint format {ckpt['format_version']}); upgrade")
        return ckpt

    def load_state(self, ckpt: "str | Path | dict", *, restore_rng: bool = False) -> dict[str, Any]:
        """Load a checkpoint (path or dict) into this agent; returns its ``extra``.

        The agent's observation shape, action dimension and reward head class must match.
        ``restore_rng`` also restores the global torch/numpy RNG states (resuming training).
        """
        src = ckpt if isinstance(ckpt, dict) else self.read_checkpoint(ckpt)
        self._update_graph = self._plan_graph = None  # graphs point at the old optimiser state: rebuild them
        where = "checkpoint" if isinstance(ckpt, dict) else str(ckpt)
        if tuple(src["obs_shape"]) != self.obs_shape or int(src["action_dim"]) != self.action_dim:
            raise CheckpointError(
                f"{where} is for obs_shape {tuple(src['obs_shape'])} / action_dim {src['action_dim']}, "
                f"this agent has {self.obs_shape} / {self.action_dim}"
            )
        head_cls = src["reward_head"]["class"]
        if head_cls != _class_path(self.reward_head):
            raise CheckpointError(f"{where} was trained with reward head {head_cls}, this agent has {_class_path(self.reward_head)}")
        try:
            self.model.load_state_dict(src["model"])
            self.optim.load_state_dict(src["optim"])
            self.pi_optim.load_state_dict(src["pi_optim"])
            for s, st in zip(self.schedulers, src["schedulers"]):
                s.load_state_dict(st)
            self.scale.load_state_dict(src["scale"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{where} does not fit this agent's network layout ({first})") from None
        self.update_step = int(src["update_step"])
        pm = src.get("prev_mean")
        self._state.prev_mean = pm.to(self.device) if pm is not None else None
        self._load_generators(src)
        if restore_rng:
            set_rng_state(src["rng"], self.device)
            self._load_last_loss_terms(src.get("last_loss_terms") or {})
        self.extra = dict(src.get("extra", {}))
        return self.extra

    def _load_generators(self, src: dict[str, Any]) -> None:
        """Restore the acting generator (and act_batch's) from a checkpoint; one saved on another device
        type (e.g. trained on cuda, evaluated on cpu) is reseeded instead, since the states differ in kind."""
        gen = src["act_generator"]
        if isinstance(gen, Tensor):  # a bare tensor is a CPU generator state (checkpoint format 1 allows both)
            gen = {"device": "cpu", "state": gen}
        if gen["device"] == self.device.type:
            self._act_gen.set_state(gen["state"])
        else:
            self._act_gen.manual_seed(self.cfg.seed + self.update_step)
        batch = src.get("batch_generator")
        if batch is not None and batch["device"] == self.device.type:
            self._batch_gen.set_state(batch["state"])

    def _last_loss_terms(self) -> dict[str, dict[str, Tensor]]:
        """The detached loss terms of the last update that the reward head (and a subclass) keep for the
        evaluation rows' diagnostics: saved, so a resumed run logs what an uninterrupted one logs."""
        out = {}
        for name, owner in (("head", self.reward_head), ("agent", self)):
            terms = getattr(owner, "last_loss_terms", None)
            if isinstance(terms, dict) and all(isinstance(v, Tensor) for v in terms.values()):
                out[name] = {k: v.detach().cpu() for k, v in terms.items()}
        return out

    def _load_last_loss_terms(self, saved: dict[str, dict[str, Tensor]]) -> None:
        """Inverse of :meth:`_last_loss_terms`."""
        for name, owner in (("head", self.reward_head), ("agent", self)):
            if name in saved and hasattr(owner, "last_loss_terms"):
                owner.last_loss_terms = {k: v.to(self.device) for k, v in saved[name].items()}

    @classmethod
    def load(
        cls,
        path: "str | Path",
        device: "str | torch.device" = "auto",
        *,
        reward_head: Optional[RewardHead] = None,
        task: Optional[str] = None,
        obs_shape: Optional[Sequence[int]] = None,
        action_dim: Optional[int] = None,
        restore_rng: bool = False,
        cuda_graphs: Optional[bool] = None,
        **config_overrides: Any,
    ) -> "TDMPC2Agent":
        """Build an agent from a checkpoint.

        ``task`` / ``obs_shape`` / ``action_dim``: when given, a checkpoint for something else is a
        one-line CheckpointError naming both. ``reward_head``: required when the checkpoint's head is not
        the default two-hot head (pass one built the same way; its weights are then loaded).
        ``config_overrides``: acting-time changes (e.g. ``plan=False``) applied by dataclasses.replace.
        """
        ckpt = cls.read_checkpoint(path)
        sub = ckpt.get("agent_class")
        if sub is not None and sub != f"{cls.__module__}.{cls.__qualname__}":  # written by a subclass: build that
            return _agent_class(sub, path).load(path, device, reward_head=reward_head, task=task, obs_shape=obs_shape,
                                                action_dim=action_dim, restore_rng=restore_rng,
                                                cuda_graphs=cuda_graphs, **config_overrides)
        ck_task = ckpt.get("extra", {}).get("task")
        if task is not None and ck_task is not None and ck_task != task:
            raise CheckpointError(f"checkpoint {path} is for task {ck_task}, not {task}")
        if obs_shape is not None and tuple(obs_shape) != tuple(ckpt["obs_shape"]):
            raise CheckpointError(f"checkpoint {path} is for observation shape {tuple(ckpt['obs_shape'])}, not {tuple(obs_shape)}")
        if action_dim is not None and int(action_dim) != int(ckpt["action_dim"]):
            raise CheckpointError(f"checkpoint {path} is for action_dim {ckpt['action_dim']}, not {action_dim}")
        try:
            cfg = AgentConfig.from_dict(ckpt["config"])
            if config_overrides:
                cfg = dataclasses.replace(cfg, **config_overrides)
        except TypeError as exc:
            raise CheckpointError(f"checkpoint {path} has an unusable config ({exc})") from None
        head_cls = ckpt["reward_head"]["class"]
        if reward_head is None and head_cls != f"{TwoHotRewardHead.__module__}.{TwoHotRewardHead.__qualname__}":
            raise CheckpointError(f"checkpoint {path} uses reward head {head_cls}; pass reward_head= built the same way to load it")
        agent = cls(cfg, ckpt["obs_shape"], ckpt["action_dim"], reward_head=reward_head, device=device,
                    cuda_graphs=cuda_graphs)
        agent.load_state(ckpt, restore_rng=restore_rng)
        return agent


def _agent_class(name: str, path: "str | Path") -> type:
    """The TDMPC2Agent subclass a checkpoint names (a module of this package only); else a one-line CheckpointError."""
    import importlib

    module, _, cls_name = name.rpartition(".")
    target = None
    if module.startswith("cdred_pipeline."):
        try:
            target = getattr(importlib.import_module(module), cls_name, None)
        except ImportError:
            target = None
    if not (isinstance(target, type) and issubclass(target, TDMPC2Agent)):
        raise CheckpointError(f"checkpoint {path} names agent class {name}, which this cdred does not have")
    return target


__all__ = ["ActState", "TDMPC2Agent", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "UPDATE_METRICS"]
