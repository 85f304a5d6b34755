"""A sweep's finished runs evaluated again acting with MPPI (paper Eq. 17), beside their final evaluation.

The `cpu` and `quickstart` presets train and evaluate with the policy prior; the paper acts with MPPI
on the learned reward. This evaluates each final agent of a sweep with MPPI on the same episodes as its
final evaluation (same seeds, same count, no tremble) and prints both, per run and per task. The
evaluations are cached ``eval`` artifacts of the work dir (``cdred evaluate KEY --plan``), so a killed
run resumes. It starts from the sweep's ``results.csv``, so it also serves runs that a newer sweep no
longer finds in the cache (after a stage's version changed). The ``*-mppi-eval`` sweep methods do the
same inside a sweep.

    python benchmarks/learning/eval_with_mppi.py RUNS/sweeps/NAME --workdir RUNS [--methods M1,M2] [--tasks T1,T2]
        [--seeds 0,1] [--report-only]
    # 6-10 s per episode of the small preset on one core beside another run: 9-16 minutes per run of 100 episodes
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.artifacts import ArtifactStore
from cdred_pipeline.errors import NotMadeError
from cdred_pipeline.envs import reports_success
from cdred_pipeline.stages import evaluate
from cdred_pipeline.stages.sweep_merge import read_results, results_csv


def evaluate_with_mppi(row: dict[str, Any], store: ArtifactStore, device: str) -> dict[str, Any]:
    """The run's agent evaluated with MPPI on its final evaluation's episodes; its p = 0 aggregate."""
    cfg = evaluate.EvalConfig(tremble=(0.0,), episodes=int(row["episodes"]), seeds=(int(row["seed"]),),
                              plan=True, device=device)
    checkpoint = store.root / "imitate" / row["imitate_key"] / "agent.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint} not found: give the --workdir the sweep ran in")
    art = evaluate.run(cfg, str(checkpoint), store, progress=True)
    report = json.loads((art.path / "report.json").read_text())
    agg = report["aggregates"][0]
    return {"success": agg["success_rate"], "return": agg["return_mean"], "minutes": report["wall_s"] / 60,
            "eval_key": art.key}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, help="a sweep's output folder (it holds results.csv)")
    ap.add_argument("--workdir", type=Path, required=True, help="the work dir the sweep ran in")
    ap.add_argument("--methods", default="", help="comma list of the sweep's methods to evaluate (default: all "
                                                   "but bc, whose untrained critic has nothing to plan with)")
    ap.add_argument("--tasks", default="", help="comma list of the sweep's tasks to evaluate (default: all)")
    ap.add_argument("--seeds", default="", help="comma list of seeds to evaluate (default: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--report-only", action="store_true", help="print the evaluations already made, start none")
    args = ap.parse_args()
    finals = [r for r in read_results(results_csv(args.sweep)) if r["point"] == "final"]
    methods = _chosen(args.methods, "--methods", {r["method"] for r in finals}, default_drop={"bc"})
    tasks = _chosen(args.tasks, "--tasks", {r["task"] for r in finals})
    seeds = _chosen(args.seeds, "--seeds", {str(r["seed"]) for r in finals})
    store = ArtifactStore(args.workdir, read_only=args.report_only)
    by_task: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    not_made = []
    for row in (r for r in finals if r["method"] in methods and r["task"] in tasks and str(r["seed"]) in seeds):
        try:
            mppi = evaluate_with_mppi(row, store, args.device)
        except NotMadeError:
            not_made.append(f"{row['task']} {row['method']} seed {row['seed']}")
            continue
        by_task[row["task"]].append((row, mppi))
        print(f"{row['task']} {row['method']} seed {row['seed']}: prior {_score(row['task'], row)}, "
              f"MPPI {_score(row['task'], mppi)} "
              f"(MPPI evaluation {mppi['minutes']:.1f} min)", flush=True)
    print(f"\nFinal evaluation acting with the policy prior and with MPPI, same episodes (`{args.sweep.name}`)\n")
    print("| task | method | seed | prior success | MPPI success | prior return | MPPI return | MPPI eval key |")
    print("|---|---|---|---|---|---|---|---|")
    means: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for task, pairs in by_task.items():
        for row, mppi in pairs:
            cells = ["-", "-"]
            if reports_success(task):
                cells = [f"{row['success']:.2f}", f"{mppi['success']:.2f}"]
                means[row["method"]].append((row["success"], mppi["success"]))
            print(f"| {task} | {row['method']} | {row['seed']} | {cells[0]} | {cells[1]} | {row['return']:.1f} | "
                  f"{mppi['return']:.1f} | {mppi['eval_key']} |")
    for method, pairs in means.items():
        prior, plan = np.asarray(pairs).T
        print(f"\n{method}: mean success over {len(pairs)} runs, prior {prior.mean():.2f}, MPPI {plan.mean():.2f}")
    if not_made:
        print(f"\nNot evaluated with MPPI yet ({len(not_made)}): " + ", ".join(not_made))


def _chosen(text: str, option: str, in_sweep: set[str], default_drop: AbstractSet[str] = frozenset()) -> set[str]:
    """The names a comma-list option picks from the sweep's (all but ``default_drop`` when it is empty);
    a name the sweep does not hold is a one-line error, not an empty selection."""
    picked = {s.strip() for s in text.split(",") if s.strip()}
    if unknown := sorted(picked - in_sweep):
        raise SystemExit(f"{option}: {', '.join(unknown)} not in this sweep (it has {', '.join(sorted(in_sweep))})")
    return picked or in_sweep - default_drop


def _score(task: str, row: dict[str, Any]) -> str:
    """'success / return' where the task reports success (Meta-World), else the return alone."""
    ret = f"{row['return']:.1f}"
    return f"{row['success']:.2f} / {ret}" if reports_success(task) else ret


if __name__ == "__main__":
    main()
