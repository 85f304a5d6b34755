"""Damaged cached artifacts: a checkpoint whose weights were changed inside a valid file, and a finished
demos store that lost a chunk, are refused with one line naming the file; `status --verify` finds both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

COLLECT = ("collect-experts", "dmc:cartpole-balance", "--preset", "tiny", "--train-steps", "400", "--episodes", "2",
           "--random-episodes", "1", "--no-compile")


def _cdred(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "-m", "cli", "--workdir", str(workdir), "--threads", "1", "-q", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def _one_line(res: subprocess.CompletedProcess, code: int) -> str:
    assert res.returncode == code, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    return res.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A work dir holding a tiny trained cartpole expert and its demos (complete artifacts); the second
    test's --force run repairs what the first damaged, so each test also passes alone."""
    wd = tmp_path_factory.mktemp("faults") / "wd"
    res = _cdred(wd, *COLLECT)
    assert res.returncode == 0, res.stderr
    return wd


def test_flipped_weights_inside_a_valid_checkpoint_are_refused(workdir):
    [ckpt] = workdir.glob("experts/*/agent.pt")
    whole = ckpt.read_bytes()
    state = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.abs().sum() > 0)
    state["model"][name] = -state["model"][name]
    torch.save(state, ckpt)  # still a valid torch file, of the same tensors
    err = _one_line(_cdred(workdir, "evaluate", str(ckpt), "--episodes", "1"), 4)
    assert "agent.pt: contents differ from the sha256 its artifact recorded" in err
    status = _cdred(workdir, "status", "--verify")
    assert status.returncode == 4 and "damaged: agent.pt" in status.stdout, status.stdout + status.stderr
    assert status.stderr.startswith("error: 1 damaged: experts/")
    ckpt.write_bytes(whole)  # the module's work dir is whole again for the next test


def test_a_finished_store_that_lost_a_chunk_is_refused_until_forced(workdir):
    [store] = workdir.glob("demos/*/demos.zarr")
    chunk = next(p for p in sorted((store / "data" / "obs").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    err = _one_line(_cdred(workdir, *COLLECT), 4)
    assert "is damaged: demos.zarr/data/obs/" in err and "is missing" in err and "--force" in err
    assert _cdred(workdir, *COLLECT, "--force").returncode == 0
    clean = _cdred(workdir, "status", "--verify")
    assert clean.returncode == 0 and "damaged" not in clean.stdout, clean.stdout + clean.stderr
    assert clean.stdout.count(" ok ") >= 2, clean.stdout
