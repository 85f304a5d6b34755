"""Torch thread counts of a run: ``cdred --threads N`` reaches the training stages, the default is one
thread per run process (or OMP_NUM_THREADS when set), and worker processes inherit the count.

The CLI runs are real subprocesses on dmc:cartpole-balance with a tiny agent; the thread count a
trainer used is read from its artifact's manifest (``train.torch_threads``). No timings are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cdred_pipeline.executor import DEFAULT_THREADS, THREAD_ENV_KEYS, apply_threads, resolve_threads
from cli_helpers import cdred_command

TASK = "dmc:cartpole-balance"


def _cli(workdir: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cdred --workdir WORKDIR -q ARGS`` with no thread settings in its environment."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV_KEYS}
    res = subprocess.run([*cdred_command(), "--workdir", str(workdir), "-q", *args], capture_output=True, text=True,
                         env={**env, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1", **(extra_env or {})}, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


def _manifest(workdir: Path, stage: str) -> dict:
    (path,) = workdir.glob(f"{stage}/*/manifest.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """A tiny expert trained and 2 demos collected by ``cdred collect-experts`` without ``--threads``."""
    workdir = tmp_path_factory.mktemp("threads") / "wd"
    _cli(workdir, "collect-experts", TASK, "--preset", "tiny", "--train-steps", "100", "--episodes", "2",
         "--random-episodes", "0", "--episode-length", "50", "--device", "cpu")
    return workdir


def test_collect_experts_trains_on_the_default_thread_count(collected):
    assert _manifest(collected, "experts")["train"]["torch_threads"] == DEFAULT_THREADS == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch caps OMP_NUM_THREADS at the core count")
def test_threads_option_reaches_imitate(collected):
    """2 threads, not the default 1 (torch reads the count from OMP_NUM_THREADS, capped at the cores).

    Passive OpenMP waiting: two spinning threads on a machine whose cores are busy with other work run
    many times slower (docs/performance.md), and this test checks the count, not the speed."""
    (demos,) = collected.glob("demos/*/demos.zarr")
    _cli(collected, "--threads", "2", "imitate", str(demos), "--preset", "tiny", "--steps", "120", "--seed-steps",
         "10", "--eval-every", "120", "--eval-episodes", "1", "--no-diagnose", "--device", "cpu",
         extra_env={"OMP_WAIT_POLICY": "PASSIVE"})
    assert _manifest(collected, "imitate")["train"]["torch_threads"] == 2


def test_resolve_threads_order(monkeypatch):
    """An explicit count wins, then OMP_NUM_THREADS, then the default; 0 means unset."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(None) == resolve_threads(0) == DEFAULT_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(0) == 3 and resolve_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    assert resolve_threads(None) == DEFAULT_THREADS


def test_apply_threads_sets_this_process_and_its_workers(monkeypatch):
    import torch

    before = torch.get_num_threads()
    for key in THREAD_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    try:
        assert apply_threads(2) == 2
        assert torch.get_num_threads() == 2
        assert all(os.environ[k] == "2" for k in THREAD_ENV_KEYS)  # what a spawned worker reads
    finally:
        torch.set_num_threads(before)
