"""Agent configuration: one frozen dataclass and named presets (docs/design.md §3, paper App. A).

```python
cfg = AgentConfig.preset("small", episode_length=500)       # a new frozen object
cfg = dataclasses.replace(cfg, plan=False)                 # never mutate
```

Defaults are TD-MPC2's (Hansen et al., 2023) as the paper's App. A.2 says ("the remaining
hyperparameters are consistent with TD-MPC2"); sizes come from the presets (``cdred_pipeline/presets.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from cdred_pipeline.errors import UsageError
from cdred_pipeline.presets import AGENT_PRESETS

REWARD_SPACES = ("latent", "obs")


@dataclass(frozen=True)
class AgentConfig:
    """Every knob of the TD-MPC2-style agent. Frozen: derive variants with ``dataclasses.replace``."""

    # --- networks (App. A.1)
    latent_dim: int = 512
    mlp_dim: int = 512
    enc_dim: int = 256
    num_enc_layers: int = 2          # state encoder: (num_enc_layers - 1) hidden layers of enc_dim
    num_channels: int = 32           # pixel encoder conv channels
    simnorm_dim: int = 8             # SimNorm group size
    num_q: int = 5
    num_bins: int = 101              # two-hot bins in symlog space [vmin, vmax]
    vmin: float = -10.0
    vmax: float = 10.0
    dropout: float = 0.01            # first Q layer only
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    shift_aug_pad: int = 3           # random-shift augmentation of pixel obs during updates (0 = off)

    # --- optimisation (App. B.1, TD-MPC2 defaults)
    batch_size: int = 256
    horizon: int = 3
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    grad_clip_norm: float = 20.0
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    entropy_coef: float = 1e-4
    rho: float = 0.5
    tau: float = 0.01                # Polyak coefficient for the target Qs
    scale_tau: float = 0.01          # RunningScale update rate
    lr_step_every: int = 0           # StepLR period in updates (0 = no scheduler); App. A.2 uses 500k / 2M
    lr_gamma: float = 0.1

    # --- discount: clip((T/5 - 1) / (T/5), 0.95, 0.995) from the episode length T (agent steps)
    episode_length: int = 500
    discount: Optional[float] = None  # explicit override of the heuristic
    discount_denom: float = 5.0
    discount_min: float = 0.95
    discount_max: float = 0.995

    # --- acting: MPPI (App. B.2) or the policy prior alone
    plan: bool = True
    num_samples: int = 512           # total trajectories per iteration, policy trajectories included
    num_pi_trajs: int = 24
    num_elites: int = 64
    iterations: int = 6
    temperature: float = 0.5         # multiplies (value - max value) inside exp, as TD-MPC2
    min_std: float = 0.05
    max_std: float = 2.0

    # --- reward head input: "latent" (x = z) or "obs" (x = raw state observation; no planning)
    reward_space: str = "latent"

    # --- runtime
    seed: int = 1
    compile: bool = False            # torch.compile the loss functions (agent/compiled.py)

    def __post_init__(self) -> None:
        if self.latent_dim % self.simnorm_dim:
            raise UsageError(f"latent_dim {self.latent_dim} must be a multiple of simnorm_dim {self.simnorm_dim}")
        if self.reward_space not in REWARD_SPACES:
            raise UsageError(f"reward_space must be one of {REWARD_SPACES}, got {self.reward_space!r}")
        if self.reward_space == "obs" and self.plan:
            raise UsageError(
                "reward_space='obs' cannot plan (imagined latents have no observation to score); set plan=False"
            )
        if self.horizon < 1 or self.batch_size < 1 or self.num_q < 2 or self.num_bins < 2:
            raise UsageError("horizon and batch_size must be >= 1, num_q and num_bins >= 2")
        if not 0 <= self.num_pi_trajs < self.num_samples:
            raise UsageError(f"num_pi_trajs ({self.num_pi_trajs}) must be in [0, num_samples={self.num_samples})")
        if not 1 <= self.num_elites <= self.num_samples:
            raise UsageError(f"num_elites ({self.num_elites}) must be in [1, num_samples={self.num_samples}]")
        if not 0 < self.min_std <= self.max_std:
            raise UsageError(f"need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}")
        if self.episode_length < 1:
            raise UsageError(f"episode_length must be >= 1, got {self.episode_length}")

    # ------------------------------------------------------------------------------------------
    @property
    def gamma(self) -> float:
        """The discount: ``cfg.discount`` if set, else TD-MPC2's heuristic from the episode length."""
        if self.discount is not None:
            return float(self.discount)
        frac = self.episode_length / self.discount_denom
        return float(min(max((frac - 1) / frac, self.discount_min), self.discount_max))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "AgentConfig":
        """A named preset (``paper``, ``small``, ``tiny``) with ``overrides`` applied."""
        if name not in PRESETS:
            raise UsageError(f"unknown agent preset {name!r}; choose one of {sorted(PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise UsageError(f"unknown AgentConfig field(s) {bad}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (stored in checkpoints)."""
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without ``compile``, a runtime choice like the device (the compiled losses
        equal the eager ones within float rounding): what a cached artifact's results depend on."""
        return {k: v for k, v in self.to_dict().items() if k != "compile"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AgentConfig":
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise UsageError(f"checkpoint config has unknown AgentConfig field(s) {bad}")
        return cls(**d)


# Derived view: the preset data lives in cdred_pipeline/presets.py.
PRESETS: dict[str, AgentConfig] = {name: AgentConfig(**over) for name, over in AGENT_PRESETS.items()}


def resolve_device(device: "str | torch.device" = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA is a one-line UsageError."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise UsageError(f"bad device {device!r} ({exc}); use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {str(device)!r} requested but CUDA is not available here; use cpu or auto")
    return dev


__all__ = ["AgentConfig", "PRESETS", "REWARD_SPACES", "resolve_device"]
