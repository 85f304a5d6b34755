"""Vectorised collection: env steps/s of ``cdred collect-experts --num-envs K``.

    python benchmarks/speed/vector_collect.py                              # small agent, 1 and 8 envs
    python benchmarks/speed/vector_collect.py --presets tiny small --num-envs 1 2 4 8 --episodes 16

For each agent preset (untrained, policy prior: speed only) and each K, the collect-experts stage
(``collect_experts.collect_demos`` with a checkpoint expert) collects ``--episodes`` episodes of
dmc:cartpole-balance on K envs stepped together with ONE batched policy call per step, recording
every physics state and writing the zarr dataset, as the CLI does. Two figures per row:

* ``rollout``: the stepping loop alone (:func:`cdred_pipeline.vector.run_trajectories`, states
  recorded, no writing): env steps/s of the vectorisation itself;
* ``collect``: the whole stage (rollout + dataset writing + fsync per episode), as the manifest's
  ``collection.env_steps_per_s`` reports it.

It also checks that the K-env dataset equals the 1-env one (every array), which collect-experts
promises. "env steps" are simulator steps (agent steps x action repeat 2). Results go to
benchmarks/results/vector_collect.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

TASK = "dmc:cartpole-balance"


def _same_store(a: Path, b: Path) -> bool:
    import numpy as np
    import zarr

    def arrays(g, prefix=""):
        out = {}
        for name, item in g.members():
            out.update({prefix + name: np.asarray(item[:])} if hasattr(item, "shape") else arrays(item, f"{prefix}{name}/"))
        return out

    x, y = arrays(zarr.open_group(str(a), mode="r")), arrays(zarr.open_group(str(b), mode="r"))
    return sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k]) for k in x)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["small"])
    p.add_argument("--num-envs", nargs="+", type=int, default=[1, 8])
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--episode-length", type=int, default=500, help="agent steps (cartpole default: 500)")
    p.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "vector_collect.json")
    return p.parse_args()


def _expert_checkpoint(preset: str, path: Path, episode_length: int) -> None:
    """An untrained agent of the preset (policy prior) saved as a cartpole expert checkpoint."""
    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
    from cdred_pipeline.envs import make_env

    spec = make_env(TASK, episode_length=episode_length).spec_info
    agent = TDMPC2Agent(AgentConfig.preset(preset, plan=False, episode_length=episode_length, seed=0),
                        spec.obs_shape, spec.action_dim, device="cpu")
    agent.save(path, extra={"task": TASK, "obs": "state", "episode_length": episode_length})


def _time_rollout(cfg, expert, k: int, args: argparse.Namespace) -> tuple[float, int]:
    """Best wall time of the stepping loop alone on k envs, and the agent steps it took."""
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.seeding import derive
    from cdred_pipeline.stages import collect_experts as ce
    from cdred_pipeline.vector import run_trajectories, single_thread

    act, _, device = ce.load_expert_policy(cfg, expert)
    seeds = [derive(0, "demo-reset", i) for i in range(args.episodes)]
    envs = [make_env(TASK, seed=0, episode_length=args.episode_length) for _ in range(k)]
    roll = []
    try:
        for _ in range(args.repeats):
            t = time.perf_counter()
            with single_thread(device):
                eps = run_trajectories(envs, seeds, act, record_state=True)
            roll.append(time.perf_counter() - t)
    finally:
        for env in envs:
            env.close()
    return min(roll), sum(len(e["reward"]) for e in eps)


def _measure(preset: str, tmp: Path, args: argparse.Namespace) -> list[dict]:
    """Rows of one preset: rollout and whole-stage env steps/s per K, and whether the data equals K = 1's."""
    import dataclasses

    from cdred_pipeline.artifacts import ArtifactStore
    from cdred_pipeline.envs import make_env
    from cdred_pipeline.stages import collect_experts as ce

    ckpt = tmp / f"{preset}.pt"
    _expert_checkpoint(preset, ckpt, args.episode_length)
    repeat = make_env(TASK, episode_length=args.episode_length).spec_info.action_repeat
    base = ce.CollectConfig(task=TASK, policy="checkpoint", checkpoint=str(ckpt), episodes=args.episodes,
                            random_episodes=0, episode_length=args.episode_length, device="cpu", probe=False)
    rows, ref_store = [], None
    for k in args.num_envs:
        cfg = dataclasses.replace(base, num_envs=k)
        store = ArtifactStore(tmp / f"{preset}-{k}")
        expert = ce.train_expert(cfg, store, progress=False)
        roll, agent_steps = _time_rollout(cfg, expert, k, args)
        env_steps = agent_steps * repeat
        coll = []
        for r in range(args.repeats):
            art = ce.collect_demos(cfg, expert, store, force=r > 0, progress=False)
            coll.append(art.manifest["timings"]["collect_s"])
        path = art.path / ce.DATASET_NAME
        same = True if ref_store is None else _same_store(ref_store, path)
        ref_store = ref_store or path
        row = {"preset": preset, "num_envs": k, "episodes": args.episodes, "agent_steps": agent_steps,
               "env_steps": env_steps, "rollout_s": round(roll, 3), "rollout_env_steps_per_s": round(env_steps / roll, 1),
               "collect_s": round(min(coll), 3), "collect_env_steps_per_s": round(env_steps / min(coll), 1),
               "dataset_equals_1_env": same}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'preset':<7} {'envs':>4} {'rollout env steps/s':>20} {'collect env steps/s':>20}  same data")
    for r in rows:
        ref = next(x for x in rows if x["preset"] == r["preset"] and x["num_envs"] == rows[0]["num_envs"])
        sp = r["rollout_env_steps_per_s"] / ref["rollout_env_steps_per_s"]
        sc = r["collect_env_steps_per_s"] / ref["collect_env_steps_per_s"]
        print(f"{r['preset']:<7} {r['num_envs']:>4} {r['rollout_env_steps_per_s']:>12,.0f} (x{sp:.2f}) "
              f"{r['collect_env_steps_per_s']:>12,.0f} (x{sc:.2f})  {r['dataset_equals_1_env']}")


def main() -> None:
    args = _parse()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        for preset in args.presets:
            rows += _measure(preset, Path(tmp_s), args)
    _print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                "python": sys.version.split()[0], "torch": torch.__version__,
                                                "torch_threads_batched": 1},
                                    "task": TASK, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
