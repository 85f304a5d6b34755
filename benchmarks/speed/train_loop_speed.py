"""Full training-loop speed: agent steps/s of env step + act (MPPI plan or policy prior) +
one update, the loop `cdred collect-experts` trains with, after seeding.

    python benchmarks/speed/train_loop_speed.py --task dmc:cheetah-run --preset paper --plan          # GPU
    python benchmarks/speed/train_loop_speed.py --task dmc:cartpole-balance --preset small --steps 1500

Runs the real trainer (``train_online``, utd 1, no evaluations, no burst of pre-training updates) in
a temporary folder and reads the per-episode rows of its metrics.jsonl: the rate is taken over the
episodes after the first post-seeding one (which holds the CUDA-graph warm-up and capture). Prints
one line and appends it as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

# The loop on an H100 (torch 2.11, CUDA 13.0; docs/performance.md): paper preset, dmc:cheetah-run, MPPI.
BEFORE_GPU = "H100, paper preset, MPPI: 23.0 agent steps/s eager, 103.1 with CUDA graphs, 120.9 with TF32 (target 300)"


def parser() -> argparse.ArgumentParser:
    """The options of one timed training loop (shared with many_runs.py)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="dmc:cheetah-run")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--plan", action=argparse.BooleanOptionalAction, default=True, help="MPPI (default) or policy prior")
    ap.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the world-model loss (cfg.compile)")
    ap.add_argument("--tf32", action="store_true", help="CUDA: TF32 tensor-core matmuls (torch.set_float32_matmul_precision('high'))")
    ap.add_argument("--steps", type=int, default=3000, help="agent steps in all, seeding included")
    ap.add_argument("--seed-steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch default)")
    ap.add_argument("--seed", type=int, default=0, help="the agent's and the environment's seed")
    return ap


def measure(args: argparse.Namespace) -> dict:
    """One training loop in a temporary folder; its rate over the episodes after the first trained one,
    with the absolute times (``time.time()``) of that window's ends."""
    import torch

    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
    from cdred_pipeline.agent.trainer import TrainerConfig, train_online
    from cdred_pipeline.envs import make_env

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    spec = make_env(args.task, seed=args.seed).spec_info
    cfg = AgentConfig.preset(args.preset, plan=args.plan, episode_length=spec.episode_length, compile=args.compile,
                             seed=args.seed)
    agent = TDMPC2Agent(cfg, spec.obs_shape, spec.action_dim, device=args.device,
                        cuda_graphs={"auto": None, "on": True, "off": False}[args.cuda_graphs])
    tcfg = TrainerConfig(agent_steps=args.steps, seed_agent_steps=args.seed_steps, pretrain_updates=0, eval_episodes=0,
                         checkpoint_every_agent_steps=10**9, save_buffer=False, seed=args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        train_online(lambda: make_env(args.task, seed=args.seed), agent, tcfg, d, progress=False)
        rows = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("kind") == "train"]
    trained = [r for r in rows if r["update_step"] > 0]
    if len(trained) < 2:
        raise SystemExit(f"too few training episodes to time ({len(trained)}); raise --steps")
    first, last = trained[0], trained[-1]
    steps, wall = last["agent_step"] - first["agent_step"], last["wall_s"] - first["wall_s"]
    return {
        "task": args.task, "preset": args.preset, "device": str(agent.device),
        "device_name": torch.cuda.get_device_name(agent.device) if agent.device.type == "cuda" else "cpu",
        "cuda_graphs": agent.cuda_graphs, "compile": cfg.compile, "tf32": bool(args.tf32), "plan": cfg.plan, "threads": torch.get_num_threads(),
        "params": agent.num_params(), "batch_size": cfg.batch_size, "seed": args.seed, "timed_agent_steps": steps,
        "agent_steps_per_s": steps / wall, "env_steps_per_s": steps * spec.action_repeat / wall,
        "window": [t0 + first["wall_s"], t0 + last["wall_s"]], "total_s": time.time() - t0, "torch": torch.__version__,
    }


def main() -> None:
    ap = parser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "train_loop_speed.jsonl")
    args = ap.parse_args()
    res = measure(args)
    print(f"{args.task} {args.preset} {res['device']} graphs={'on' if res['cuda_graphs'] else 'off'} compile={'on' if res['compile'] else 'off'} tf32={'on' if args.tf32 else 'off'} "
          f"{'MPPI' if res['plan'] else 'policy'}: {res['agent_steps_per_s']:.1f} agent steps/s "
          f"({res['env_steps_per_s']:.1f} env steps/s) over {res['timed_agent_steps']} steps; {res['total_s']:.0f} s in all", flush=True)
    if res["device"].startswith("cuda"):
        print(f"before: {BEFORE_GPU}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
