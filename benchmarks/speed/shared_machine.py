"""The quickstart's imitation stage alone and beside one other CPU-bound process, with two torch
threads (torch's default on 2 cores) and with the default ``cdred --threads`` (one thread per run).

    python benchmarks/speed/shared_machine.py            # quickstart-like: ~15 minutes on 2 busy cores
    python benchmarks/speed/shared_machine.py --short    # fewer env steps: ~5 minutes
    python benchmarks/speed/shared_machine.py --other twin   # the other process is a second identical run

The demos (mw:reach, scripted expert, the quickstart's 10 episodes) are collected once in a temporary
work dir; each measured run is ``cdred --threads T imitate DEMOS --force ...`` with the quickstart's
agent preset and seeding, timed from the outside. A run on a shared machine should slow down by about
its share of the cores (2x beside one busy process on 2 cores), not many times. Prints one line per
case: wall seconds, updates/s and the slowdown against the same threads alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CDRED = str(Path(sys.executable).parent / "cdred")
TASK = "mw:reach"
BUSY_LOOP = "while True:\n    pass\n"


def _env() -> dict[str, str]:
    """The child environment: headless MuJoCo; no inherited thread settings (the runs choose their own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "MUJOCO_GL": env.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}


def collect(workdir: Path) -> str:
    """The quickstart's demos (scripted expert, 10 episodes); returns the dataset path."""
    subprocess.run([CDRED, "--workdir", str(workdir), "-q", "collect-experts", TASK, "--policy", "scripted",
                    "--episodes", "10", "--random-episodes", "2"], env=_env(), check=True, capture_output=True)
    return str(next(workdir.glob("demos/*/demos.zarr")))


def imitate_args(workdir: Path, dataset: str, threads: int, steps: int, seed_steps: int) -> list[str]:
    """``cdred imitate`` as the quickstart runs it (small preset, 10 demos), one evaluation at the end."""
    return [CDRED, "--workdir", str(workdir), "-q", "--threads", str(threads), "imitate", dataset, "--force",
            "--preset", "small", "--num-demos", "10", "--steps", str(steps), "--seed-steps", str(seed_steps),
            "--eval-every", str(steps), "--eval-episodes", "1", "--device", "cpu"]


def timed_run(args: list[str], workdir: Path) -> dict[str, float]:
    """Run one imitation; its wall seconds (outside) and updates/s (updates over the trainer's wall time)."""
    t0 = time.perf_counter()
    subprocess.run(args, env=_env(), check=True, capture_output=True)
    wall = time.perf_counter() - t0
    manifest = json.loads(next(workdir.glob("imitate/*/manifest.json")).read_text())
    train = manifest["train"]
    return {"wall_s": wall, "updates": train["update_step"], "updates_per_s": train["update_step"] / train["wall_s"],
            "torch_threads": train.get("torch_threads")}


def start_other(kind: str, root: Path, dataset: str, threads: int, steps: int, seed_steps: int) -> subprocess.Popen:
    """The other CPU-bound process: a Python busy loop, or a second identical run in its own work dir."""
    if kind == "busy":
        return subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    twin = root / "twin"
    return subprocess.Popen(imitate_args(twin, dataset, threads, steps * 4, seed_steps), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(root: Path, dataset: str, threads: int, beside: str | None, steps: int, seed_steps: int) -> dict:
    """One case: the imitation with ``threads`` torch threads, alone or beside another process."""
    workdir = root / f"t{threads}-{beside or 'alone'}"
    other = start_other(beside, root, dataset, threads, steps, seed_steps) if beside else None
    try:
        time.sleep(1.0 if other is not None else 0.0)  # the other process is running before we start
        return {"threads": threads, "beside": beside or "-", **timed_run(
            imitate_args(workdir, dataset, threads, steps, seed_steps), workdir)}
    finally:
        if other is not None:
            other.kill()
            other.wait()


def report(rows: list[dict]) -> None:
    """One line per case, with the slowdown against the same thread count alone."""
    alone = {r["threads"]: r["wall_s"] for r in rows if r["beside"] == "-"}
    print(f"{'threads':>7} {'beside':>7} {'wall_s':>8} {'updates':>8} {'upd/s':>7} {'slowdown':>8}")
    for r in rows:
        slow = r["wall_s"] / alone[r["threads"]] if r["threads"] in alone else float("nan")
        print(f"{r['threads']:>7} {r['beside']:>7} {r['wall_s']:>8.1f} {r['updates']:>8} "
              f"{r['updates_per_s']:>7.2f} {slow:>7.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="600 env steps (200 seeding), not 2000 (1000 seeding)")
    p.add_argument("--other", choices=("busy", "twin"), default="busy", help="the other CPU-bound process")
    p.add_argument("--old-threads", type=int, default=2, help="the thread count of the old behaviour")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    steps, seed_steps = (600, 200) if args.short else (2000, 1000)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cdred-shared-") as tmp:
        root = Path(tmp)
        dataset = collect(root / "demos-wd")
        rows = [measure(root, dataset, t, beside, steps, seed_steps)
                for beside in (None, args.other) for t in (args.old_threads, 1)]
    print(f"cdred imitate {TASK}, small preset, {steps} env steps ({seed_steps} seeding), load before: "
          f"{load:.2f}, cores: {os.cpu_count()}")
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
