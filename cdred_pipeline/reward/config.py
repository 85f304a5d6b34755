"""Configuration of the CDRED reward model (paper §3.2, App. A.2; docs/design.md §4)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Union

from cdred_pipeline.errors import UsageError
from cdred_pipeline.presets import REWARD_PRESETS

GLike = Union[str, Callable[..., Any]]

MODES = ("cdred", "red")
G_NAMES = ("identity", "exp")
INITS = ("released", "rnd")


@dataclass(frozen=True)
class CDREDConfig:
    """Hyper-parameters of :class:`~cdred_pipeline.reward.CDREDRewardHead`.

    Attributes:
        num_targets: K, size of the frozen random target ensemble (App. A.2: 5).
        embed_dim: p, output dimension of targets and predictors (App. A.2: 64; released code 256).
        hidden: hidden widths of targets and predictors (App. A.1: (512, 512); released code 3x1024).
        alpha: Eq. 6 weight of ||f - mu||^2 against the sqrt(1/n) estimator (App. A.2: 0.9).
        zeta: Eq. 5 weight of the expert term against the behavioural term (App. A.2: 0.8).
        sigma: Eq. 5 decay rate (paper: 1).
        g: Eq. 5 monotone map: "identity" (App. A.2, all experiments) or "exp" (Fig. 11), or a callable
            (not serialisable into a manifest; use a name for runs).
        mode: "cdred" (coupled, Eq. 5) or "red" (uncoupled RED ablation, Eq. 3: expert predictor only,
            r = exp(-sigma * L_RED)).
        red_centered: RED's L = ||f_E - mu||^2 (True) or the literal mean_k ||f_E - f_k||^2 (False);
            see :func:`~cdred_pipeline.reward.functional.red_loss`.
        loss_coef: multiplier applied inside ``loss()`` to the predictor loss (Eq. 4). The agent applies
            its own reward coefficient (0.1) on top, as the interface says; keep 1.0 for the paper.
        eps: lower bound on the ensemble variance B2 - mu^2 (the denominator of Eq. 9).
        seed: seed of the random target initialisation (targets are drawn from their own generator,
            independent of the global RNG).
        target_gain: gain of the orthogonal initialisation of the targets' hidden layers (released code: 1;
            init "released" only).
        init: the scales the targets and predictors are drawn at. "released" (the authors' released code):
            target hidden layers orthogonal with gain ``target_gain``, the last target layer at nn.Linear's
            default, predictors trunc-normal(0.02) with zero bias. "rnd": the targets drawn as RND
            draws its target (Burda et al. 2019): every layer orthogonal with gain sqrt 2 and zero bias; the
            predictors at nn.Linear's default.
        detach_input: stop the predictor loss's gradient into the latent x (encoder, dynamics). The
            released code lets it flow (False); the targets are always evaluated without gradient.
    """

    num_targets: int = 5
    embed_dim: int = 64
    hidden: tuple[int, ...] = (512, 512)
    alpha: float = 0.9
    zeta: float = 0.8
    sigma: float = 1.0
    g: GLike = "identity"
    mode: str = "cdred"
    red_centered: bool = True
    loss_coef: float = 1.0
    eps: float = 1e-6
    seed: int = 0
    target_gain: float = 1.0
    init: str = "released"
    detach_input: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.num_targets < 2:
            raise UsageError(f"num_targets (K) must be >= 2 for the ensemble variance, got {self.num_targets}")
        if self.embed_dim < 1:
            raise UsageError(f"embed_dim (p) must be >= 1, got {self.embed_dim}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise UsageError(f"hidden must be a non-empty tuple of positive widths, got {self.hidden}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.zeta <= 1.0:
            raise UsageError(f"zeta must be in [0, 1], got {self.zeta}")
        if not self.sigma > 0.0:
            raise UsageError(f"sigma must be > 0, got {self.sigma}")
        if not (callable(self.g) or self.g in G_NAMES):
            raise UsageError(f"g must be one of {G_NAMES} or a callable, got {self.g!r}")
        if self.init not in INITS:
            raise UsageError(f"init must be one of {INITS}, got {self.init!r}")
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.eps > 0.0:
            raise UsageError(f"eps must be > 0, got {self.eps}")
        if self.loss_coef < 0.0:
            raise UsageError(f"loss_coef must be >= 0, got {self.loss_coef}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "CDREDConfig":
        """A named preset ("paper", "small", "tiny") with keyword overrides."""
        if name not in PRESETS:
            raise UsageError(f"unknown CDRED preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (for manifests and cache keys); a callable g is written by its name."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        if callable(self.g):
            d["g"] = getattr(self.g, "__qualname__", repr(self.g))
        return d


# Derived view: the preset data lives in cdred_pipeline/presets.py.
PRESETS: dict[str, CDREDConfig] = {name: CDREDConfig(**over) for name, over in REWARD_PRESETS.items()}
