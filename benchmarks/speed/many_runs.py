"""Many runs on one device: the aggregate agent steps/s of N training loops side by side against one alone.

    python benchmarks/speed/many_runs.py --runs 1 8 --task dmc:cheetah-run --preset paper --device cuda   # GPU
    python benchmarks/speed/many_runs.py --runs 1 2 --task dmc:cartpole-balance --preset small --no-plan --steps 1500

For each N of ``--runs``, starts N training loops (``train_loop_speed.measure``: env step + act + one
update per agent step, after seeding) as N processes of the project's process executor, the way
``cdred sweep --workers N --device cuda`` runs N seeds on one GPU; seeds 0..N-1. Each run reports its
rate over its own timed window; the aggregate is the agent steps of all windows over the span from the
first window's start to the last one's end (runs that do not overlap count as idle time). Prints one
row per N with the speed-up over one run (the GPU target: >= 5x at N = 8) and appends JSON to --out.
One torch thread per run on CPU (the executor's default), so on CPU N should not exceed the cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_loop_speed import measure, parser  # noqa: E402


def side_by_side(args: argparse.Namespace, n: int) -> dict:
    """N loops at once through the process executor (one for N = 1 too, so start-up costs match)."""
    from cdred_pipeline.executor import make_executor

    units = [argparse.Namespace(**{**vars(args), "seed": args.seed + i}) for i in range(n)]
    t0 = time.time()
    with make_executor("process", workers=n) as ex:
        runs = ex.map(measure, units, retries=0, desc=f"{n} runs", progress=False)
    start, end = min(r["window"][0] for r in runs), max(r["window"][1] for r in runs)
    steps = sum(r["timed_agent_steps"] for r in runs)
    overlap = max(0.0, min(r["window"][1] for r in runs) - max(r["window"][0] for r in runs))
    return {"runs": n, "aggregate_agent_steps_per_s": steps / (end - start),
            "per_run_agent_steps_per_s": [r["agent_steps_per_s"] for r in runs],
            "overlap_of_windows": overlap / (end - start), "wall_s": time.time() - t0, "device": runs[0]["device"],
            "device_name": runs[0]["device_name"], "cuda_graphs": runs[0]["cuda_graphs"], "threads": runs[0]["threads"]}


def main() -> None:
    ap = parser()
    ap.description = __doc__
    ap.add_argument("--runs", type=int, nargs="+", default=[1, 2], help="numbers of runs side by side (1 first)")
    ap.add_argument("--label", default="", help="a tag stored with the rows (e.g. mps)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "many_runs.jsonl")
    args = ap.parse_args()
    if any(n < 1 for n in args.runs):
        ap.error("--runs takes positive counts")
    counts = sorted(set(args.runs) | {1})
    results = [side_by_side(args, n) for n in counts]
    solo = results[0]["aggregate_agent_steps_per_s"]
    r0 = results[0]
    print(f"{args.task} {args.preset} {r0['device']} ({r0['device_name']}), {'MPPI' if args.plan else 'policy prior'}, "
          f"CUDA graphs {'on' if r0['cuda_graphs'] else 'off'}, {r0['threads']} torch thread(s) per run"
          + (f" [{args.label}]" if args.label else ""))
    print("| runs | aggregate agent steps/s | x one run | per run (min-max) | windows overlap |")
    print("|---|---|---|---|---|")
    for r in results:
        per = r["per_run_agent_steps_per_s"]
        r["speedup"] = r["aggregate_agent_steps_per_s"] / solo
        print(f"| {r['runs']} | {r['aggregate_agent_steps_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{min(per):.1f}-{max(per):.1f} | {100 * r['overlap_of_windows']:.0f}% |")
    print("before: one run at a time (1.00x); GPU target >= 5x at 8 runs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in results:
            f.write(json.dumps({**{k: v for k, v in vars(args).items() if k != "out"}, **r}) + "\n")


if __name__ == "__main__":
    main()
