"""The CDRED reward's scale at initialisation under each ``--reward-init``: how large the random targets'
outputs are, and what that does to the terms of Eq. 5-9 before any training.

The targets' last layer sets the scale of what the reward measures: the L2 term of Eq. 6 grows with the
square of the target outputs, while the sqrt(1/n) estimator of Eq. 9 is a ratio and does not. Two inits
that differ in that layer's scale therefore give rewards of different range, much as a different
``sigma`` (Eq. 5) would; the columns say by how much (``alpha*L2 / b_E``: the L2 term's share of the
expert bonus), and ``--sigmas 1,5`` prints each init at each sigma to compare the two directly. Inputs
are latents as the encoder makes them (SimNorm: a softmax over groups of 8 of random logits) and uniform
actions in [-1, 1].

    python benchmarks/diagnostics/reward_scale.py [--presets small,paper] [--sigmas 1,5] [--batch 4096]  # seconds
"""

from __future__ import annotations

import argparse

import torch

from cdred_pipeline.agent.config import AgentConfig
from cdred_pipeline.presets import REWARD_PRESET_FOR
from cdred_pipeline.reward.config import INITS, CDREDConfig
from cdred_pipeline.reward.functional import bonus, target_moments
from cdred_pipeline.reward.model import CDREDRewardHead


def simnorm_latents(n: int, dim: int, group: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` latents of ``dim`` units shaped as SimNorm shapes them: each group of ``group`` sums to one."""
    logits = torch.randn(n, dim // group, group, generator=gen)
    return logits.softmax(dim=-1).reshape(n, dim)


def scale_row(preset: str, init: str, sigma: float, batch: int, action_dim: int, seed: int) -> dict[str, float]:
    """The reward's figures at initialisation for one agent preset, init and sigma."""
    agent = AgentConfig.preset(preset)
    cfg = CDREDConfig.preset(REWARD_PRESET_FOR[preset], init=init, sigma=sigma, seed=seed)
    head = CDREDRewardHead(agent.latent_dim, action_dim, cfg)
    gen = torch.Generator().manual_seed(seed)
    z = simnorm_latents(batch, agent.latent_dim, agent.simnorm_dim, gen)
    a = torch.rand(batch, action_dim, generator=gen) * 2 - 1
    with torch.no_grad():
        f_e, _, tgt = head.outputs(z, a)
        mu, _, var = target_moments(tgt)
        l2 = (f_e - mu).square().sum(dim=-1)
        b_e = bonus(f_e, tgt, alpha=cfg.alpha)
        r = head.reward(z, a).squeeze(-1)
    return {"target std": tgt.std().item(), "ensemble var": var.mean().item(), "L2 term": l2.mean().item(),
            "alpha*L2 / b_E": (cfg.alpha * l2 / b_e).mean().item(), "reward mean": r.mean().item(),
            "reward std": r.std().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="small,paper", help="agent presets (their reward model's sizes)")
    ap.add_argument("--sigmas", default="1", help="comma list of Eq. 5 decay rates (the paper's: 1)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--action-dim", type=int, default=4, help="4: Meta-World's action size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cols = ("target std", "ensemble var", "L2 term", "alpha*L2 / b_E", "reward mean", "reward std")
    print(f"{'preset':8} {'init':9} {'sigma':>6} " + " ".join(f"{c:>14}" for c in cols))
    for preset in args.presets.split(","):
        for init in INITS:
            for sigma in (float(s) for s in args.sigmas.split(",")):
                row = scale_row(preset, init, sigma, args.batch, args.action_dim, args.seed)
                print(f"{preset:8} {init:9} {sigma:6g} " + " ".join(f"{row[c]:14.3f}" for c in cols))


if __name__ == "__main__":
    main()
