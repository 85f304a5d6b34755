"""Vectorised evaluation and executor overhead.

    python benchmarks/speed/vector_eval.py                          # tiny + small agents, 1/2/4/8 envs
    python benchmarks/speed/vector_eval.py --presets small --num-envs 1 8 --episodes 8 --episode-length 200
    python benchmarks/speed/vector_eval.py --executors local process ray   # + start-up and per-unit overhead

Part 1: env steps/s of evaluation on dmc:cartpole-balance with the policy prior (eval mode) through
the rollout loop (:func:`cdred_pipeline.vector.run_eval_episodes`) for 1 env against K envs stepped
together with ONE batched policy call per step (``cdred evaluate --num-envs K``). All run the same
episode seeds; the returns are compared (max |diff|). "env steps" are simulator steps (agent steps x
action repeat), as TD-MPC2 counts them; agent steps/s are shown too.

Part 2 (``--executors``): the same (p, seed) evaluation blocks through the local, process and Ray
executors: wall time of the whole ``map`` (start-up included) and per-unit cost of no-op units.

Results go to benchmarks/results/vector_eval.json (gitignored). Untrained agents: speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

TASK = "dmc:cartpole-balance"


def noop(x: int) -> int:
    """A no-op unit (executor overhead)."""
    return x


def vector_part(args: argparse.Namespace, tmp: Path) -> list[dict]:
    import numpy as np
    import torch

    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.seeding import derive
    from cdred_pipeline.vector import run_eval_episodes

    rows = []
    for preset in args.presets:
        spec = make_env(TASK, episode_length=args.episode_length).spec_info
        agent = TDMPC2Agent(AgentConfig.preset(preset, plan=False, episode_length=args.episode_length, seed=0),
                            spec.obs_shape, spec.action_dim, device=args.device)
        seeds = [derive(0, "eval-reset", i) for i in range(args.episodes)]
        ref = None
        for k in args.num_envs:
            envs = [make_env(TASK, seed=0, episode_length=args.episode_length) for _ in range(k)]
            best = None
            for _ in range(args.repeats):
                t = time.perf_counter()
                res = [r for r, _ in run_eval_episodes(envs, agent, seeds)]
                dt = time.perf_counter() - t
                best = dt if best is None else min(best, dt)
            for e in envs:
                e.close()
            agent_steps = sum(r["length"] for r in res)
            rets = np.array([r["return"] for r in res])
            ref = rets if ref is None else ref
            row = {"preset": preset, "num_envs": k, "episodes": args.episodes, "agent_steps": agent_steps,
                   "agent_steps_per_s": agent_steps / best, "env_steps_per_s": agent_steps * spec.action_repeat / best,
                   "wall_s": best, "max_abs_return_diff_vs_first": float(np.abs(rets - ref).max()),
                   "threads": torch.get_num_threads()}
            rows.append(row)
            base = next(r for r in rows if r["preset"] == preset)
            print(f"{preset:6s} envs={k:2d}  env steps/s {row['env_steps_per_s']:8.0f}  agent steps/s "
                  f"{row['agent_steps_per_s']:7.0f}  x{row['env_steps_per_s'] / base['env_steps_per_s']:.2f}  "
                  f"max|Δreturn| {row['max_abs_return_diff_vs_first']:.2e}", flush=True)
    return rows


def executor_part(args: argparse.Namespace, tmp: Path) -> list[dict]:
    import torch

    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
    from cdred_pipeline.executor import make_executor
    from cdred_pipeline.stages import evaluate as ev

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import vector_eval as me  # by module name, so spawned / Ray workers can import the no-op unit

    path = tmp / "agent.pt"
    TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=args.episode_length), (5,), 1,
                device="cpu").save(path, extra={"task": TASK, "obs": "state", "episode_length": args.episode_length})
    blocks = [ev.EvalBlock(checkpoint=str(path), task=TASK, obs="state", env_kwargs=(), episode_length=args.episode_length,
                           p=p, seed=s, episodes=2, device="cpu") for p in (0.0, 0.1) for s in (0, 1)]
    rows = []
    for kind in args.executors:
        if kind == "ray":
            try:
                import ray

                ray.cloudpickle.register_pickle_by_value(me)
            except ImportError:
                print("ray: not installed (pip install 'cdred[ray]'), skipped")
                continue
        t = time.perf_counter()
        with make_executor(kind, workers=args.workers, ray_address="local") as ex:
            outs = ex.map(ev.run_block, blocks, progress=False)
            first = time.perf_counter() - t
            t1 = time.perf_counter()
            ex.map(ev.run_block, blocks, progress=False)
            warm = time.perf_counter() - t1
            t2 = time.perf_counter()
            ex.map(me.noop, list(range(args.noop_units)), progress=False)
            per_unit = (time.perf_counter() - t2) / args.noop_units
        total = time.perf_counter() - t
        steps = sum(r["length"] for o in outs for r in o["rows"])
        row = {"executor": kind, "workers": args.workers, "blocks": len(blocks), "agent_steps": steps,
               "first_map_s": first, "warm_map_s": warm, "noop_unit_ms": 1000 * per_unit, "total_with_close_s": total}
        rows.append(row)
        print(f"{kind:8s} workers={args.workers}  first map (start-up incl.) {first:6.2f} s  warm map {warm:6.2f} s  "
              f"no-op unit {1000 * per_unit:7.2f} ms  total incl. close {total:6.2f} s", flush=True)
    del torch
    return rows


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--num-envs", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--episode-length", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2, help="best of N timings per setting")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    p.add_argument("--executors", nargs="*", default=[], help="local process ray: also time the executors")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--noop-units", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "vector_eval.json")
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"host {platform.node()}  cpus {os.cpu_count()}  load {os.getloadavg()[0]:.2f}  torch threads "
          f"{torch.get_num_threads()}  {TASK}, {args.episodes} episodes x {args.episode_length} agent steps")
    with tempfile.TemporaryDirectory() as tmp:
        vec = vector_part(args, Path(tmp)) if args.num_envs else []
        exe = executor_part(args, Path(tmp)) if args.executors else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv[1:], "cpu_count": os.cpu_count(), "vector": vec,
                                    "executors": exe}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
