"""The training episodes of a sweep's runs beside their final evaluation: a dense learning curve.

A sweep's curve points come from 5 evaluation episodes every 10k env steps, too few to tell a policy
that is still rising from one that learned and then lost the task. Every training episode is logged
(``metrics.jsonl`` rows of kind ``train``), so the success rate (Meta-World) or the mean return (DMC)
over each window of env steps is a curve with tens of episodes per point. Two differences from the
evaluation: training episodes act with a sample of the policy (the evaluation with its mean), and the
agent updates between their steps. Reads the sweep's ``results.csv`` and the runs' folders in the work
dir the sweep ran in; starts nothing.

    python benchmarks/diagnostics/train_episodes.py SWEEP_DIR --workdir RUNS [--window 10000] [--figures DIR]

``--figures DIR`` also draws ``DIR/train_<task>.png``: per method, the window values' mean over seeds with
a min-max band, as the sweep draws its evaluation curve, with the expert's and random policy's levels
from the runs' manifests.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.agent.trainer import read_jsonl
from cdred_pipeline.envs import reports_success
from cdred_pipeline.stages.sweep import figure_name, plot_task
from cdred_pipeline.stages.sweep_merge import read_results, results_csv


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The ``train`` rows of one imitation run (empty for BC, which never steps the env while it learns)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: give the --workdir the sweep ran in (its imitate/ holds the runs)")
    return [row for row in read_jsonl(path) if row.get("kind") == "train"]


def windows(rows: list[dict[str, Any]], window: int, success: bool) -> list[tuple[int, float, int]]:
    """(window end in env steps, success rate or mean return, episodes) per window of ``window`` env steps."""
    groups: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        value = float(bool(row["success"])) if success else float(row["episode_return"])
        groups[(int(row["env_step"]) - 1) // window].append(value)
    return [((k + 1) * window, float(np.mean(v)), len(v)) for k, v in sorted(groups.items())]


RunWindows = list[tuple[dict[str, Any], list[tuple[int, float, int]]]]


def task_windows(sweep: Path, workdir: Path, window: int) -> dict[str, RunWindows]:
    """Per task, each run's final row of results.csv with its training-episode windows (success rate on a
    task that reports success, else mean return)."""
    by_task: dict[str, RunWindows] = defaultdict(list)
    for r in read_results(results_csv(sweep)):
        if r["point"] == "final":
            w = windows(train_rows(workdir / "imitate" / r["imitate_key"]), window, reports_success(r["task"]))
            by_task[r["task"]].append((r, w))
    return dict(by_task)


def figures(per_task: dict[str, RunWindows], workdir: Path, window: int, source: str, out: Path) -> list[Path]:
    """``out/train_<task>.png`` per task: every method's training-episode windows as a curve over seeds."""
    paths = []
    for task, per_run in sorted(per_task.items()):
        col = "success" if reports_success(task) else "return"
        rows = [{"task": task, "method": r["method"], "point": "curve", "env_steps": end, col: value}
                for r, w in per_run for end, value, _ in w]
        manifest = json.loads((workdir / "imitate" / per_run[0][0]["imitate_key"] / "manifest.json").read_text())
        methods = list(dict.fromkeys(r["method"] for r, _ in per_run))
        out.mkdir(parents=True, exist_ok=True)
        paths.append(out / f"train_{figure_name(task)}")
        plot_task(paths[-1], task, methods, rows, manifest.get("scores", {}),
                  f"training episodes per {window:,} env steps, {source}")
    return paths


def report(per_task: dict[str, RunWindows], window: int, source: str) -> str:
    """A markdown table per task: each run's training-episode windows and its final evaluation."""
    lines = [f"Training episodes per {window:,} env steps beside the final evaluation (`{source}`)."]
    for task, per_run in per_task.items():
        success = reports_success(task)
        what = "success rate" if success else "mean return"
        ends = sorted({end for _, w in per_run for end, _, _ in w})
        head = ["method", "seed"] + [f"{e // 1000}k" for e in ends] + ["final eval", "eval episodes"]
        lines += ["", f"### {task}: training-episode {what} per window", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        fmt = ".2f" if success else ".1f"
        for r, w in per_run:
            cells = {end: f"{v:{fmt}}" for end, v, _ in w}
            final = r["success"] if success else r["return"]
            lines.append("| " + " | ".join([r["method"], str(r["seed"])] + [cells.get(e, "-") for e in ends]
                                           + [f"{final:{fmt}}", str(r["episodes"])]) + " |")
        episodes = sorted({n for _, w in per_run for _, _, n in w})
        if episodes:
            lines.append(f"\n{episodes[0]}-{episodes[-1]} training episodes per window.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, help="a sweep's output folder (it holds results.csv)")
    ap.add_argument("--workdir", type=Path, required=True, help="the work dir the sweep ran in")
    ap.add_argument("--window", type=int, default=10_000, help="env steps per window")
    ap.add_argument("--figures", type=Path, help="also draw DIR/train_<task>.png per task")
    args = ap.parse_args()
    if args.window < 1:
        raise SystemExit("--window must be at least 1 env step")
    per_task = task_windows(args.sweep, args.workdir, args.window)
    print(report(per_task, args.window, args.sweep.name))
    if args.figures is not None:
        for path in figures(per_task, args.workdir, args.window, args.sweep.name, args.figures):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
