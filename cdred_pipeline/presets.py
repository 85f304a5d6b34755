"""Every named preset of cdred, as plain data, in one place.

Agent and CDRED-reward presets are dicts of overrides of the config dataclass defaults (the defaults
are the paper's, App. A-B); ``AgentConfig.preset`` and ``CDREDConfig.preset`` apply them. Pipeline
presets name what each stage of ``cdred pipeline`` runs. This module imports nothing from the stages
or the CLI: they read from it.
"""

from __future__ import annotations

import os
from typing import Any

# ------------------------------------------------------------------------------------------ agent
AGENT_PRESETS: dict[str, dict[str, Any]] = {
    # App. A.1 sizes: the TD-MPC2 5M model (latent 512, MLP 512, encoder 256), App. B.2 MPPI.
    "paper": {},
    # CPU: a quarter-width model (~0.3M parameters for a state task), batch 128, acting with the
    # policy prior (MPPI with the lighter planner below costs ~35-50 ms per step on one core; set
    # ``plan=True`` to use it). On 2 CPU cores with 1 torch thread (benchmarks/agent_speed.py):
    # ~19 updates/s at batch 128 (8 at batch 256; "paper": 1.7).
    # Learns dmc:cartpole-balance: eval return 830 after 20k agent steps (40k env steps), 19 min.
    # ``compile``: the losses run as fused kernels of torch.compile (agent/compiled.py): 1.6x the
    # updates/s of eager PyTorch on one core; stages run eagerly where no C++ compiler is installed,
    # and use CUDA graphs instead on a GPU.
    "small": dict(latent_dim=64, mlp_dim=128, enc_dim=64, batch_size=128, plan=False, compile=True,
                  num_samples=256, num_pi_trajs=24, num_elites=32, iterations=4),
    # Unit tests: tiny and fast.
    "tiny": dict(latent_dim=32, mlp_dim=64, enc_dim=32, num_channels=8, batch_size=32,
                 num_samples=64, num_pi_trajs=8, num_elites=16, iterations=2),
}

# ------------------------------------------------------------------------------------------ reward
REWARD_PRESETS: dict[str, dict[str, Any]] = {
    # Paper App. A: 5 targets, p = 64, 512-512 hidden.
    "paper": {},
    # CPU-friendly: same K and p, networks as wide as the agent's "small" MLPs (128).
    "small": dict(hidden=(128, 128)),
    # Unit tests and smoke runs.
    "tiny": dict(hidden=(64, 64), embed_dim=16),
}

# CDRED network sizes that go with each agent preset.
REWARD_PRESET_FOR: dict[str, str] = {"paper": "paper", "small": "small", "tiny": "tiny"}

# StepLR x0.1 period in updates (paper App. A.2): 500k for Meta-World and ManiSkill2, 2M for DMControl.
LR_STEP_BY_SUITE: dict[str, int] = {"dmc": 2_000_000, "mw": 500_000, "ms2": 500_000, "gym": 2_000_000}

# ------------------------------------------------------------------------------------------ pipeline
# What each stage of ``cdred pipeline`` runs; every step count names its unit: env steps (simulator
# control steps, after action repeat) or agent steps (decisions).
PIPELINE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: a tiny model on 50-step episodes, to check an installation end to end (and for tests).
    "smoke": dict(agent_preset="tiny", expert_env_steps=400, episodes=2, random_episodes=2,
                  imitate_env_steps=400, num_demos=2, eval_episodes=2, train_eval_episodes=1, plan=False, eval_every=200,
                  seed_agent_steps=50, episode_length=50),
    # A few minutes per stage on 2 CPU cores; shows learning, does not reach the paper's numbers.
    "quickstart": dict(agent_preset="small", expert_env_steps=8_000, episodes=10, random_episodes=5,
                       imitate_env_steps=8_000, num_demos=10, eval_episodes=5, train_eval_episodes=2, plan=False,
                       eval_every=2_000, seed_agent_steps=1_000, episode_length=None),
    # The CPU benchmark setting (learning targets at 100k env steps): hours on 2 cores.
    "cpu": dict(agent_preset="small", expert_env_steps=100_000, episodes=10, random_episodes=10,
                imitate_env_steps=100_000, num_demos=10, eval_episodes=10, train_eval_episodes=5, plan=False,
                eval_every=10_000, seed_agent_steps=None, episode_length=None),
    # The paper's setting (App. A-B): the 5M-parameter model, MPPI planning, 1M env steps. GPU work.
    "paper": dict(agent_preset="paper", expert_env_steps=1_000_000, episodes=100, random_episodes=10,
                  imitate_env_steps=1_000_000, num_demos=100, eval_episodes=10, train_eval_episodes=10, plan=True,
                  eval_every=50_000, seed_agent_steps=None, episode_length=None),
}

# ------------------------------------------------------------------------------------------ render
# Overrides of RenderConfig's defaults (cdred render-visual); none but size changes the pixels' look.
RENDER_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # TD-MPC2 pixels: 64x64, the task's camera, the dataset's render profile
    "parallel": {"workers": max(1, min(8, os.cpu_count() or 1))},  # one render process per core, up to 8
    "large": {"size": 128},
}
