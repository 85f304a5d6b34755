"""IQ-MPC (Li et al. 2024, "Reward-free world models for online imitation learning"): the TD-MPC2 world
model with no learned reward; its Q ensemble is the critic of IQ-Learn's inverse soft-Q objective
(Garg et al. 2021), and the reward is recovered from it where one is needed (docs/baselines.md).

```python
agent = IQMPCAgent(AgentConfig.preset("small"), obs_shape=(5,), action_dim=1, iq=IQConfig.preset("small"))
info = agent.update(sample_batch(buffer, B, H, expert_buffer))   # B behavioural + B expert sub-trajectories
```

Per step t of the latent rollout and per Q head k, with y_t = gamma V_target(z'_t), z'_t = h(s_{t+1}),
V(z) = Q(z, a) - beta log pi(a|z), a ~ pi(z), and the recovered reward r = Q_k(z_t, a_t) - y_t:

    L_kt = -E_expert[r] + (1 - gamma) E_expert[V(z_0)]   (use_v0; else E_behavioural[V(z_t) - y_t])
           + 1/(4 alpha) E_all[r^2]  (+ lambda (||grad Q(x_hat)|| - 1)^2 when grad_pen > 0)

summed over t with weights rho^t, averaged over heads and H, times ``value_coef``, plus the consistency
loss (Eq. 15 without its reward and TD terms). The policy prior keeps TD-MPC2's loss (maximise Q with
entropy). The planner reads the reward r(z, a) = Q(z, a) - gamma V(d(z, a)) from :class:`RecoveredRewardHead`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from cdred_pipeline.agent.agent import TDMPC2Agent
from cdred_pipeline.agent.compiled import compile_fn
from cdred_pipeline.agent.config import AgentConfig
from cdred_pipeline.agent.ops import two_hot_inv
from cdred_pipeline.agent.reward_head import RewardHead
from cdred_pipeline.agent.world_model import latent_rollout
from cdred_pipeline.errors import UsageError

# ------------------------------------------------------------------------------------------ config
#: Overrides of :class:`IQConfig`'s defaults, which are the authors' (tdmpc2/config.yaml and iq.py of
#: TobyLeelsz/iqmpc). The objective has no networks of its own: sizes come from the agent preset, so
#: the CPU presets keep the paper's objective.
IQ_PRESETS: dict[str, dict[str, Any]] = {"paper": {}, "small": {}, "tiny": {}}


@dataclass(frozen=True)
class IQConfig:
    """The inverse soft-Q objective's knobs (the authors' values by default)."""

    alpha: float = 0.5       # chi^2 regulariser 1/(4 alpha) E[r^2] (iq.py's default)
    use_v0: bool = True      # value term (1 - gamma) E_expert V(z_0) (config.yaml); False: E_behavioural[V - y]
    grad_pen: float = 0.0    # gradient-penalty weight lambda (config.yaml: off; 1 when the authors turn it on)

    def __post_init__(self) -> None:
        if not self.alpha > 0 or self.grad_pen < 0:
            raise UsageError(f"IQ alpha must be > 0 and grad_pen >= 0, got {self.alpha}, {self.grad_pen}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "IQConfig":
        """A named preset of :data:`IQ_PRESETS` with ``overrides`` applied."""
        if name not in IQ_PRESETS:
            raise UsageError(f"unknown IQ preset {name!r}; choose one of {', '.join(IQ_PRESETS)}")
        return cls(**{**IQ_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (part of the imitate artifact's key)."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ formulas
def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (..., N, 1) over the rows where ``mask`` (N,) holds -> (...); a mask, not indexing,
    so the shapes stay static (CUDA graphs)."""
    m = mask.to(x.dtype).reshape(-1, 1)
    return (x * m).sum(dim=(-2, -1)) / m.sum().clamp(min=1.0)


def inverse_soft_q_terms(q: Tensor, v: Tensor, y: Tensor, is_expert: Tensor, *, gamma: float, alpha: float,
                         v0: Optional[Tensor] = None) -> dict[str, Tensor]:
    """The three terms of IQ-Learn's objective per head and step (Garg et al. 2021, Eq. 10 with the chi^2
    regulariser; IQ-MPC's iq.py).

    q (E, H, N, 1): each head's Q(z_t, a_t); v (H, N, 1): V(z_t); y (H, N, 1): gamma V_target(z'_t);
    is_expert (N,). Returns ``softq`` (E, H) = -E_expert[q - y], ``value`` (H,) = (1 - gamma) v0 when
    ``v0`` is given, else E_behavioural[v - y], and ``chi2`` (E, H) = E_all[(q - y)^2] / (4 alpha)."""
    r = q - y
    value = ((1.0 - gamma) * v0).expand(v.shape[0]) if v0 is not None else masked_mean(v - y, ~is_expert)
    return {"softq": -masked_mean(r, is_expert), "value": value, "chi2": r.square().mean(dim=(-2, -1)) / (4.0 * alpha)}


def inverse_soft_q_loss(terms: dict[str, Tensor], rho: Tensor, grad_pen: Optional[Tensor] = None) -> Tensor:
    """sum_t rho^t mean_k (softq + value + chi2 + grad_pen)_kt / H: the critic loss of every head and step."""
    per = terms["softq"] + terms["value"] + terms["chi2"]
    if grad_pen is not None:
        per = per + grad_pen
    return (per.mean(0) * rho).sum() / per.shape[-1]


def gradient_penalty(critic: Callable[[Tensor], Tensor], expert_x: Tensor, behavioural_x: Tensor, u: Tensor,
                     lam: float = 1.0) -> Tensor:
    """lam * E[(||grad_x critic(x_hat)||_2 - 1)^2] at x_hat = u expert_x + (1 - u) behavioural_x (WGAN-GP,
    Gulrajani et al. 2017, as IQ-MPC's grad_pen). x (..., M, D), u (..., M, 1); returns (...) (mean over M).
    The interpolates are leaves: the penalty trains the critic, not what produced x."""
    x_hat = (u * expert_x + (1.0 - u) * behavioural_x).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return lam * (grad.norm(2, dim=-1) - 1.0).square().mean(-1)


def ensemble_q(model: Any, z: Tensor, a: Tensor) -> Tensor:
    """Every head's Q(z, a) as a scalar (E, ..., 1): the two-hot logits decoded (docs/baselines.md)."""
    return two_hot_inv(model.Q(z, a, "all"), model.cfg.vmin, model.cfg.vmax)


def soft_value(model: Any, z: Tensor, entropy_coef: float, *, target: bool = False,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """V(z) = Q(z, a) - beta log pi(a|z) with a ~ pi(z) and Q the min of two random heads (IQ-MPC's getV);
    the action is detached: V trains the critic and the latent, not the policy."""
    a, info = model.pi(z, generator=generator)
    q = model.Q(z, a.detach(), "min", target=target, generator=generator)
    return q + entropy_coef * info["entropy"].detach()


def recovered_reward(model: Any, z: Tensor, a: Tensor, z_next: Tensor, gamma: float, entropy_coef: float,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """r(z, a) = Q(z, a) - gamma V(z'), the reward the inverse soft-Q critic implies (IQ-Learn Eq. 3)."""
    q = model.Q(z, a, "min", generator=generator)
    return q - gamma * soft_value(model, z_next, entropy_coef, generator=generator)


# ------------------------------------------------------------------------------------------ reward head
class RecoveredRewardHead(RewardHead):
    """No learned reward: r(z, a) = Q(z, a) - gamma V(d(z, a)) read from the bound world model's critic
    (the planner's reward, IQ-MPC's ``_estimate_value_iq``). It has no parameters; ``loss`` is zero."""

    uses_env_reward = False

    def __init__(self) -> None:
        super().__init__()
        self._bound: tuple = ()  # (world model, gamma, entropy_coef); a tuple, so no submodule cycle

    def bind(self, model: Any, gamma: float, entropy_coef: float) -> None:
        """Read Q, pi and the dynamics from ``model`` (the world model that holds this head)."""
        self._bound = (model, float(gamma), float(entropy_coef))

    def reward(self, x: Tensor, a: Tensor) -> Tensor:
        if not self._bound:
            raise RuntimeError("RecoveredRewardHead is not bound to a world model (IQMPCAgent binds it)")
        model, gamma, beta = self._bound
        return recovered_reward(model, x, a, model.next(x, a), gamma, beta)

    def loss(self, x: Tensor, a: Tensor, env_reward: Optional[Tensor], is_expert: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0])


# ------------------------------------------------------------------------------------------ agent
class IQMPCAgent(TDMPC2Agent):
    """:class:`TDMPC2Agent` whose world-model loss is consistency + the inverse soft-Q critic loss (no reward
    or TD term). Batches must be ``sample_batch``'s: B behavioural then B expert rows. With ``cfg.compile``
    the critic terms (:meth:`_critic_terms`) and the policy loss run compiled; the gradient penalty, a
    double backward that torch.compile cannot trace, stays eager. Checkpoints load through
    ``TDMPC2Agent.load``."""

    def __init__(self, cfg: AgentConfig, obs_shape: Sequence[int], action_dim: int,
                 reward_head: Optional[RewardHead] = None, device: "str | torch.device" = "auto",
                 cuda_graphs: Optional[bool] = None, *, iq: Optional[IQConfig] = None) -> None:
        if cfg.reward_space != "latent":
            raise UsageError("IQ-MPC reads its reward from the latent critic; use reward_space='latent'")
        head = RecoveredRewardHead() if reward_head is None else reward_head
        super().__init__(cfg, obs_shape, action_dim, head, device, cuda_graphs)
        self.iq = iq if iq is not None else IQConfig()
        head.bind(self.model, self.gamma, self.cfg.entropy_coef)
        self.last_loss_terms: dict[str, Tensor] = {}
        # The world-model loss itself stays eager (the penalty's double backward); its side-effect-free
        # part is what compiles.
        self._model_loss_fn = self._model_loss
        self._critic_terms_fn = compile_fn(self._critic_terms, self.device) if self.cfg.compile else self._critic_terms

    @classmethod
    def load(cls, path: Any, device: "str | torch.device" = "auto", *, reward_head: Optional[RewardHead] = None,
             **kw: Any) -> "IQMPCAgent":
        """``TDMPC2Agent.load`` with the parameterless :class:`RecoveredRewardHead` as the default head."""
        head = RecoveredRewardHead() if reward_head is None else reward_head
        return super().load(path, device, reward_head=head, **kw)  # type: ignore[return-value]

    def _critic_terms(self, obs: Tensor, action: Tensor, is_expert: Tensor) -> dict[str, Tensor]:
        """The inverse soft-Q terms (``softq``, ``value``, ``chi2``), ``consistency_loss``, ``td_target`` and
        the rollout's latents ``zs``: every part of the loss but the gradient penalty, with no side
        effect, so torch.compile can trace it."""
        cfg, m = self.cfg, self.model
        rho = self._rho[: action.shape[0]]
        with torch.no_grad():
            next_z = m.encode(obs[1:], augment=self.is_pixel)
            y = self.gamma * soft_value(m, next_z, cfg.entropy_coef, target=True)          # (H, N, 1)
        zs, consistency = latent_rollout(m, m.encode(obs[0], augment=self.is_pixel), action, next_z, rho)
        q = ensemble_q(m, zs[:-1], action)                                                   # (E, H, N, 1)
        v = soft_value(m, zs, cfg.entropy_coef)                                              # (H+1, N, 1)
        v0 = masked_mean(v[0], is_expert) if self.iq.use_v0 else None
        terms = inverse_soft_q_terms(q, v[:-1], y, is_expert, gamma=self.gamma, alpha=self.iq.alpha, v0=v0)
        return {**terms, "consistency_loss": consistency, "td_target": y.mean(), "zs": zs}

    def _model_loss(self, obs: Tensor, action: Tensor, reward: Optional[Tensor], is_expert: Tensor) -> dict[str, Tensor]:
        """Consistency + value_coef x the inverse soft-Q loss (IQ-MPC's ``update_iq``); keys as the parent's.
        The terms come from :meth:`_critic_terms` (compiled with ``cfg.compile``); the gradient penalty and
        the sum run eagerly after it, in the order of random draws of an all-eager loss."""
        cfg, out = self.cfg, self._critic_terms_fn(obs, action, is_expert)
        terms, zs = {k: out[k] for k in ("softq", "value", "chi2")}, out["zs"]
        gp = self._gradient_penalty(zs[:-1], action) if self.iq.grad_pen > 0 else None
        critic_loss = inverse_soft_q_loss(terms, self._rho[: action.shape[0]], gp)
        self.last_loss_terms = {k: t.detach().mean() for k, t in terms.items()}
        if gp is not None:
            self.last_loss_terms["grad_pen"] = gp.detach().mean()
        total = cfg.consistency_coef * out["consistency_loss"] + cfg.value_coef * critic_loss
        return {"total_loss": total, "consistency_loss": out["consistency_loss"], "reward_loss": total.new_zeros(()),
                "value_loss": critic_loss, "td_target": out["td_target"], "zs": zs}

    def _gradient_penalty(self, z: Tensor, action: Tensor) -> Tensor:
        """The penalty (H,) between the expert half and the behavioural half of the batch, on the mean of
        every head's Q at the interpolates (one uniform weight per row)."""
        B, L = z.shape[1] // 2, z.shape[-1]
        x = torch.cat([z, action], dim=-1)
        u = torch.rand(x.shape[0], B, 1, device=x.device, dtype=x.dtype)

        def critic(xh: Tensor) -> Tensor:
            return ensemble_q(self.model, xh[..., :L], xh[..., L:]).mean(0)

        return gradient_penalty(critic, x[:, B:], x[:, :B], u, self.iq.grad_pen)


# ------------------------------------------------------------------------------------------ diagnostics
@torch.no_grad()
def iq_reward_diagnostics(agent: IQMPCAgent, buffers: dict[str, Any], n: int = 512) -> dict[str, float]:
    """Mean recovered reward r = Q(z, a) - gamma V(h(s')) and mean Q on samples of each buffer (expert,
    random, current), ``diag_expert_highest``, and the last update's loss terms. Draws on a forked RNG, so
    diagnosing does not change the training run's random numbers."""
    out: dict[str, float] = {}
    devices = [agent.device] if agent.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for name, buf in buffers.items():
            if buf is None or buf.num_valid_starts(1) == 0:
                continue
            b = buf.sample(n, 1)
            obs = b["obs"].to(agent.device)
            z = agent.model.encode(obs if agent.is_pixel else obs.float())
            a = b["action"][0].to(agent.device)
            r = recovered_reward(agent.model, z[0], a, z[1], agent.gamma, agent.cfg.entropy_coef)
            out[f"diag_reward_{name}"] = float(r.mean())
            out[f"diag_q_{name}"] = float(agent.model.Q(z[0], a, "min").mean())
    if "diag_reward_expert" in out:
        others = [v for k, v in out.items() if k.startswith("diag_reward_") and not k.endswith("_expert")]
        out["diag_expert_highest"] = float(all(out["diag_reward_expert"] > v for v in others))
    out.update({f"iq_{k}": float(v) for k, v in agent.last_loss_terms.items()})
    return out


__all__ = ["IQ_PRESETS", "IQConfig", "IQMPCAgent", "RecoveredRewardHead", "ensemble_q", "gradient_penalty",
           "inverse_soft_q_loss", "inverse_soft_q_terms", "iq_reward_diagnostics", "latent_rollout", "masked_mean",
           "recovered_reward", "soft_value"]
