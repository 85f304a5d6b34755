"""``--log tensorboard|wandb``: the real console script trains a tiny imitation run (2 cartpole demos,
``--threads 1``) and the TensorBoard events it leaves in ``<artifact>/tb`` are read back with TensorBoard's own
EventAccumulator: one scalar per numeric field of every metrics.jsonl row, at the row's env_step, equal to the
row (as float32, TensorBoard's scalar type); after a SIGKILL and a resume, and for a run taken from the
cache, too. ``--log`` is not part of the cache key. The W&B test runs offline and skips without wandb."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.logging_sinks import TB_DIR, WANDB_FOLDER, row_scalars  # noqa: E402
from cdred_pipeline.stages import imitate as im  # noqa: E402
from cli_helpers import kill_cli_when, one_line_error, run_cli  # noqa: E402
from demo_helpers import checkpoint_demos  # noqa: E402

torch.set_num_threads(1)
TASK, LENGTH = "dmc:cartpole-balance", 50
HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None
needs_tb = pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (pip install 'cdred[logging]')")


def _args(demos: Path, steps: int, *extra: str) -> tuple[str, ...]:
    """A tiny imitate run: 10 seed steps, an evaluation every 100 env steps with the reward diagnostics."""
    return ("--threads", "1", "imitate", str(demos), "--preset", "tiny", "--steps", str(steps), "--seed-steps", "10",
            "--eval-every", "100", "--eval-episodes", "1", "--seed", "3", "--device", "cpu", *extra)


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """A 2-demo cartpole dataset (50 agent steps each) collected with a tiny agent checkpoint."""
    return checkpoint_demos(tmp_path_factory.mktemp("sinks"), TASK, LENGTH)["path"]


def _artifact(workdir: Path) -> Path:
    """The one complete imitate artifact's folder in ``workdir``."""
    (folder,) = [p for p in (workdir / im.STAGE).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


def _expected(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, float32 value), ...]} that the rows of metrics.jsonl make, in row order."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        step, values = row_scalars(row)
        for tag, value in values.items():
            out[tag].append((step, float(np.float32(value))))
    return dict(out)


def _events(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files of ``tb_dir``, read by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_events_equal_rows(folder: Path) -> list[dict]:
    """The artifact's TensorBoard scalars are exactly its metrics.jsonl rows; returns the rows."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    expected = _expected(rows)
    assert {"train/episode_return", "eval/eval_return_mean", "eval/diag_reward_expert"} <= set(expected)
    got = _events(folder / TB_DIR)
    assert got.keys() == expected.keys()
    for tag, pairs in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in pairs], tag
        np.testing.assert_array_equal([v for _, v in got[tag]], [v for _, v in pairs], err_msg=tag)
    return rows


def _past_checkpoint(workdir: Path) -> tuple[int, Path] | None:
    """(env step of the checkpoint, partial folder) once the running imitate run has a checkpoint with updates
    and has logged a row after it, else None."""
    found = list((workdir / im.STAGE).glob(".*.partial/agent.pt")) if (workdir / im.STAGE).is_dir() else []
    if not found:
        return None
    ckpt = torch.load(found[0], weights_only=True)
    step = ckpt["extra"]["trainer"]["agent_step"]
    metrics = found[0].parent / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()[:-1]] if metrics.exists() else []
    past = ckpt["update_step"] > 0 and any(r["agent_step"] > step for r in rows)
    return (step * ckpt["extra"]["action_repeat"], found[0].parent) if past else None


@needs_tb
def test_tensorboard_events_equal_metrics_after_a_kill_and_resume(demos, tmp_path):
    """Killed after its first checkpoint (with rows and events past it), the rerun rolls metrics.jsonl back
    and rebuilds the events from it: no scalar twice, none out of order, every one equal to its row; the
    event files are in the manifest (status --verify passes)."""
    args = _args(demos, 1200, "--log", "tensorboard")  # checkpoints every 150 agent steps
    code = kill_cli_when(tmp_path, args, lambda: _past_checkpoint(tmp_path) is not None, timeout=180,
                         what="the imitate run logged no row past a checkpoint with updates")
    assert code == -signal.SIGKILL
    ckpt_env_step, partial = _past_checkpoint(tmp_path)
    assert max(s for pairs in _events(partial / TB_DIR).values() for s, _ in pairs) > ckpt_env_step
    res = run_cli(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    folder = _artifact(tmp_path)
    rows = _assert_events_equal_rows(folder)
    assert json.loads((folder / "manifest.json").read_text())["train"]["resumed_from"] is not None
    assert rows[-1]["env_step"] == 1200
    assert len(list((folder / TB_DIR).glob("events.*"))) == 1
    res = run_cli(tmp_path, "status", "--verify")
    assert res.returncode == 0, res.stdout + res.stderr


@needs_tb
def test_cached_run_gets_its_events_from_metrics_and_the_same_key(demos, tmp_path):
    """``--log`` does not change the key: a run made without it is taken from the cache, and its events are
    exported from its metrics.jsonl (listed in its manifest); a third call leaves them as they are."""
    first = run_cli(tmp_path, *_args(demos, 300))
    assert first.returncode == 0, first.stderr
    folder = _artifact(tmp_path)
    assert not (folder / TB_DIR).exists()
    second = run_cli(tmp_path, *_args(demos, 300, "--log", "tensorboard"))
    assert second.returncode == 0, second.stderr
    assert _artifact(tmp_path) == folder and "exported from its metrics.jsonl" in second.stderr  # same key
    _assert_events_equal_rows(folder)
    files = json.loads((folder / "manifest.json").read_text())["files"]
    assert any(k.startswith(f"{TB_DIR}/events.") for k in files)
    before = {p.name: p.read_bytes() for p in (folder / TB_DIR).iterdir()}
    third = run_cli(tmp_path, *_args(demos, 300, "--log", "tensorboard"))
    assert third.returncode == 0, third.stderr
    assert {p.name: p.read_bytes() for p in (folder / TB_DIR).iterdir()} == before
    assert run_cli(tmp_path, "status", "--verify").returncode == 0


@needs_tb
def test_bc_logs_its_eval_rows(demos, tmp_path):
    """BC (its own loop) logs its eval rows, bc_loss included, to TensorBoard as well."""
    res = run_cli(tmp_path, *_args(demos, 300, "--method", "bc", "--log", "tensorboard"))
    assert res.returncode == 0, res.stderr
    folder = _artifact(tmp_path)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    got = _events(folder / TB_DIR)
    assert got == {k: [(s, v) for s, v in pairs] for k, pairs in _expected(rows).items()}
    assert "eval/bc_loss" in got and len(got["eval/eval_return_mean"]) == len(rows) >= 2


def test_row_scalars_takes_numbers_only():
    """Numbers and booleans become scalars tagged by the row's kind at env_step; lists, None and text do not."""
    row = {"kind": "eval", "agent_step": 5, "env_step": 10, "eval_return_mean": 1.5, "success": True,
           "eval_returns": [1.0, 2.0], "bc_loss": None, "note": "x"}
    assert row_scalars(row) == (10, {"eval/agent_step": 5.0, "eval/env_step": 10.0, "eval/eval_return_mean": 1.5,
                                     "eval/success": 1.0})
    assert row_scalars({"kind": "train", "agent_step": 7})[0] == 7


@pytest.mark.skipif(HAS_WANDB, reason="wandb is installed: the missing-package error cannot show")
def test_missing_wandb_is_one_line_and_leaves_nothing(demos, tmp_path):
    """--log wandb without wandb: one line naming the pip command, exit 3, no artifact folder."""
    res = run_cli(tmp_path, *_args(demos, 300, "--log", "wandb"))
    assert res.returncode == 3
    assert "pip install wandb" in one_line_error(res)
    assert not (tmp_path / im.STAGE).exists()


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'cdred[logging]')")
def test_wandb_logs_offline_into_the_workdir(demos, tmp_path):
    """--log wandb writes an offline W&B run named after the artifact under <workdir>/.wandb, outside it."""
    from cli_helpers import cli_env, cdred_command
    import subprocess

    env = {**cli_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_DIR", None)
    res = subprocess.run([*cdred_command(), "--workdir", str(tmp_path), "-q", *_args(demos, 300, "--log", "wandb")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    runs = list((tmp_path / WANDB_FOLDER).rglob("offline-run-*"))
    assert runs and any(runs[0].glob("run-*.wandb"))
    assert not any(_artifact(tmp_path).rglob("*.wandb"))
    assert run_cli(tmp_path, "status", "--verify").returncode == 0


@needs_tb
def test_pipeline_passes_log_on_and_no_key_changes():
    """pipeline --log reaches the collect-experts and imitate configs; their cache keys do not change; an
    unknown name is a usage error."""
    from cdred_pipeline.errors import UsageError
    from cdred_pipeline.stages import pipeline as pl

    with_log, without = pl.PipelineConfig(TASK, log=("tensorboard", "tensorboard")), pl.PipelineConfig(TASK)
    assert pl.collect_config(with_log).log == pl.imitate_config(with_log).log == ("tensorboard",)
    assert pl.imitate_config(with_log).key_config() == pl.imitate_config(without).key_config()
    assert "log" not in pl.imitate_config(with_log).key_config()
    with pytest.raises(UsageError, match="--log 'mlflow'"):
        pl.PipelineConfig(TASK, log=("mlflow",))
