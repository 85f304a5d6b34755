"""collect-experts end to end on real MuJoCo, real zarr stores and the real CLI.

Covers: the scripted Meta-World path through the CLI, a (tiny, short) TD-MPC2 expert on
dmc:cartpole-balance through the Python API with its files and the cache, the one-line errors for
``--policy scripted`` on a non-Meta-World task and for a checkpoint of another task, and a SIGKILLed
collection that resumes from its flushed episodes and ends equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.datasets import open_dataset, validate  # noqa: E402
from cdred_pipeline.stages import collect_experts as ce  # noqa: E402
from cli_helpers import one_line_error as _one_line_error, run_cli as _cli  # noqa: E402
from store_helpers import kill_collection_midway  # noqa: E402

torch.set_num_threads(1)
MW_TASK, DMC_TASK = "mw:box-close", "dmc:cartpole-balance"


# ------------------------------------------------------------------------------------- helpers






def _complete(root: Path, stage: str) -> list[Path]:
    d = root / stage
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []


def _check_dataset_matches_manifest(art_dir: Path, episodes: int, length: int) -> dict:
    """The store validates; its count, lengths and returns match the manifest and attrs.scores."""
    man = json.loads((art_dir / "manifest.json").read_text())
    path = art_dir / ce.DATASET_NAME
    assert man["status"] == "complete"
    assert validate(path) == []
    ds = open_dataset(path)
    assert ds.num_episodes == man["episodes"] == episodes
    eps = [ds.episode(i) for i in range(ds.num_episodes)]
    assert [e["length"] for e in eps] == [length] * episodes
    assert ds.num_steps == man["steps"] == sum(e["length"] for e in eps)
    returns = np.array([e["return"] for e in eps])
    for e in eps:  # the stored return is the sum of the stored rewards
        assert e["return"] == pytest.approx(float(np.sum(e["reward"], dtype=np.float64)), rel=1e-5, abs=1e-4)
        assert e["obs"].shape[0] == e["action"].shape[0] == e["physics_state"].shape[0] == e["length"]
    expert = ds.attrs["scores"]["expert"]
    assert expert["episodes"] == episodes
    assert expert["return_mean"] == pytest.approx(returns.mean(), rel=1e-6)
    assert expert["return_std"] == pytest.approx(returns.std(), rel=1e-6, abs=1e-9)
    assert man["scores"]["expert"] == expert and man["scores"]["random"] == ds.attrs["scores"]["random"]
    assert man["headline"]["expert_return"] == pytest.approx(returns.mean(), rel=1e-6)
    assert ds.attrs["env"]["task"] == man["task"]
    return man


# ------------------------------------------------------------------------------ module fixtures
@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    """One tiny TD-MPC2 expert on dmc:cartpole-balance (300 env steps) and its 2-episode dataset."""
    root = tmp_path_factory.mktemp("ce_cartpole")
    store = ArtifactStore(root)
    cfg = ce.CollectConfig(task=DMC_TASK, preset="tiny", train_env_steps=300, episodes=2, random_episodes=2,
                           episode_length=50, plan=False, eval_episodes=1, device="cpu")
    demos = ce.run(cfg, store, progress=False)
    expert = store.get(ce.EXPERT_STAGE, demos.manifest["inputs"]["expert"])
    assert expert is not None
    return {"root": root, "store": store, "cfg": cfg, "demos": demos, "expert": expert}


# ------------------------------------------------------------------------------------- scripted
def test_scripted_metaworld_via_cli(tmp_path):
    res = _cli(tmp_path, "collect-experts", MW_TASK, "--policy", "scripted", "--episodes", "2",
               "--random-episodes", "2", "--episode-length", "50")
    assert res.returncode == 0, res.stderr
    demos = _complete(tmp_path, ce.DEMO_STAGE)
    experts = _complete(tmp_path, ce.EXPERT_STAGE)
    assert len(demos) == 1 and len(experts) == 1
    man = _check_dataset_matches_manifest(demos[0], episodes=2, length=50)
    assert f"key: {demos[0].name}" in res.stdout and "(2 episodes, 100 steps)" in res.stdout
    ds = open_dataset(demos[0] / ce.DATASET_NAME)
    assert ds.attrs["source"]["kind"] == "scripted"
    assert ds.attrs["env"]["episode_length"] == 50 and ds.attrs["env"]["obs_dim"] == 39
    assert man["scores"]["random"]["episodes"] == 2
    assert not (experts[0] / "agent.pt").exists()  # a scripted expert has no weights


# ------------------------------------------------------------------------------------- tdmpc2
def test_tdmpc2_expert_writes_agent_metrics_curve_and_valid_dataset(cartpole):
    exp_dir = cartpole["expert"].path
    assert {"agent.pt", "metrics.jsonl", "curve.png", "manifest.json"} <= {p.name for p in exp_dir.iterdir()}
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("env_step" in r and "agent_step" in r for r in rows)
    assert all(r["env_step"] == 2 * r["agent_step"] for r in rows)  # cartpole: action repeat 2
    assert rows[-1]["env_step"] == 300 and any(r["kind"] == "eval" for r in rows)
    assert (exp_dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = torch.load(exp_dir / "agent.pt", weights_only=True)
    assert ck["extra"]["task"] == DMC_TASK and ck["extra"]["obs"] == "state" and ck["extra"]["preset"] == "tiny"
    _check_dataset_matches_manifest(cartpole["demos"].path, episodes=2, length=50)
    ds = open_dataset(cartpole["demos"].path / ce.DATASET_NAME)
    assert ds.attrs["source"]["kind"] == "tdmpc2"
    assert ds.attrs["source"]["train_env_steps"] == 300  # what the expert trained for, from its trainer state
    assert ds.attrs["env"]["obs_dim"] == 5 and ds.attrs["env"]["action_dim"] == 1
    # the manifest names the dataset where it lies once complete, not in the .partial folder
    assert cartpole["demos"].manifest["dataset"] == str(cartpole["demos"].path / ce.DATASET_NAME)
    assert Path(cartpole["demos"].manifest["dataset"]).is_dir()


def test_tdmpc2_rerun_is_served_from_cache(cartpole):
    before = {a: json.loads((cartpole[a].path / "manifest.json").read_text()) for a in ("expert", "demos")}
    again = ce.run(cartpole["cfg"], cartpole["store"], progress=False)
    assert again.key == cartpole["demos"].key and again.path == cartpole["demos"].path
    for a in ("expert", "demos"):
        now = json.loads((cartpole[a].path / "manifest.json").read_text())
        assert (now["finished"], now["created"]) == (before[a]["finished"], before[a]["created"])
    assert len(_complete(cartpole["root"], ce.DEMO_STAGE)) == 1
    assert len(_complete(cartpole["root"], ce.EXPERT_STAGE)) == 1


def test_expert_manifest_paths_name_the_final_folder(cartpole):
    train = cartpole["expert"].manifest["train"]
    for k in ("checkpoint", "metrics", "curve"):
        assert Path(train[k]).is_file() and Path(train[k]).parent == cartpole["expert"].path, (k, train[k])


# ------------------------------------------------------------------------------------- bad input
def test_scripted_policy_on_dmc_task_is_a_one_line_usage_error(tmp_path):
    res = _cli(tmp_path, "collect-experts", DMC_TASK, "--policy", "scripted", "--episodes", "1")
    assert res.returncode == 2, res.stderr
    line = _one_line_error(res)
    assert DMC_TASK in line and "Meta-World" in line
    assert not (tmp_path / ce.DEMO_STAGE).exists()


def test_checkpoint_of_another_task_names_both(cartpole, tmp_path):
    ckpt = cartpole["expert"].path / "agent.pt"
    res = _cli(tmp_path, "collect-experts", "dmc:cartpole-swingup", "--checkpoint", str(ckpt), "--episodes", "1",
               "--random-episodes", "0")
    assert res.returncode != 0
    line = _one_line_error(res)
    assert "dmc:cartpole-balance" in line and "dmc:cartpole-swingup" in line
    assert _complete(tmp_path, ce.DEMO_STAGE) == [] and _complete(tmp_path, ce.EXPERT_STAGE) == []


def test_checkpoint_with_another_observation_shape_names_both(tmp_path):
    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent

    ckpt = tmp_path / "pixel.pt"
    agent = TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=50), (9, 64, 64), 1, device="cpu")
    agent.save(ckpt, extra={"task": DMC_TASK, "obs": "rgb", "episode_length": 50})
    res = _cli(tmp_path / "wd", "collect-experts", DMC_TASK, "--checkpoint", str(ckpt), "--episodes", "1",
               "--random-episodes", "0", "--episode-length", "50")
    assert res.returncode != 0
    line = _one_line_error(res)
    assert "(9, 64, 64)" in line and "(5,)" in line
    assert _complete(tmp_path / "wd", ce.DEMO_STAGE) == []


@pytest.mark.parametrize("case", ["other-task", "pixel"])
def test_bad_checkpoint_leaves_no_artifact(cartpole, tmp_path, case):
    """A refused checkpoint leaves nothing in the work dir: no partial folder that `cdred status` lists
    and a rerun would 'resume', and no complete experts artifact holding an unusable checkpoint."""
    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
    from cdred_pipeline.errors import CdredError

    if case == "other-task":
        ckpt, task = cartpole["expert"].path / "agent.pt", "dmc:cartpole-swingup"
    else:
        ckpt, task = tmp_path / "pixel.pt", DMC_TASK
        TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=50), (9, 64, 64), 1, device="cpu").save(
            ckpt, extra={"task": DMC_TASK, "obs": "rgb", "episode_length": 50})
    store = ArtifactStore(tmp_path / "wd")
    cfg = ce.CollectConfig(task=task, policy="checkpoint", checkpoint=str(ckpt), episodes=1, random_episodes=0,
                           episode_length=50, device="cpu")
    with pytest.raises(CdredError):
        ce.run(cfg, store, progress=False)
    assert store.list() == [], [f"{a.stage}/{a.path.name} ({a.manifest.get('status')})" for a in store.list()]


# ------------------------------------------------------------------------------------- resume
def test_killed_collection_resumes_and_equals_uninterrupted_run(tmp_path):
    n = 30
    args = ("collect-experts", MW_TASK, "--policy", "scripted", "--episodes", str(n), "--random-episodes", "2",
            "--episode-length", "50")
    killed = tmp_path / "killed"
    kill_collection_midway(killed, args, at_least=1, total=n)
    assert _complete(killed, ce.DEMO_STAGE) == []

    res = _cli(killed, *args)
    assert res.returncode == 0, res.stderr
    demos = _complete(killed, ce.DEMO_STAGE)
    assert len(demos) == 1 and not list((killed / ce.DEMO_STAGE).glob(".*.partial"))
    man = _check_dataset_matches_manifest(demos[0], episodes=n, length=50)
    assert man["resumed"] >= 1

    fresh = tmp_path / "fresh"
    res = _cli(fresh, *args)
    assert res.returncode == 0, res.stderr
    ref = _complete(fresh, ce.DEMO_STAGE)
    assert [p.name for p in ref] == [demos[0].name]  # same config, same key
    a, b = open_dataset(demos[0] / ce.DATASET_NAME), open_dataset(ref[0] / ce.DATASET_NAME)
    assert a.num_episodes == b.num_episodes == n
    for i in range(n):
        ea, eb = a.episode(i), b.episode(i)
        assert (ea["seed"], ea["return"], ea["length"], ea["success"]) == (eb["seed"], eb["return"], eb["length"],
                                                                           eb["success"]), i
        for k in ("obs", "action", "reward", "physics_state", "final_obs"):
            assert np.array_equal(ea[k], eb[k]), (i, k)
    assert a.attrs["scores"] == b.attrs["scores"]
