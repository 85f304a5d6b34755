"""CDRED reward model: K frozen random targets and two predictors (paper §3.2, App. A.1; docs/design.md §4).

Input x is the world-model latent z (default) or the raw observation (reward-space "obs" ablation,
paper Fig. 9), concatenated with the action a. Networks, as App. A.1::

    target f_k, expert predictor f_E (f_phi), behavioural predictor f_B (f_psi):
        NormedLinear(D + A, h1) -> Mish, NormedLinear(h1, h2) -> Mish, ..., Linear(h_last, p)

NormedLinear = Linear -> LayerNorm -> Mish (TD-MPC2). The K targets are stored as stacked tensors
(one batched matmul per layer) registered as *buffers*: saved in ``state_dict``, moved and cast by
``.to()``, never in ``parameters()`` and therefore never in an optimiser.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdred_pipeline.reward.config import CDREDConfig
from cdred_pipeline.seeding import derive
from cdred_pipeline.reward.functional import bonus, lemma1_statistic, red_reward, resolve_g, reward_from_outputs

from cdred_pipeline.agent.layers import NormedLinear, init_linear_, mish, mlp
from cdred_pipeline.agent.reward_head import RewardHead as _RewardHeadBase

__all__ = ["CDREDRewardHead", "NormedLinear", "RandomTargetEnsemble", "predictor_mlp"]


def predictor_mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, init: str = "released") -> nn.Sequential:
    """A predictor network (App. A.1): NormedLinear-Mish layers over ``hidden``, then a plain Linear to p.
    Init "released": TD-MPC2's (trunc-normal 0.02 weights, zero biases), which the released code's world
    model applies to its predictors; "rnd": nn.Linear's default."""
    net = mlp(in_dim, hidden, out_dim)
    if init == "released":
        net.apply(init_linear_)
    return net


class RandomTargetEnsemble(nn.Module):
    """K frozen random networks f_k (Eq. 4, 7), evaluated together: ``(N, D) -> (K, N, p)``.

    The same layers as the predictors (App. A.1), drawn once from a generator seeded with ``seed``. Init
    "released" (the scales of the authors' released code): hidden layers orthogonal with gain ``gain``
    (1 there) and zero bias, the last Linear at PyTorch's default init (weights and bias uniform in
    +-1/sqrt(fan_in)), which the released code's world-model init never reaches. Init "rnd": every layer
    orthogonal with gain sqrt 2 and zero bias.
    The LayerNorms have no affine parameters (a NormedLinear's LayerNorm at initialisation: weight 1,
    bias 0 — the released code never trains them). Weights are buffers ``w{i}`` of shape
    ``(K, in, out)`` and ``b{i}`` of shape ``(K, 1, out)``.
    """

    def __init__(
        self, in_dim: int, hidden: tuple[int, ...], out_dim: int, num_targets: int, *, gain: float, seed: int,
        init: str = "released",
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.num_targets = in_dim, out_dim, num_targets
        self.num_layers = len(hidden) + 1
        gen = torch.Generator().manual_seed(int(seed))
        dims = [in_dim, *hidden, out_dim]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            w, b = torch.empty(num_targets, d_out, d_in), torch.zeros(num_targets, 1, d_out)
            bound = 1.0 / math.sqrt(d_in)
            for k in range(num_targets):
                if init == "rnd":
                    nn.init.orthogonal_(w[k], gain=math.sqrt(2.0), generator=gen)
                elif i < self.num_layers - 1:
                    nn.init.orthogonal_(w[k], gain=gain, generator=gen)
                else:  # nn.Linear's default: kaiming_uniform(a=sqrt 5) weights, uniform bias, both +-1/sqrt(fan_in)
                    w[k].uniform_(-bound, bound, generator=gen)
                    b[k].uniform_(-bound, bound, generator=gen)
            self.register_buffer(f"w{i}", w.transpose(1, 2).contiguous())
            self.register_buffer(f"b{i}", b)

    def forward(self, inp: Tensor) -> Tensor:
        """``inp`` (N, D) -> target outputs (K, N, p). Call under ``torch.no_grad()`` when training."""
        h = inp.unsqueeze(0)  # (1, N, D), broadcast against (K, D, h) in one batched matmul
        for i in range(self.num_layers):
            h = torch.matmul(h, getattr(self, f"w{i}")) + getattr(self, f"b{i}")
            if i < self.num_layers - 1:
                h = mish(F.layer_norm(h, h.shape[-1:]))
        return h

    def extra_repr(self) -> str:
        return f"K={self.num_targets}, in={self.in_dim}, out={self.out_dim}, layers={self.num_layers}, frozen"


class CDREDRewardHead(_RewardHeadBase):
    """The CDRED reward model as a pluggable reward head (docs/interfaces.md, "Reward head interface").

    Args:
        x_dim: D, size of x (latent dim, or observation dim for the "obs" reward space).
        action_dim: A.
        cfg: :class:`CDREDConfig` (default: the "paper" preset).

    ``reward(x, a)`` gives Eq. 5 (mode "cdred") or RED's exp(-sigma L) (mode "red"), shape (..., 1).
    ``loss(x, a, env_reward, is_expert)`` gives the predictor loss of Eq. 4 per time step, shape (T,).
    The environment reward is never used (``uses_env_reward = False``).
    """

    uses_env_reward: bool = False

    def __init__(self, x_dim: int, action_dim: int, cfg: Optional[CDREDConfig] = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else CDREDConfig()
        if x_dim < 1 or action_dim < 1:
            raise ValueError(f"x_dim and action_dim must be >= 1, got {x_dim}, {action_dim}")
        self.cfg = cfg
        self.x_dim, self.action_dim = int(x_dim), int(action_dim)
        in_dim = self.x_dim + self.action_dim
        self.targets = RandomTargetEnsemble(
            in_dim, cfg.hidden, cfg.embed_dim, cfg.num_targets, gain=cfg.target_gain, seed=cfg.seed,
            init=cfg.init,
        )
        # predictors drawn from the "predictor-init" stream of cfg.seed (the targets use cfg.seed itself),
        # leaving the global RNG alone: the head is built before anything seeds the global RNG, so a run
        # is only reproducible if its initial predictors do not come from there
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(cfg.seed, "predictor-init"))
            self.expert_predictor = predictor_mlp(in_dim, cfg.hidden, cfg.embed_dim, cfg.init)
            self.behavioral_predictor = predictor_mlp(in_dim, cfg.hidden, cfg.embed_dim, cfg.init)
        self._g = resolve_g(cfg.g)
        #: detached per-step losses of the last ``loss()`` call, for logging without recomputation
        self.last_loss_terms: dict[str, Tensor] = {}

    # ----------------------------------------------------------------------------------- helpers
    def _input(self, x: Tensor, a: Tensor) -> Tensor:
        if x.shape[-1] != self.x_dim or a.shape[-1] != self.action_dim:
            raise ValueError(
                f"CDRED reward head built for x_dim={self.x_dim}, action_dim={self.action_dim}, "
                f"got x {tuple(x.shape)} and a {tuple(a.shape)}"
            )
        if x.shape[:-1] != a.shape[:-1]:
            raise ValueError(f"x {tuple(x.shape)} and a {tuple(a.shape)} must share leading dims")
        return torch.cat([x, a], dim=-1)

    def outputs(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw network outputs at (x, a): ``(f_E (..., p), f_B (..., p), targets (K, ..., p))``."""
        inp = self._input(x, a)
        lead = inp.shape[:-1]
        flat = inp.reshape(-1, inp.shape[-1])
        tgt = self.targets(flat).reshape(self.cfg.num_targets, *lead, self.cfg.embed_dim)
        return self.expert_predictor(inp), self.behavioral_predictor(inp), tgt

    # ----------------------------------------------------------------------------------- interface
    def reward(self, x: Tensor, a: Tensor) -> Tensor:
        """Reward at (x, a), shape ``(..., 1)``: Eq. 5 (mode "cdred") or exp(-sigma L_RED) (mode "red").

        Differentiable but never trained through; callers (planner, TD target) use ``torch.no_grad()``.
        """
        c = self.cfg
        inp = self._input(x, a)
        lead = inp.shape[:-1]
        tgt = self.targets(inp.reshape(-1, inp.shape[-1])).reshape(c.num_targets, *lead, c.embed_dim)
        f_b = None if c.mode == "red" else self.behavioral_predictor(inp)
        return self._reward_from(self.expert_predictor(inp), f_b, tgt).unsqueeze(-1)

    def _reward_from(self, f_e: Tensor, f_b: Optional[Tensor], tgt: Tensor) -> Tensor:
        """Eq. 5 (or RED's exp(-sigma L)) from the network outputs, shape (...)."""
        c = self.cfg
        if c.mode == "red":
            return red_reward(f_e, tgt, sigma=c.sigma, centered=c.red_centered)
        return reward_from_outputs(f_e, f_b, tgt, alpha=c.alpha, zeta=c.zeta, sigma=c.sigma, g=self._g, eps=c.eps)

    def loss_terms(
        self, x: Tensor, a: Tensor, is_expert: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> dict[str, Tensor]:
        """Per-step predictor losses of Eq. 4, each of shape (T,): ``{"expert", "behavioral"}`` (see
        :meth:`_loss_terms_and_outputs`)."""
        return self._loss_terms_and_outputs(x, a, is_expert, generator=generator)[0]

    def _loss_terms_and_outputs(
        self, x: Tensor, a: Tensor, is_expert: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> tuple[dict[str, Tensor], Tensor, Optional[Tensor], Tensor]:
        """Per-step predictor losses of Eq. 4, each of shape (T,): ``{"expert", "behavioral"}``.

        Every sample (t, b) regresses onto ONE target f_k with k ~ Uniform{0..K-1} drawn per sample
        (from ``generator`` if given, on its own device). f_E is trained on the expert samples only and
        f_B on the behavioural samples only, by masks (mode "red": f_B is never evaluated, its term is
        0). Each term is the squared error averaged over the p embedding dims (as the released code's
        MSELoss; Eq. 4's squared norm / p) and over its own half of the batch; an empty half gives 0.
        Targets are evaluated without gradient; gradient reaches x through the predictors unless
        ``cfg.detach_input``.
        """
        if x.dim() != 3 or a.dim() != 3:
            raise ValueError(
                f"loss expects x (T, B, D) and a (T, B, A), got {tuple(x.shape)} and {tuple(a.shape)}"
            )
        inp = self._input(x, a)
        T, B, _ = inp.shape
        is_expert = torch.as_tensor(is_expert, device=inp.device)
        if is_expert.shape != (B,) or is_expert.dtype != torch.bool:
            raise ValueError(
                f"is_expert must be a bool tensor of shape ({B},), got {is_expert.dtype} {tuple(is_expert.shape)}"
            )
        if self.cfg.detach_input:
            inp = inp.detach()
        K, p = self.cfg.num_targets, self.cfg.embed_dim
        with torch.no_grad():
            tgt = self.targets(inp.reshape(T * B, -1)).reshape(K, T, B, p)
            gen_device = generator.device if generator is not None else inp.device
            k = torch.randint(K, (T, B), device=gen_device, generator=generator).to(inp.device)
            c = tgt.gather(0, k.view(1, T, B, 1).expand(1, T, B, p)).squeeze(0)  # (T, B, p)
        # Masks, not indexing: static shapes and no host sync (torch.compile / CUDA friendly). A masked-out
        # sample contributes an exact zero to the loss and to the gradient of the other predictor.
        terms: dict[str, Tensor] = {}
        outs: dict[str, Tensor] = {}
        halves = [("expert", self.expert_predictor, is_expert)]
        if self.cfg.mode == "cdred":
            halves.append(("behavioral", self.behavioral_predictor, ~is_expert))
        for name, net, mask in halves:
            outs[name] = net(inp)
            err = (outs[name] - c).square().mean(dim=-1)  # (T, B)
            count = mask.sum().clamp_min(1).to(err.dtype)
            terms[name] = torch.where(mask, err, torch.zeros((), dtype=err.dtype, device=err.device)).sum(-1) / count
        if "behavioral" not in terms:
            terms["behavioral"] = inp.new_zeros(T)
        self.last_loss_terms = {n: t.detach() for n, t in terms.items()}
        return terms, outs["expert"], outs.get("behavioral"), tgt

    def loss_and_reward(
        self, x: Tensor, a: Tensor, env_reward: Optional[Tensor], is_expert: Tensor,
        *, generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, Tensor]:
        """``loss(...)`` (T,) and the reward (T, B, 1) without gradient at the same (x, a), sharing one
        forward pass of the targets and predictors (the update needs both: Eq. 4 and the TD target)."""
        terms, f_e, f_b, tgt = self._loss_terms_and_outputs(x, a, is_expert, generator=generator)
        with torch.no_grad():
            r = self._reward_from(f_e.detach(), None if f_b is None else f_b.detach(), tgt)
        return self.cfg.loss_coef * (terms["expert"] + terms["behavioral"]), r.unsqueeze(-1)

    def loss(
        self,
        x: Tensor,
        a: Tensor,
        env_reward: Optional[Tensor],
        is_expert: Tensor,
        *,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Predictor loss of Eq. 4 per time step, shape (T,): ``loss_coef * (expert + behavioural)``.

        ``env_reward`` is ignored (imitation never uses environment reward). The agent applies the
        rho^t weighting, the 1/H average and its reward coefficient (docs/interfaces.md).
        """
        terms = self.loss_terms(x, a, is_expert, generator=generator)
        return self.cfg.loss_coef * (terms["expert"] + terms["behavioral"])

    @torch.no_grad()
    def diagnostics(self, x: Tensor, a: Tensor) -> dict[str, float]:
        """Means over all of (x, a) of b(f_E), b(f_B) (Eq. 6), the reward R, and Lemma 1's y for both
        predictors (an estimate of 1/n: how often the expert / behavioural data saw such points)."""
        c = self.cfg
        f_e, f_b, tgt = self.outputs(x, a)
        out = {
            "b_E": bonus(f_e, tgt, alpha=c.alpha, eps=c.eps).mean().item(),
            "b_B": bonus(f_b, tgt, alpha=c.alpha, eps=c.eps).mean().item(),
            "R": self.reward(x, a).mean().item(),
            "y_E": lemma1_statistic(f_e, tgt, eps=c.eps).mean().item(),
            "y_B": lemma1_statistic(f_b, tgt, eps=c.eps).mean().item(),
        }
        return out

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"mode={c.mode}, x_dim={self.x_dim}, action_dim={self.action_dim}, K={c.num_targets}, "
            f"p={c.embed_dim}, alpha={c.alpha}, zeta={c.zeta}, sigma={c.sigma}, g={c.g!r}"
        )

