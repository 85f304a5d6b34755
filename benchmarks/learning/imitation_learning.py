"""CDRED vs RED imitation on CPU: the full chain for dmc:cartpole-balance and dmc:reacher-easy.

Expert from collect-experts (small preset, cached: run expert_learning.py first or let this train it),
10 demos, small preset, policy-prior acting; prints eval return against env steps for --reward cdred
and --reward red, as a fraction of the expert's return, and the wall time.

The demos come from the trained expert acting as it was trained, with its policy prior (``--demo-policy
prior``, what ``collect-experts`` writes); ``--demo-policy plan`` records it acting with MPPI instead
(``collect-experts --policy checkpoint --plan``): it reaches 10 of 10 reacher-easy targets (the prior 8)
but jitters on cartpole-balance. docs/learning.md has both settings' curves.
Evaluations average ``--eval-episodes`` episodes (20 by default: five cannot tell a collapse from
the spread of reacher-easy's random target positions). Every run gets the target's verdict (>= 90% of the
expert from some evaluation within 100k env steps to the end: ``target_check.py``), and the end of the output
counts the seeds that meet it per task and arm: ``--imitation-seeds`` runs several (the expert and its
demos stay those of ``--seed``). A 20-episode evaluation fixes 20 targets per seed, and on reacher-easy
which 20 moves the return by hundreds; ``--final-episodes 200`` also evaluates every run's final agent
and the expert on the same 200 episodes (the evaluate stage). Finished runs and evaluations are cached
artifacts: rerunning reads them back.

    python benchmarks/learning/imitation_learning.py --env-steps 100000                     # the target's setting
    python benchmarks/learning/imitation_learning.py --tasks dmc:reacher-easy --rewards cdred --imitation-seeds 0,1,2
    python benchmarks/learning/imitation_learning.py --tasks dmc:cartpole-balance --env-steps 20000 --expert-steps 20000
    python benchmarks/learning/imitation_learning.py --preset paper --plan --device cuda     # unchanged on a GPU
    python benchmarks/learning/imitation_learning.py --tasks mw:reach --expert-policy scripted --env-steps 8000 \
        --eval-every 2000 --seed-steps 1000                                          # minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.stages import collect_experts, evaluate, imitate  # noqa: E402
from target_check import describe_target, target_check  # noqa: E402


def common_eval(agent: str, episodes: int, plan: bool, device: str, store: ArtifactStore) -> tuple[float, float]:
    """Mean return and its standard error over ``episodes`` episodes whose seeds are the same for every
    agent (evaluate stage, seed 0, no tremble; cached)."""
    cfg = evaluate.EvalConfig(episodes=episodes, plan=plan, num_envs=min(8, episodes), device=device)
    agg = evaluate.run(cfg, agent, store, progress=False).manifest["aggregates"][0]
    return agg["return_mean"], agg["return_std"] / episodes ** 0.5


def parse_args() -> argparse.Namespace:
    """The command line; ``seeds`` holds the imitation seeds."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="dmc:cartpole-balance,dmc:reacher-easy")
    ap.add_argument("--env-steps", type=int, default=100_000, help="imitation env steps")
    ap.add_argument("--expert-steps", type=int, default=100_000, help="expert training env steps")
    ap.add_argument("--expert-policy", choices=["tdmpc2", "scripted"], default="tdmpc2",
                    help="scripted: Meta-World's scripted experts (mw: tasks) instead of training TD-MPC2")
    ap.add_argument("--seed-steps", type=int, default=None, help="random-action agent steps before updates")
    ap.add_argument("--rewards", default="cdred,red")
    ap.add_argument("--num-demos", type=int, default=10)
    ap.add_argument("--zeta", type=float, default=None, help="Eq. 5's zeta for the cdred arm (default: the paper's 0.8)")
    ap.add_argument("--demo-policy", choices=["prior", "plan"], default="prior",
                    help="how a trained TD-MPC2 expert acts while recording the demos (its policy prior or MPPI)")
    ap.add_argument("--eval-episodes", type=int, default=20, help="episodes per imitation evaluation")
    ap.add_argument("--eval-every", type=int, default=10_000, help="env steps between evaluations")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0, help="expert, demos and (by default) imitation seed")
    ap.add_argument("--imitation-seeds", default=None, help="comma list of imitation seeds (default: --seed)")
    ap.add_argument("--detach-reward-input", action="store_true",
                    help="cdred/red arms: the predictor loss does not train the latent (see cdred imitate --help)")
    ap.add_argument("--final-episodes", type=int, default=0,
                    help="also evaluate each final agent and the expert on this many common episodes (0: off)")
    ap.add_argument("--workdir", default="benchmarks/results/runs")
    ap.add_argument("--out", default="benchmarks/results/imitation_learning.json", help="JSON summary file")
    args = ap.parse_args()
    if args.demo_policy == "plan" and args.expert_policy != "tdmpc2":
        ap.error("--demo-policy plan records a trained TD-MPC2 expert with MPPI; use it with --expert-policy tdmpc2")
    try:
        args.seeds = [int(x) for x in (args.imitation_seeds or str(args.seed)).split(",")]
    except ValueError:
        ap.error(f"--imitation-seeds takes a comma list of integers, got {args.imitation_seeds!r}")
    return args


def demonstrations(args: argparse.Namespace, task: str, store: ArtifactStore) -> dict:
    """The expert (trained or scripted) and its demos for ``task``; with ``--final-episodes`` also the
    expert's return on the common episodes. Returns {demos, expert, random, expert_common}."""
    ccfg = collect_experts.CollectConfig(task=task, policy=args.expert_policy, preset=args.preset,
                                         train_env_steps=args.expert_steps,
                                         seed=args.seed, episodes=args.num_demos, plan=args.plan,
                                         eval_every=args.eval_every, eval_episodes=5, device=args.device)
    expert_art = collect_experts.train_expert(ccfg, store) if args.expert_policy == "tdmpc2" else None
    demonstrator_plans = args.plan or args.demo_policy == "plan"
    if expert_art is not None and demonstrator_plans and not args.plan:
        # the expert trained acting with its policy prior (cached); record its demos acting with MPPI
        ccfg = dataclasses.replace(ccfg, policy="checkpoint", checkpoint=str(expert_art.path / "agent.pt"),
                                   plan=True)
    demos = collect_experts.run(ccfg, store)
    expert = demos.manifest["scores"]["expert"]["return_mean"]
    random = demos.manifest["scores"]["random"]["return_mean"]
    print(f"\n{task}: expert return {expert:.1f}, random {random:.1f} ({demos.path})")
    expert_common = None
    if args.final_episodes and expert_art is not None:  # the demonstrator, acting as it did for the demos
        expert_common = common_eval(str(expert_art.path / "agent.pt"), args.final_episodes, demonstrator_plans,
                                    args.device, store)
        print(f"  expert on {args.final_episodes} common episodes: {expert_common[0]:.1f} ± {expert_common[1]:.1f} (s.e.)")
    return {"demos": demos, "expert": expert, "random": random, "expert_common": expert_common}


def imitation_run(args: argparse.Namespace, demo: dict, reward: str, seed: int, store: ArtifactStore) -> dict:
    """One imitation arm on one seed: its eval curve, the target's verdict and (``--final-episodes``) the
    final agent on the common episodes; returns the summary entry."""
    expert, expert_common = demo["expert"], demo["expert_common"]
    icfg = imitate.ImitateConfig(env_steps=args.env_steps, preset=args.preset, reward=reward,
                                 num_demos=args.num_demos, seed=seed, plan=args.plan,
                                 eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                                 seed_agent_steps=args.seed_steps, device=args.device,
                                 zeta=args.zeta if reward == "cdred" else None,
                                 detach_reward_input=args.detach_reward_input)
    arm = reward + (f" zeta={icfg.zeta:g}" if icfg.zeta is not None else "") \
        + (" detached" if icfg.detach_reward_input else "")
    t0 = time.time()
    art = imitate.run(icfg, str(demo["demos"].path / "demos.zarr"), store)
    rows = imitate.read_metrics(art)
    check = target_check(rows, expert)
    print(f"  --reward {arm}, seed {seed}  ({time.time() - t0:.0f} s this call, artifact {art.path})")
    print(f"  {'env steps':>10} {'eval return':>12} {'% expert':>9} {'R(expert)':>10} {'R(current)':>11} {'wall s':>8}")
    for r in rows:
        print(f"  {r['env_step']:>10d} {r['eval_return_mean']:>12.1f} {100 * r['eval_return_mean'] / expert:>8.1f}%"
              f" {r.get('diag_reward_expert', float('nan')):>10.3f} {r.get('diag_reward_current', float('nan')):>11.3f}"
              f" {r['wall_s']:>8.0f}")
    print(f"  target: {describe_target(check, expert)}")
    final = None
    if args.final_episodes:
        final = common_eval(str(art.path / "agent.pt"), args.final_episodes, args.plan, args.device, store)
        vs = f" = {100 * final[0] / expert_common[0]:.1f}% of the expert there" if expert_common else ""
        print(f"  final agent on {args.final_episodes} common episodes: {final[0]:.1f} ± {final[1]:.1f} (s.e.){vs}")
    return {"expert": expert, "random": demo["random"], "arm": arm, "seed": seed, "target": check,
            "final_common": final, "expert_common": expert_common, "rows": rows}


def print_verdicts(summary: dict) -> None:
    """Per task and arm, how many seeds meet the target."""
    print("\ntarget (>= 90% of the expert's return from some evaluation within 100k env steps to the end of the run):")
    for task, runs in summary.items():
        for arm in dict.fromkeys(r["arm"] for r in runs.values()):  # arms in run order
            sel = [r for r in runs.values() if r["arm"] == arm]
            finals = [r["final_common"][0] for r in sel if r["final_common"] is not None]
            common = f"; final agents on common episodes {', '.join(f'{v:.0f}' for v in finals)}" if finals else ""
            print(f"  {task:<24} {arm:<24} met in {sum(r['target']['met'] for r in sel)} of {len(sel)} seed(s){common}")


def main() -> None:
    args = parse_args()
    store = ArtifactStore(args.workdir)
    summary: dict = {}
    for task in args.tasks.split(","):
        demo = demonstrations(args, task, store)
        for reward, seed in ((r, sd) for r in args.rewards.split(",") for sd in args.seeds):
            entry = imitation_run(args, demo, reward, seed, store)
            name = entry["arm"] if len(args.seeds) == 1 else f"{entry['arm']} seed={seed}"
            summary.setdefault(task, {})[name] = entry
    print_verdicts(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
