"""Where the wall time of ``cdred imitate`` goes: dmc:cartpole-balance, small preset, one torch thread.

    python benchmarks/speed/imitate_loop.py                          # 10 demos, 4,000 env steps: ~10 minutes
    python benchmarks/speed/imitate_loop.py --env-steps 100000 --demos 100 --dataset DEMOS.zarr

Runs the imitate stage in this process with the trainer's timing hook (``timings``) and prints env
steps/s and the split of wall time: env stepping, acting, updates (sampling included), replay buffer,
evaluation episodes, reward diagnostics, writes (metrics, plots, checkpoints), other. Then projects a
100k-env-step run with the stage's defaults (10 evaluations of 5 episodes, seeding of max(1000, 5 x
episode length) agent steps) from the per-step, per-update and per-evaluation costs measured here.

Without ``--dataset`` the demos come from a quick expert (collect-experts with ``--expert-env-steps``
of training, all of them uniform-random seeding at the default): the loop's speed does not depend on
how good the demos are. The target: a 100k-env-step run in <= 30 minutes on one idle core.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

TASK = "dmc:cartpole-balance"
PARTS = ("env", "act", "update", "buffer", "eval", "diagnostics", "writes", "other")
# The same measurement with eager PyTorch and torch's own Mish (one idle core; docs/performance.md).
BEFORE = "22.2 env steps/s, updates 97% of the time, 100k env steps projected at 74 min"


def quick_demos(workdir: Path, demos: int, expert_env_steps: int) -> str:
    """Demos from a briefly trained small expert (collect-experts); returns the dataset path."""
    from cdred_pipeline.artifacts import ArtifactStore
    from cdred_pipeline.stages import collect_experts as ce

    cfg = ce.CollectConfig(task=TASK, preset="small", train_env_steps=expert_env_steps, episodes=demos,
                           random_episodes=2, eval_episodes=1, device="cpu", plan=False)
    art = ce.run(cfg, ArtifactStore(workdir), progress=False)
    return str(art.path / ce.DATASET_NAME)


def run_imitate(workdir: Path, dataset: str, args: argparse.Namespace) -> tuple[dict, dict[str, float], float]:
    """One imitation run with the timing hook; (its manifest, seconds per part, wall seconds)."""
    from cdred_pipeline.artifacts import ArtifactStore
    from cdred_pipeline.stages import imitate

    cfg = imitate.ImitateConfig(env_steps=args.env_steps, preset="small", num_demos=args.demos,
                                eval_every=max(1, args.env_steps // args.evals), seed_agent_steps=args.seed_steps,
                                device="cpu", compile=args.compile)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    art = imitate.run(cfg, dataset, ArtifactStore(workdir), force=True, progress=False, timings=timings)
    return art.manifest, timings, time.perf_counter() - t0


def counts(manifest: dict) -> dict[str, int]:
    """Agent steps, acting steps (after seeding), updates, evaluations and episodes of the run."""
    train = manifest["train"]
    rows = [json.loads(line) for line in Path(train["metrics"]).read_text().splitlines() if line.strip()]
    return {"agent_steps": train["agent_step"], "act_steps": train["agent_step"] - train["seed_steps"],
            "updates": train["update_step"], "evals": sum(r["kind"] == "eval" for r in rows),
            "episodes": train["episodes"], "env_steps": train["env_step"], "seed_steps": train["seed_steps"]}


def project(timings: dict[str, float], n: dict[str, int], env_steps: int = 100_000, evals: int = 10,
            episode_length: int = 500, action_repeat: int = 2) -> dict[str, float]:
    """Seconds per part of a run of ``env_steps`` with the stage's defaults, from this run's unit costs."""
    agent_steps = env_steps // action_repeat
    seed = max(1000, 5 * episode_length)
    per = lambda part, unit: timings.get(part, 0.0) / max(1, n[unit])  # noqa: E731
    return {"env": per("env", "agent_steps") * agent_steps, "act": per("act", "act_steps") * (agent_steps - seed),
            "update": per("update", "updates") * agent_steps,  # seeding's burst + one per step after it
            "buffer": per("buffer", "episodes") * agent_steps / episode_length,
            "eval": per("eval", "evals") * evals, "diagnostics": per("diagnostics", "evals") * evals,
            "writes": per("writes", "episodes") * agent_steps / episode_length,
            "other": per("other", "agent_steps") * agent_steps}


def show(title: str, parts: dict[str, float], env_steps: int) -> None:
    """The split table: seconds and share of each part, env steps/s."""
    total = sum(parts.values())
    print(f"{title}: {total:.1f} s ({total / 60:.1f} min), {env_steps / total:.1f} env steps/s")
    for k in PARTS:
        print(f"  {k:<12} {parts.get(k, 0.0):9.1f} s  {100 * parts.get(k, 0.0) / max(total, 1e-9):5.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--env-steps", type=int, default=4000)
    p.add_argument("--seed-steps", type=int, default=500, help="agent steps of random actions (stage default: 2500)")
    p.add_argument("--evals", type=int, default=2, help="evaluations in the run (5 episodes each)")
    p.add_argument("--dataset", default=None, help="demos.zarr to imitate (default: collect from a quick expert)")
    p.add_argument("--expert-env-steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the losses (default: the small preset's, on where a C++ compiler exists)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the run (its metrics.jsonl and curve.png) here instead of a temporary folder")
    args = p.parse_args()
    from cdred_pipeline.executor import apply_threads

    apply_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cdred-imitate-loop-") as tmp:
        root = args.workdir or Path(tmp)
        dataset = args.dataset or quick_demos(root / "demos", args.demos, args.expert_env_steps)
        manifest, timings, wall = run_imitate(root / "run", dataset, args)
        n = counts(manifest)
    print(f"cdred imitate {TASK}, small preset, {args.demos} demos, {n['env_steps']} env steps, "
          f"{manifest['train']['torch_threads']} torch thread(s), load {os.getloadavg()[0]:.2f}")
    print(f"counts: {n}; wall {wall:.1f} s (setup included), {n['env_steps'] / wall:.1f} env steps/s, "
          f"{n['updates'] / max(timings.get('update', 1e-9), 1e-9):.2f} updates/s in the update part")
    show("measured", timings, n["env_steps"])
    show("projected 100k env steps (target <= 1800 s)", project(timings, n), 100_000)
    print(f"before: {BEFORE}")
    print(f"final eval return {manifest['headline'].get('eval_return')}, expert-normalised score "
          f"{manifest['headline'].get('normalized_score')}")


if __name__ == "__main__":
    main()
