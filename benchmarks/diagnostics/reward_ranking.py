"""Does an imitation agent's own learned reward rank the expert's behaviour above its own?

Rolls the imitation agent and an expert on the same ``--episodes`` resets (same seeds, so the same
targets / initial states), scores each trajectory under the imitation agent's CDRED (or RED) reward,
sum_t R(x_t, a_t) with x the world-model latent (or the observation for ``--reward-space obs`` runs),
and splits the reward into the expert and behavioural bonus terms b_E, b_B of Eq. 5-6.

The telling rows are those where the expert earns clearly more environment return than the agent
(``--margin``). If the learned reward still prefers the agent's trajectory there, the reward itself is
wrong where the agent fails, and a better optimiser (MPPI planning, a larger model, more updates) only
follows it harder; what is needed there is a reward that ranks the expert's behaviour higher.

    python benchmarks/diagnostics/reward_ranking.py AGENT EXPERT [--workdir DIR] [--episodes 20] [--expert-plan] [--out F]

AGENT: an imitate artifact key, folder or agent.pt; EXPERT: an experts artifact (collect-experts' TD-MPC2
expert) or any agent checkpoint for the same task. Episode i is the trainer's i-th evaluation episode of
an imitation run with ``--seed`` (reset seed ``derive(seed, "train-eval-reset", i)``). Both act in eval
mode, through the batched rollout loop on one env.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.envs import make_env  # noqa: E402
from cdred_pipeline.stages.common import load_agent, resolve_checkpoint  # noqa: E402
from cdred_pipeline.seeding import derive  # noqa: E402
from cdred_pipeline.stages.imitate import reward_model_stats  # noqa: E402
from cdred_pipeline.vector import agent_act, run_trajectories  # noqa: E402


def rollout(agent, env, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One eval-mode episode: observations (T, ...), actions (T, A) and the environment return."""
    (ep,) = run_trajectories([env], [seed], agent_act(agent))
    return ep["obs"][:-1], ep["action"], ep["return"]


@torch.no_grad()
def learned_reward(agent, observations: np.ndarray, actions: np.ndarray) -> dict[str, float]:
    """Sum over the episode of the agent's reward (Eq. 5, or RED's Eq. 3) and the means of b_E, b_B (Eq. 6)."""
    diag = reward_model_stats(agent, torch.as_tensor(observations, device=agent.device),
                              torch.as_tensor(actions, device=agent.device))
    out = {"R_sum": diag["R"] * len(actions), "b_E": diag["b_E"]}
    if agent.reward_head.cfg.mode == "cdred":  # RED has no behavioural predictor to speak of
        out["b_B"] = diag["b_B"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("agent")
    ap.add_argument("expert")
    ap.add_argument("--workdir", default="cdred-runs", help="artifact store for keys")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="the imitation run's seed: its evaluation episodes")
    ap.add_argument("--expert-plan", action=argparse.BooleanOptionalAction, default=True,
                    help="the expert acts with MPPI (default) or its policy prior")
    ap.add_argument("--margin", type=float, default=100.0, help="'expert clearly better': return ahead by this much")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="JSON file for the per-episode rows")
    args = ap.parse_args()

    store = ArtifactStore(args.workdir)
    agent_ckpt, _ = resolve_checkpoint(args.agent, store)
    agent, extra = load_agent(agent_ckpt, device=args.device)
    if "reward_config" not in extra:
        raise SystemExit(f"{agent_ckpt} has no learned reward model (an expert checkpoint?); pass an imitate artifact")
    expert, expert_extra = load_agent(resolve_checkpoint(args.expert, store)[0], device=args.device, plan=args.expert_plan)
    task = extra["task"]
    if expert_extra.get("task") not in (None, task):
        raise SystemExit(f"the agent imitates {task} but the expert acts in {expert_extra.get('task')}")
    if extra.get("obs", "state") != "state":
        raise SystemExit("state-observation agents only: the expert acts on states")
    timing = {k: int(extra[k]) for k in ("episode_length", "action_repeat") if extra.get(k)}
    env = make_env(task, seed=0, **timing)

    rows = []
    print(f"{'ep':>3} {'agent ret':>9} {'expert ret':>10} {'R agent':>9} {'R expert':>9} "
          f"{'b_E agent':>9} {'b_E expert':>10} {'b_B agent':>9} {'b_B expert':>10}  ranking")
    for i in range(args.episodes):
        seed = derive(args.seed, "train-eval-reset", i)
        o_a, a_a, ret_a = rollout(agent, env, seed)
        o_e, a_e, ret_e = rollout(expert, env, seed)
        s_a, s_e = learned_reward(agent, o_a, a_a), learned_reward(agent, o_e, a_e)
        expert_better = ret_e - ret_a > args.margin
        wrong = expert_better and s_e["R_sum"] < s_a["R_sum"]
        rows.append({"episode": i, "seed": seed, "agent_return": ret_a, "expert_return": ret_e,
                     "agent": s_a, "expert": s_e, "expert_better": expert_better, "misranked": wrong})
        print(f"{i:>3} {ret_a:>9.1f} {ret_e:>10.1f} {s_a['R_sum']:>9.1f} {s_e['R_sum']:>9.1f} {s_a['b_E']:>9.3f} "
              f"{s_e['b_E']:>10.3f} {s_a.get('b_B', float('nan')):>9.3f} {s_e.get('b_B', float('nan')):>10.3f}  "
              f"{'MISRANKED' if wrong else ('ok' if expert_better else '')}", flush=True)
    env.close()
    better = [r for r in rows if r["expert_better"]]
    print(f"\n{agent_ckpt}\nepisodes where the expert's return is ahead by > {args.margin:g}: {len(better)} of {len(rows)}; "
          f"the agent's own reward ranks the agent's trajectory higher in {sum(r['misranked'] for r in better)} of them")
    if args.out:
        Path(args.out).write_text(json.dumps({"agent": str(agent_ckpt), "task": task, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
