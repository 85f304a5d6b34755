"""CDRED against the baselines (RED, IQ-MPC, BC) through `cdred sweep`, and the final scores per method and seed.

One sweep per task, because the tasks differ in length: ``mw:reach`` at the quickstart length (8k env
steps, minutes per run) and ``dmc:cartpole-balance`` at 100k env steps with the ``cpu`` preset (about 45
minutes per online run on one core beside another run, after a TD-MPC2 expert of the same length, about
20 minutes). Both use the small agent, 100 demonstrations and 3 seeds; every run ends with a
100-episode evaluation. Each sweep writes its CSV, its summary and one figure per task (curves with seed
bands, the expert's level) under ``RUNS/sweeps/baselines-<task>/``; this script then prints every
run's final return, success and normalised score, so that unstable seeds stand out. Finished runs are
cached: rerunning reads them back.

    python benchmarks/learning/baselines.py --workdir RUNS                          # both tasks, hours
    python benchmarks/learning/baselines.py --workdir RUNS --tasks mw:reach --workers 2   # about an hour

A grid too long for one sitting can be run in parts (``--seeds``, ``--methods``), each part's sweep folder
kept, and the parts put into one table with ``cdred sweep-merge PART1 PART2 --out DIR``. The expert and
demos are seeded, so on the same machine and software each part makes the same ones: the expert's
return in each part's summary.md shows it.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

#: Per task: the pipeline preset and the imitation length (env steps).
SETTINGS: dict[str, tuple[str, int]] = {"mw:reach": ("quickstart", 8_000), "dmc:cartpole-balance": ("cpu", 100_000)}
METHODS = "cdred,red,iqmpc,bc"


def sweep(workdir: Path, task: str, seeds: str, methods: str, workers: int, expert_env_steps: int | None) -> Path:
    """Run (or resume) the task's sweep with the cdred CLI beside this interpreter; its output folder."""
    preset, steps = SETTINGS[task]
    name = "baselines-" + task.replace(":", "-")
    cdred = Path(sys.executable).with_name("cdred")
    cmd = [str(cdred), "--workdir", str(workdir), "--threads", "1", "sweep", "--tasks", task, "--seeds", seeds,
           "--methods", methods, "--preset", preset, "--num-demos", "100", "--env-steps", str(steps),
           "--eval-episodes", "100", "--workers", str(workers), "--name", name,
           *(["--expert-env-steps", str(expert_env_steps)] if expert_env_steps else [])]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    return workdir / "sweeps" / name


def print_finals(out: Path) -> None:
    """Every run's final evaluation from the sweep's results.csv, one line per method and seed."""
    with open(out / "results.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["point"] == "final"]
    print(f"{'task':22} {'method':8} {'seed':>4} {'return':>9} {'success':>8} {'score':>7}")
    order = METHODS.split(",")
    rank = lambda m: order.index(m) if m in order else len(order)  # noqa: E731
    for r in sorted(rows, key=lambda r: (r["task"], rank(r["method"]), r["method"], int(r["seed"]))):
        success = f"{float(r['success']):.2f}" if r["success"] else "-"
        print(f"{r['task']:22} {r['method']:8} {r['seed']:>4} {float(r['return']):9.1f} {success:>8} "
              f"{float(r['normalized_score']):7.1f}")
    print(f"summary: {out / 'summary.md'}; figures: {out / 'figures'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--tasks", default=",".join(SETTINGS), help=f"comma list from {', '.join(SETTINGS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=METHODS, help="a part of the grid (merge the parts with cdred sweep-merge)")
    ap.add_argument("--workers", type=int, default=2, help="runs side by side, one torch thread each")
    ap.add_argument("--expert-env-steps", type=int, default=None,
                    help="TD-MPC2 experts' training length (default: the preset's, 100k env steps)")
    args = ap.parse_args()
    for task in args.tasks.split(","):
        if task not in SETTINGS:
            ap.error(f"--tasks: {task!r} is not one of {', '.join(SETTINGS)}")
        print_finals(sweep(args.workdir, task, args.seeds, args.methods, args.workers, args.expert_env_steps))


if __name__ == "__main__":
    main()
