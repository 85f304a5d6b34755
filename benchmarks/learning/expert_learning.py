"""Expert learning on CPU: TD-MPC2 (small preset) on dmc:cartpole-balance and dmc:reacher-easy.

Prints eval return against env steps and wall time, and the fraction of TD-MPC2's published score
(cartpole-balance ~998, reacher-easy ~978 at 100k env steps). Uses the collect-experts stage, so the
runs are cached under --workdir and a rerun (or a later imitation benchmark) reuses them.

    python benchmarks/learning/expert_learning.py --env-steps 100000            # the learning target's setting (hours on 2 cores)
    python benchmarks/learning/expert_learning.py --env-steps 20000 --tasks dmc:cartpole-balance
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.stages.collect_experts import CollectConfig, train_expert  # noqa: E402

PUBLISHED_100K = {"dmc:cartpole-balance": 998.0, "dmc:reacher-easy": 978.0}


def curve(art_path: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(x) for x in (art_path / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["env_step"], r["eval_return_mean"], r["wall_s"]) for r in rows if r.get("kind") == "eval"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="dmc:cartpole-balance,dmc:reacher-easy")
    ap.add_argument("--env-steps", type=int, default=100_000)
    ap.add_argument("--eval-every", type=int, default=10_000, help="env steps")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--plan", action="store_true", help="act with MPPI (default: policy prior, the CPU choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="benchmarks/results/runs")
    ap.add_argument("--out", default="benchmarks/results/expert_learning.json", help="JSON summary file")
    args = ap.parse_args()
    store = ArtifactStore(args.workdir)
    summary = {}
    for task in args.tasks.split(","):
        cfg = CollectConfig(task=task, preset=args.preset, train_env_steps=args.env_steps, seed=args.seed,
                            plan=args.plan, eval_every=args.eval_every, eval_episodes=5)
        t0 = time.time()
        art = train_expert(cfg, store, progress=True)
        pts = curve(art.path)
        print(f"\n{task}  (preset {args.preset}, {'MPPI' if args.plan else 'policy prior'}, "
              f"{time.time() - t0:.0f} s this call; artifact {art.path})")
        print(f"{'env steps':>10} {'eval return':>12} {'wall s':>9}")
        for step, ret, wall in pts:
            print(f"{step:>10d} {ret:>12.1f} {wall:>9.0f}")
        final = pts[-1][1] if pts else float("nan")
        ref = PUBLISHED_100K.get(task)
        if ref:
            print(f"final {final:.1f} = {100 * final / ref:.1f}% of TD-MPC2's published {ref:.0f} at 100k env steps")
        summary[task] = {"curve": pts, "final": final, "published_100k": ref}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
