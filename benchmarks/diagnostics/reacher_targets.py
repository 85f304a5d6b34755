"""Which dmc:reacher-easy targets an agent reaches, against how far each target is from the demos' targets.

With 10 demonstrations the expert data shows 10 target positions; an imitation agent must carry the
reward (and the policy) over to targets it never saw. This script rolls the agent's policy (eval mode,
as the trainer's evaluations) on ``--episodes`` targets and prints, per episode: the return, the
target, the finger's mean distance to it over the last quarter of the episode, whether that is within
the reward radius (target + finger size), and the distance from the target to the nearest demo target.
The summary splits the episodes at ``--near`` (distance to the nearest demo target).

    python benchmarks/diagnostics/reacher_targets.py AGENT DATASET [--workdir DIR] [--episodes 20] [--out FILE.json]

AGENT: an imitate/experts artifact key, folder or agent.pt; DATASET: the demos the agent learnt from
(key, folder or demos.zarr). Episode i is the trainer's i-th evaluation episode of a run with ``--seed``
(reset seed ``derive(seed, "train-eval-reset", i)``), so the returns match its last evaluation row.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.datasets import open_dataset  # noqa: E402
from cdred_pipeline.envs import make_env  # noqa: E402
from cdred_pipeline.seeding import derive  # noqa: E402
from cdred_pipeline.stages.common import load_agent, resolve_checkpoint, resolve_dataset  # noqa: E402
from cdred_pipeline.vector import agent_act, run_vector_episodes  # noqa: E402

TASK = "dmc:reacher-easy"


def target_xy(env) -> np.ndarray:
    return np.array(env.physics.named.data.geom_xpos["target", :2])


def finger_xy(env) -> np.ndarray:
    return np.array(env.physics.named.data.geom_xpos["finger", :2])


class ReachRecorder:
    """An episode's target, return and the finger's distance to the target after every step."""

    def __init__(self) -> None:
        self.target, self.ret, self.dists = None, 0.0, []

    def on_reset(self, env, obs, info) -> None:
        self.target = target_xy(env)

    def on_step(self, env, obs, action, next_obs, reward, terminated, truncated, info) -> None:
        self.ret += float(reward)
        self.dists.append(float(np.linalg.norm(finger_xy(env) - self.target)))

    def result(self, env) -> tuple[np.ndarray, float, list[float]]:
        return self.target, self.ret, self.dists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("agent")
    ap.add_argument("dataset")
    ap.add_argument("--workdir", default="cdred-runs", help="artifact store for keys")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="the run's seed: its evaluation episodes")
    ap.add_argument("--num-demos", type=int, default=None, help="the agent learnt from the first N episodes only")
    ap.add_argument("--near", type=float, default=0.05, help="split the summary at this distance to a demo target")
    ap.add_argument("--out", default=None, help="JSON file for the per-episode rows")
    args = ap.parse_args()

    store = ArtifactStore(args.workdir)
    ckpt, _ = resolve_checkpoint(args.agent, store)
    data, _ = resolve_dataset(args.dataset, store)
    agent, extra = load_agent(ckpt, device="cpu")
    if extra.get("task") not in (None, TASK):
        raise SystemExit(f"{ckpt} is an agent for {extra.get('task')}; this script reads {TASK} targets")
    ds = open_dataset(data)
    timing = {k: int(v) for k, v in ds.attrs.get("env", {}).items() if k in ("episode_length", "action_repeat") and v}
    env = make_env(TASK, seed=0, **timing)
    radius = float(env.physics.named.model.geom_size["target", 0] + env.physics.named.model.geom_size["finger", 0])
    demo_targets = []
    for s in ds.seeds[:args.num_demos]:
        env.reset(seed=int(s))
        demo_targets.append(target_xy(env))
    demo_targets = np.stack(demo_targets)

    rows = []
    seeds = [derive(args.seed, "train-eval-reset", i) for i in range(args.episodes)]
    episodes = run_vector_episodes([env], seeds, agent_act(agent), lambda i: ReachRecorder())
    for i, (target, ret, dists) in enumerate(episodes):
        final = float(np.mean(dists[-max(1, len(dists) // 4):]))
        nearest = float(np.linalg.norm(demo_targets - target, axis=1).min())
        rows.append({"episode": i, "return": ret, "target": target.round(4).tolist(), "final_distance": final,
                     "reached": final < radius, "nearest_demo_target": nearest})
    env.close()

    print(f"{ckpt}\n{len(demo_targets)} demo targets; reward radius {radius:.3f}\n")
    print(f"{'ep':>3} {'return':>7} {'target (x, y)':>17} {'final dist':>10} {'reached':>7} {'nearest demo':>12}")
    for r in rows:
        t = r["target"]
        print(f"{r['episode']:>3} {r['return']:>7.0f} {f'({t[0]:+.3f}, {t[1]:+.3f})':>17} {r['final_distance']:>10.3f} "
              f"{'yes' if r['reached'] else 'no':>7} {r['nearest_demo_target']:>12.3f}")
    for name, sel in ((f"nearest demo target < {args.near}", [r for r in rows if r["nearest_demo_target"] < args.near]),
                      (f"nearest demo target >= {args.near}", [r for r in rows if r["nearest_demo_target"] >= args.near])):
        if sel:
            print(f"{name}: reached {sum(r['reached'] for r in sel)}/{len(sel)}, "
                  f"mean return {np.mean([r['return'] for r in sel]):.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": str(ckpt), "radius": radius,
                                              "demo_targets": demo_targets.round(4).tolist(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
