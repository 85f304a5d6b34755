"""A SIGKILLed ``cdred imitate`` resumes exactly: the real console script in a subprocess (tiny preset,
a 2-demo cartpole dataset, ``--threads 1``) is killed with ``kill -9`` once it has written a checkpoint
after updates began, rerun to the end, and its final weights and metrics rows (wall times aside) equal
those of an uninterrupted run bit for bit. CDRED (the online trainer) and BC (its own loop)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.stages import imitate as im  # noqa: E402
from cli_helpers import kill_cli_when, run_cli  # noqa: E402
from demo_helpers import checkpoint_demos, imitate_outputs  # noqa: E402

torch.set_num_threads(1)
TASK, LENGTH = "dmc:cartpole-balance", 50


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """A 2-demo cartpole dataset (50 agent steps each) collected with a tiny agent checkpoint."""
    return checkpoint_demos(tmp_path_factory.mktemp("resume"), TASK, LENGTH)["path"]


def _checkpoint(workdir: Path) -> dict | None:
    """The killed run's checkpoint in its partial imitate folder, once there is one."""
    found = list((workdir / im.STAGE).glob(".*.partial/agent.pt")) if (workdir / im.STAGE).is_dir() else []
    return torch.load(found[0], weights_only=True) if found else None


def _kill_resume_compare(tmp_path: Path, args: tuple[str, ...]) -> dict:
    """Run ``args`` uninterrupted (work dir ``a``) and killed after its first checkpoint with updates then
    rerun (``b``); assert equal weights and rows; returns the checkpoint the kill left."""
    res = run_cli(tmp_path / "a", *args)
    assert res.returncode == 0, res.stderr
    killed = tmp_path / "b"
    code = kill_cli_when(killed, args, lambda: (_checkpoint(killed) or {}).get("update_step", 0) > 0,
                         timeout=120, what="the imitate run wrote no checkpoint after updates")
    assert code == -signal.SIGKILL
    at_kill = _checkpoint(killed)
    res = run_cli(killed, *args)
    assert res.returncode == 0, res.stderr
    (wa, ra), (wb, rb) = imitate_outputs(tmp_path / "a"), imitate_outputs(killed)
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    assert ra == rb
    return at_kill


def test_killed_imitate_resumes_bit_for_bit(demos, tmp_path):
    """The first checkpoint (agent step 100) follows the burst of 10 updates and one per agent step after
    the 10 seed steps, an evaluation with the reward diagnostics
    (which sample the expert, random-policy and behavioural buffers) and so every RNG stream's use."""
    args = ("--threads", "1", "imitate", str(demos), "--preset", "tiny", "--steps", "600", "--seed-steps", "10",
            "--eval-every", "200", "--eval-episodes", "1", "--seed", "3", "--device", "cpu")
    at_kill = _kill_resume_compare(tmp_path, args)
    trainer = at_kill["extra"]["trainer"]
    assert trainer["agent_step"] == 100 and at_kill["update_step"] == 10 + (100 - 10)
    assert {"expert", "hook:random"} <= set(at_kill["extra"]["samplers"])
    (folder,) = (tmp_path / "b" / im.STAGE).glob("[!.]*")
    assert json.loads((folder / "manifest.json").read_text())["train"]["resumed_from"] == 100


def test_killed_bc_resumes_bit_for_bit(demos, tmp_path):
    """BC checkpoints at each evaluation mark (every 200 agent steps here, 200 updates each) and resumes
    from the last one."""
    args = ("--threads", "1", "imitate", str(demos), "--method", "bc", "--preset", "tiny", "--steps", "4000",
            "--seed-steps", "10", "--eval-every", "400", "--eval-episodes", "1", "--seed", "3", "--device", "cpu")
    at_kill = _kill_resume_compare(tmp_path, args)
    assert 200 <= at_kill["extra"]["bc_agent_step"] < 2000


def _eval_outputs(workdir: Path) -> tuple[list, dict[str, bytes]]:
    """The report's episode rows and aggregates and the video bytes of the one complete evaluate artifact."""
    (folder,) = [p for p in (workdir / "eval").iterdir() if p.is_dir() and not p.name.startswith(".")]
    report = json.loads((folder / "report.json").read_text())
    return [report["rows"], report["aggregates"]], {p.name: p.read_bytes() for p in sorted((folder / "videos").glob("*.mp4"))}


def test_killed_evaluate_reruns_to_the_uninterrupted_report(tmp_path):
    """Evaluate's episodes are pure functions of (p, seed, episode): killed after its first video, a rerun
    writes the report and videos of an uninterrupted run, byte for byte."""
    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent

    ckpt = tmp_path / "agent.pt"
    TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=LENGTH), (5,), 1, device="cpu").save(
        ckpt, extra={"task": TASK, "obs": "state", "episode_length": LENGTH})
    args = ("--threads", "1", "evaluate", str(ckpt), "--tremble", "0,0.5", "--episodes", "6", "--videos", "2",
            "--device", "cpu")
    res = run_cli(tmp_path / "a", *args)
    assert res.returncode == 0, res.stderr
    killed = tmp_path / "b"
    code = kill_cli_when(killed, args, lambda: any(killed.glob("eval/.*.partial/videos/*.mp4")), timeout=120,
                         what="evaluate wrote no video")
    assert code == -signal.SIGKILL
    res = run_cli(killed, *args)
    assert res.returncode == 0, res.stderr
    assert _eval_outputs(tmp_path / "a") == _eval_outputs(killed)
