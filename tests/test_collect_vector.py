"""collect-experts on several envs stepped together (``--num-envs``) and over tasks x seeds, on real
MuJoCo, real zarr stores and the real CLI.

Covers: ``--num-envs 3`` with a TD-MPC2 checkpoint (policy prior) writes a valid dataset whose count,
lengths and returns match the manifest, under the same key and with every array and attr equal to
the ``--num-envs 1`` dataset; the same for MPPI (one plan per env, per-episode generators) and for
the scripted Meta-World policy; a SIGKILLed ``--num-envs 3`` collection resumes from its flushed
episodes and ends equal to an uninterrupted single-env run; two tasks in one command (local
executor) make the two expert and dataset artifacts of separate runs; an unknown task in the list
and ``--checkpoint`` with two tasks are one-line errors before any unit starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.agent import AgentConfig, TDMPC2Agent  # noqa: E402
from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.datasets import open_dataset, validate  # noqa: E402
from cdred_pipeline.seeding import derive  # noqa: E402
from cdred_pipeline.stages import collect_experts as ce  # noqa: E402
from cli_helpers import one_line_error, run_cli  # noqa: E402
from store_helpers import assert_same_zarr, kill_collection_midway  # noqa: E402

torch.set_num_threads(1)
TASK, LENGTH = "dmc:cartpole-balance", 30


# ------------------------------------------------------------------------------------- helpers
def _checkpoint(path: Path, plan: bool) -> Path:
    """A tiny TD-MPC2 agent for cartpole saved as an expert checkpoint (untrained: speed, not skill)."""
    cfg = AgentConfig.preset("tiny", plan=plan, episode_length=LENGTH, seed=0, num_samples=32, iterations=2)
    TDMPC2Agent(cfg, (5,), 1, device="cpu").save(path, extra={"task": TASK, "obs": "state", "episode_length": LENGTH})
    return path


def _assert_same_store(a: Path, b: Path, *, ignore_sha: bool = False) -> None:
    """Every data/ and meta/ array bitwise equal (same dtype), attrs equal."""
    xa = assert_same_zarr(a, b, ignore_sha=ignore_sha)
    assert "data/physics_state" in xa and "meta/seed" in xa


def _check_against_manifest(art, episodes: int, length: int) -> None:
    """The store validates; its episode count, lengths and returns match the manifest and scores."""
    path = art.path / ce.DATASET_NAME
    man = json.loads((art.path / "manifest.json").read_text())
    assert man["status"] == "complete" and validate(path) == []
    ds = open_dataset(path)
    assert ds.num_episodes == man["episodes"] == episodes and ds.num_steps == man["steps"] == episodes * length
    eps = [ds.episode(i) for i in range(episodes)]
    assert [e["length"] for e in eps] == [length] * episodes
    assert [e["seed"] for e in eps] == [derive(0, "demo-reset", i) for i in range(episodes)]  # index order
    rets = np.array([e["return"] for e in eps])
    for e in eps:
        assert e["return"] == pytest.approx(float(np.sum(e["reward"], dtype=np.float64)), rel=1e-5, abs=1e-4)
        assert e["obs"].shape[0] == e["action"].shape[0] == e["physics_state"].shape[0] == length
    assert man["scores"]["expert"]["return_mean"] == pytest.approx(rets.mean(), rel=1e-6)
    assert man["scores"] == ds.attrs["scores"]


def _complete(root: Path, stage: str) -> list[Path]:
    d = root / stage
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []


# ------------------------------------------------------------------------------------- num-envs
def test_num_envs_3_writes_the_single_env_dataset(tmp_path):
    ckpt = _checkpoint(tmp_path / "prior.pt", plan=False)
    args = ("collect-experts", TASK, "--checkpoint", str(ckpt), "--episodes", "7", "--random-episodes", "4",
            "--episode-length", str(LENGTH), "--device", "cpu")
    res = run_cli(tmp_path / "k3", *args, "--num-envs", "3")
    assert res.returncode == 0, res.stderr
    cfg = ce.CollectConfig(task=TASK, policy="checkpoint", checkpoint=str(ckpt), episodes=7, random_episodes=4,
                           episode_length=LENGTH, device="cpu")
    one = ce.run(cfg, ArtifactStore(tmp_path / "k1"), progress=False)
    three = ArtifactStore(tmp_path / "k3").get(ce.DEMO_STAGE, one.key)  # num_envs is not in the key
    assert three is not None and f"key: {one.key}" in res.stdout
    assert three.manifest["collection"]["num_envs"] == 3 and one.manifest["collection"]["num_envs"] == 1
    _check_against_manifest(three, episodes=7, length=LENGTH)
    _assert_same_store(one.path / ce.DATASET_NAME, three.path / ce.DATASET_NAME)
    assert three.manifest["scores"] == one.manifest["scores"]  # the random baseline too


def test_num_envs_with_mppi_plans_per_env_and_gives_the_single_env_dataset(tmp_path):
    ckpt = _checkpoint(tmp_path / "mppi.pt", plan=True)
    arts = []
    for n in (1, 2):
        cfg = ce.CollectConfig(task=TASK, policy="checkpoint", checkpoint=str(ckpt), episodes=3, random_episodes=0,
                               episode_length=LENGTH, device="cpu", probe=False, num_envs=n)
        arts.append(ce.run(cfg, ArtifactStore(tmp_path / f"k{n}"), progress=False))
    assert arts[0].key == arts[1].key
    _check_against_manifest(arts[1], episodes=3, length=LENGTH)
    _assert_same_store(arts[0].path / ce.DATASET_NAME, arts[1].path / ce.DATASET_NAME)


def test_scripted_metaworld_acts_per_env_and_gives_the_single_env_dataset(tmp_path):
    arts = []
    for n in (1, 3):
        cfg = ce.CollectConfig(task="mw:reach", policy="scripted", episodes=4, random_episodes=2, episode_length=20,
                               probe=False, num_envs=n)
        arts.append(ce.run(cfg, ArtifactStore(tmp_path / f"k{n}"), progress=False))
    assert arts[0].key == arts[1].key
    _check_against_manifest(arts[1], episodes=4, length=20)
    _assert_same_store(arts[0].path / ce.DATASET_NAME, arts[1].path / ce.DATASET_NAME)


def test_killed_vector_collection_resumes_and_equals_the_single_env_run(tmp_path):
    ckpt = _checkpoint(tmp_path / "prior.pt", plan=False)
    n = 40
    args = ("collect-experts", TASK, "--checkpoint", str(ckpt), "--episodes", str(n), "--random-episodes", "0",
            "--episode-length", str(LENGTH), "--device", "cpu", "--num-envs", "3")
    killed = tmp_path / "killed"
    done = kill_collection_midway(killed, args, at_least=2, total=n)
    assert _complete(killed, ce.DEMO_STAGE) == []
    res = run_cli(killed, *args)
    assert res.returncode == 0, res.stderr
    (demos,) = _complete(killed, ce.DEMO_STAGE)
    art = ArtifactStore(killed).get(ce.DEMO_STAGE, demos.name)
    assert art.manifest["resumed"] >= 1 and art.manifest["collection"]["episodes_this_run"] <= n - done
    _check_against_manifest(art, episodes=n, length=LENGTH)
    cfg = ce.CollectConfig(task=TASK, policy="checkpoint", checkpoint=str(ckpt), episodes=n, random_episodes=0,
                           episode_length=LENGTH, device="cpu")
    fresh = ce.run(cfg, ArtifactStore(tmp_path / "fresh"), progress=False)
    assert fresh.key == art.key
    _assert_same_store(fresh.path / ce.DATASET_NAME, art.path / ce.DATASET_NAME)


# ------------------------------------------------------------------------------------- tasks x seeds
def test_two_tasks_in_one_command_equal_separate_runs(tmp_path):
    tasks = ("dmc:cartpole-balance", "dmc:reacher-easy")
    opts = dict(preset="tiny", train_env_steps=100, episodes=2, random_episodes=1, episode_length=20, plan=False,
                device="cpu", num_envs=2)  # the CLI's defaults otherwise
    res = run_cli(tmp_path / "both", "collect-experts", ",".join(tasks), "--preset", "tiny", "--train-steps", "100",
                  "--episodes", "2", "--random-episodes", "1", "--episode-length", "20", "--no-plan", "--device",
                  "cpu", "--num-envs", "2")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert [ln.split(": ")[0] for ln in lines] == [f"{t} seed 0" for t in tasks]
    both = ArtifactStore(tmp_path / "both")
    for task, line in zip(tasks, lines):
        alone = ce.run(ce.CollectConfig(task=task, **opts), ArtifactStore(tmp_path / task.replace(":", "_")),
                       progress=False)
        assert f"key: {alone.key}" in line
        art = both.get(ce.DEMO_STAGE, alone.key)
        assert art is not None and art.manifest["inputs"] == alone.manifest["inputs"]
        assert art.manifest["scores"] == alone.manifest["scores"] and art.manifest["task"] == task
        _check_against_manifest(art, episodes=2, length=20)
        _assert_same_store(alone.path / ce.DATASET_NAME, art.path / ce.DATASET_NAME, ignore_sha=True)
        ck = [torch.load(s.folder(ce.EXPERT_STAGE, alone.manifest["inputs"]["expert"]) / "agent.pt", weights_only=True)
              for s in (both, ArtifactStore(tmp_path / task.replace(":", "_")))]
        for c in ck:
            c["extra"]["trainer"].pop("elapsed_s")
        assert all(torch.equal(ck[0]["model"][k], ck[1]["model"][k]) for k in ck[0]["model"])
        assert ck[0]["extra"] == ck[1]["extra"]
    assert len(_complete(tmp_path / "both", ce.DEMO_STAGE)) == 2 and len(_complete(tmp_path / "both", ce.EXPERT_STAGE)) == 2


def test_unknown_task_in_the_list_fails_before_any_unit(tmp_path):
    res = run_cli(tmp_path, "collect-experts", "dmc:cartpole-balance,dmc:nope", "--seeds", "0,1", "--preset", "tiny",
                  "--train-steps", "100", "--episodes", "1")
    assert res.returncode == 2, res.stderr
    line = one_line_error(res)
    assert "unknown task id 'dmc:nope'" in line
    assert not (tmp_path / ce.EXPERT_STAGE).exists() and not (tmp_path / ce.DEMO_STAGE).exists()


def test_checkpoint_with_two_tasks_is_a_one_line_usage_error(tmp_path):
    ckpt = _checkpoint(tmp_path / "prior.pt", plan=False)
    res = run_cli(tmp_path / "wd", "collect-experts", "dmc:cartpole-balance,dmc:reacher-easy", "--checkpoint",
                  str(ckpt), "--episodes", "1")
    assert res.returncode == 2, res.stderr
    assert "--checkpoint" in one_line_error(res)
    assert ArtifactStore(tmp_path / "wd").list() == []


def test_tasks_are_checked_and_canonicalised():
    assert ce.parse_tasks("dmc:cartpole-balance, mw:reach-v3") == ["dmc:cartpole-balance", "mw:reach"]
    with pytest.raises(ce.UsageError, match="twice"):
        ce.parse_tasks("mw:reach,mw:reach-v3")
    with pytest.raises(ce.UsageError):
        ce.parse_tasks("dmc:cartpole-balance,,")
    with pytest.raises(ce.UsageError, match="num-envs"):
        ce.CollectConfig(task=TASK, num_envs=0)
