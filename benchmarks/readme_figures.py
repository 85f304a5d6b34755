"""Every figure the README states, measured from the current code on this machine, with its load.

    python benchmarks/readme_figures.py [--tests] [--out results/readme-figures.md]

Runs, each in a fresh temporary work dir through the installed ``cdred`` console script:
``cdred pipeline mw:reach --preset quickstart`` (what ``make demo`` runs; its table and wall time) and
``cdred pipeline mw:reach --preset smoke`` (the install check's time); counts the paper preset's
parameters; with ``--tests`` also times ``pytest tests``. The torch compile cache starts empty (a
fresh machine's first run) unless ``--warm-compile``. Prints Markdown and writes it to ``--out``; the
README quotes this file, so its figures change only when this script is rerun.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    """The 1-minute load average and the core count, e.g. ``load 1.02 on 2 cores``."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str, str, str]:
    """Run ``cmd``; (wall seconds, stdout, load before, load after). A failure stops the script."""
    before, t0 = load(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, load()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return wall, proc.stdout, before, after


def pipeline_run(preset: str, env: dict[str, str], scratch: Path) -> tuple[float, str, str, str]:
    """``cdred pipeline mw:reach --preset PRESET`` in a fresh work dir (the table is its stdout)."""
    cdred = shutil.which("cdred") or str(Path(sys.executable).with_name("cdred"))
    workdir = scratch / f"wd-{preset}"
    return timed([cdred, "--workdir", str(workdir), "-q", "pipeline", "mw:reach", "--preset", preset], env, ROOT)


def table_of(stdout: str) -> str:
    """The policy/return/success/score rows of a pipeline's printed summary."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("policy")), None)
    if start is None:
        return stdout.strip()
    rows = [line for line in lines[start:] if line.strip() and not line.endswith(".png") and ":" not in line]
    return "\n".join(rows)


def paper_parameters() -> tuple[int, int]:
    """Trainable parameters of the paper preset on dmc:cheetah-run (17 obs, 6 actions): with the
    two-hot reward head, and with the CDRED reward model."""
    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
    from cdred_pipeline.reward import CDREDConfig, CDREDRewardHead

    cfg = AgentConfig.preset("paper")
    plain = TDMPC2Agent(cfg, (17,), 6, device="cpu").num_params()
    head = CDREDRewardHead(cfg.latent_dim, 6, CDREDConfig())
    return plain, TDMPC2Agent(cfg, (17,), 6, reward_head=head, device="cpu").num_params()


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def measure(args: argparse.Namespace, scratch: Path) -> list[str]:
    """Run everything; the Markdown lines of the report."""
    from cdred_pipeline.artifacts import machine_facts

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    if not args.warm_compile:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    out = [f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/readme_figures.py"
           f"{' --tests' if args.tests else ''}` on {machine_facts()['cpu']}, {os.cpu_count()} cores, Python "
           f"{platform.python_version()}; compile cache {'warm' if args.warm_compile else 'empty at the start'}.", ""]
    wall, stdout, before, after = pipeline_run("quickstart", env, scratch)
    out += ["## make demo (`cdred pipeline mw:reach --preset quickstart`, seed 0, one torch thread)", "",
            "```", table_of(stdout), "```", "", f"Wall time {minutes(wall)} ({before} before, {after} after).", ""]
    wall, _, before, after = pipeline_run("smoke", env, scratch)
    out += ["## --preset smoke (`cdred pipeline mw:reach --preset smoke`)", "",
            f"Wall time {minutes(wall)} ({before} before, {after} after).", ""]
    plain, cdred = paper_parameters()
    out += ["## Paper preset size (dmc:cheetah-run, 17 observations, 6 actions)", "",
            f"{plain:,} trainable parameters with the two-hot reward head, {cdred:,} with the CDRED reward model.", ""]
    if args.tests:
        # the pytest script, not `python -m pytest`: that puts the repo root on sys.path, where the
        # project's datasets/ folder would shadow Hugging Face's `datasets`
        pytest = str(Path(sys.executable).with_name("pytest"))
        wall, _, before, after = timed([pytest, "tests", "-q"], env, ROOT)
        out += ["## Test suite (`pytest tests -q`)", "", f"Wall time {minutes(wall)} ({before} before, {after} after).", ""]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", action="store_true", help="also time the test suite")
    parser.add_argument("--warm-compile", action="store_true", help="reuse torch's compile cache")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "readme-figures.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdred-readme-") as scratch:
        text = "\n".join(["# Figures quoted by the README", "", *measure(args, Path(scratch))])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
