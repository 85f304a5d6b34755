"""Shared helper for stage tests: a small real demos dataset collected with an untrained tiny agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
from cdred_pipeline.artifacts import ArtifactStore
from cdred_pipeline.stages import collect_experts as ce


def checkpoint_demos(root: Path, task: str, length: int, episodes: int = 2) -> dict[str, Any]:
    """``episodes`` demos of ``length`` agent steps of ``task`` (state obs of size 5, 1 action: cartpole),
    collected by collect-experts from a tiny agent checkpoint; the store, the demos artifact, its path."""
    store = ArtifactStore(root / "wd")
    ckpt = root / "expert.pt"
    TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=length), (5,), 1, device="cpu").save(
        ckpt, extra={"task": task, "obs": "state", "episode_length": length})
    cfg = ce.CollectConfig(task=task, policy="checkpoint", checkpoint=str(ckpt), episodes=episodes,
                           random_episodes=2, episode_length=length, plan=False, device="cpu")
    demos = ce.run(cfg, store, progress=False)
    return {"store": store, "demos": demos, "path": demos.path / ce.DATASET_NAME}


def imitate_outputs(workdir: Path) -> tuple[dict, list[dict]]:
    """The saved model weights of the one imitate artifact (complete) in ``workdir`` and its metrics rows
    without their wall times."""
    import json

    import torch

    from cdred_pipeline.stages import imitate as im

    (folder,) = [p for p in (workdir / im.STAGE).iterdir() if p.is_dir() and not p.name.startswith(".")]
    ck = torch.load(folder / "agent.pt", weights_only=True)
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in
            (json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())]
    return ck["model"], rows


def run_imitate_twice(cli: Any, tmp_path: Path, args: list[str]) -> list[tuple[dict, list[dict]]]:
    """Run the same ``cdred imitate`` command in two fresh processes (work dirs ``a`` and ``b``); returns
    each run's saved model weights and its metrics rows without their wall times."""
    runs = []
    for name in ("a", "b"):
        res = cli(tmp_path / name, *args)
        assert res.returncode == 0, res.stderr
        runs.append(imitate_outputs(tmp_path / name))
    return runs
