"""Online trainer tests on the real gym:Pendulum-v1 env (tiny preset, CPU): files and counters,
resume after SIGKILL in a real subprocess, divergence handling, and the expert-buffer hook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cdred_pipeline.agent import AgentConfig, ReplayBuffer, RewardHead, TDMPC2Agent, TwoHotRewardHead
from cdred_pipeline.agent.trainer import TrainerConfig, TrainerState, train_online
from cdred_pipeline.errors import TrainingDivergedError

torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")
TASK = "gym:Pendulum-v1"


def env_fn():
    from cdred_pipeline.envs import make_env

    return make_env(TASK, seed=0)


def tiny_agent(**kw) -> TDMPC2Agent:
    return TDMPC2Agent(AgentConfig.preset("tiny", episode_length=200, plan=False, **kw), (3,), 1, device="cpu")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_online_writes_metrics_curve_checkpoint_and_is_idempotent(tmp_path):
    agent = tiny_agent()
    cfg = TrainerConfig(agent_steps=600, seed_agent_steps=200, pretrain_updates=20, utd=0.25,
                        eval_every_agent_steps=400, eval_episodes=1, checkpoint_every_agent_steps=200, seed=3)
    s = train_online(env_fn, agent, cfg, tmp_path, progress=False, extra={"preset": "tiny"})
    assert (s["agent_step"], s["env_step"], s["episodes"], s["resumed_from"]) == (600, 600, 3, None)
    assert s["update_step"] == agent.update_step == 20 + 100
    assert {p.name for p in tmp_path.iterdir()} >= {"agent.pt", "buffer.pt", "metrics.jsonl", "curve.png"}
    m = rows(tmp_path / "metrics.jsonl")
    train = [r for r in m if r["kind"] == "train"]
    evals = [r for r in m if r["kind"] == "eval"]
    assert [r["agent_step"] for r in train] == [200, 400, 600]
    assert all(r["env_step"] == r["agent_step"] * 1 for r in m) and all("update_step" in r for r in m)
    assert [r["agent_step"] for r in evals] == [400, 600] and s["final_eval_return"] == evals[-1]["eval_return_mean"]
    assert "total_loss" in train[1] and train[0]["updates_this_episode"] == 0
    ck = torch.load(tmp_path / "agent.pt", weights_only=True)
    assert ck["extra"]["task"] == TASK and ck["extra"]["preset"] == "tiny" and ck["extra"]["trainer"]["agent_step"] == 600
    # a finished run is not redone
    again = train_online(env_fn, tiny_agent(), cfg, tmp_path, progress=False)
    assert again["resumed_from"] == 600 and again["update_step"] == 120
    assert rows(tmp_path / "metrics.jsonl") == m


RUN_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent
    from cdred_pipeline.agent.trainer import TrainerConfig, train_online
    from cdred_pipeline.envs import make_env
    agent = TDMPC2Agent(AgentConfig.preset("tiny", episode_length=200, plan=False), (3,), 1, device="cpu")
    cfg = TrainerConfig(agent_steps=1600, seed_agent_steps=200, pretrain_updates=20, utd=0.5,
                        eval_every_agent_steps=0, eval_episodes=1, checkpoint_every_agent_steps=200, seed=7)
    s = train_online(lambda: make_env("gym:Pendulum-v1", seed=0), agent, cfg, sys.argv[1], progress=False)
    print("SUMMARY " + json.dumps(s))
    """
)


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["extra"]["trainer"]["agent_step"])


def test_resume_after_sigkill_continues_from_last_checkpoint(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    out = tmp_path / "run"
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = out / "agent.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.exists() and _ckpt_step(ckpt) >= 400:
                break
            if proc.poll() is not None:
                pytest.fail("training finished before it could be killed:\n" + proc.stdout.read())
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint at agent step >= 400 within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = _ckpt_step(ckpt)
    assert 400 <= killed_at < 1600
    ck = torch.load(ckpt, weights_only=True)
    updates_at_ckpt = ck["update_step"]
    # the buffer of the checkpoint's step is in buffer.pt, or in buffer-next.pt for a kill just before its rename
    saved = [torch.load(out / f, weights_only=True)["agent_step"] for f in ("buffer.pt", "buffer-next.pt") if (out / f).exists()]
    assert killed_at in saved

    res = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "without a saved replay buffer" not in res.stderr
    summary = json.loads(res.stdout.split("SUMMARY ", 1)[1])
    assert summary["resumed_from"] == killed_at and summary["agent_step"] == 1600
    # updates continue from the checkpoint's counter: 20 pretraining + 0.5 per step after seeding
    assert summary["update_step"] == 20 + (1600 - 200) // 2
    assert updates_at_ckpt == 20 + (killed_at - 200) // 2
    train_steps = [r["agent_step"] for r in rows(out / "metrics.jsonl") if r["kind"] == "train"]
    assert train_steps == list(range(200, 1601, 200)), "rows after the checkpoint must be redone exactly once"


def test_a_stop_between_agent_pt_and_the_buffer_rename_resumes_with_the_new_buffer(tmp_path):
    """A checkpoint writes buffer-next.pt, then agent.pt, then renames the buffer to buffer.pt. The files a
    stop between the last two leave (agent.pt of step N, buffer.pt of the previous checkpoint, buffer-next.pt
    of step N) resume with step N's buffer, exactly as the files a completed checkpoint leaves."""
    import shutil
    import warnings

    cfg = TrainerConfig(agent_steps=400, seed_agent_steps=200, pretrain_updates=10, utd=0.25,
                        eval_every_agent_steps=0, eval_episodes=0, checkpoint_every_agent_steps=200, seed=2)
    complete, torn = tmp_path / "complete", tmp_path / "torn"
    train_online(env_fn, tiny_agent(), cfg, complete, progress=False)
    shutil.copytree(complete, torn)
    (torn / "buffer.pt").rename(torn / "buffer-next.pt")
    older = torch.load(torn / "buffer-next.pt", weights_only=True)
    torch.save({**older, "agent_step": 200}, torn / "buffer.pt")  # what the checkpoint at step 200 left
    finished = train_online(env_fn, tiny_agent(), cfg, torn, progress=False)  # a finished run completes the rename
    assert finished["resumed_from"] == 400 and not (torn / "buffer-next.pt").exists()
    assert torch.load(torn / "buffer.pt", weights_only=True)["agent_step"] == 400
    (torn / "buffer.pt").rename(torn / "buffer-next.pt")
    torch.save({**older, "agent_step": 200}, torn / "buffer.pt")
    longer = TrainerConfig(**{**cfg.__dict__, "agent_steps": 600})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "without a saved replay buffer" refill
        results = [train_online(env_fn, tiny_agent(), longer, out, progress=False) for out in (complete, torn)]
    assert results[0]["update_step"] == results[1]["update_step"] == 10 + 100
    weights = [torch.load(out / "agent.pt", weights_only=True)["model"] for out in (complete, torn)]
    assert [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])] == []
    assert not (torn / "buffer-next.pt").exists()


def test_learning_curve_names_its_band_and_whose_return_it_plots():
    """The band is mean +- std over the evaluation's episodes, and an imitation curve says the return is
    the env's, which the learner never saw."""
    from cdred_pipeline.agent.trainer import learning_curve_figure

    rows = [{"kind": "train", "env_step": 100, "episode_return": 1.0},
            {"kind": "eval", "env_step": 100, "eval_return_mean": 2.0, "eval_return_std": 0.5, "eval_episodes": 5},
            {"kind": "eval", "env_step": 200, "eval_return_mean": 3.0, "eval_return_std": 0.4, "eval_episodes": 5}]
    ax = learning_curve_figure(rows, "dmc:cartpole-balance", {"expert return": 4.0}, env_reward_seen=False).axes[0]
    assert ax.get_ylabel() == "env return (not seen by the learner)"
    assert ax.get_title() == "dmc:cartpole-balance\n(the learner never saw the env reward)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["train episode", "eval mean", "eval \u00b1 std over 5 episodes", "expert return"]
    rl = learning_curve_figure(rows, "gym:Pendulum-v1").axes[0]  # RL on the env reward
    assert rl.get_ylabel() == "episode return" and rl.get_title() == "gym:Pendulum-v1"


class NaNAfter(TwoHotRewardHead):
    """The two-hot head whose loss turns NaN after ``n`` calls (a real divergence mid-run)."""

    def __init__(self, *args, n: int, **kw):
        super().__init__(*args, **kw)
        self.calls, self.n = 0, n

    def loss(self, x, a, env_reward, is_expert):
        self.calls += 1
        out = super().loss(x, a, env_reward, is_expert)
        return out * float("nan") if self.calls > self.n else out


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg_a = AgentConfig.preset("tiny", episode_length=200, plan=False)
    agent = TDMPC2Agent(cfg_a, (3,), 1, reward_head=NaNAfter(32, 1, mlp_dim=64, n=50), device="cpu")
    cfg = TrainerConfig(agent_steps=600, seed_agent_steps=200, pretrain_updates=20, utd=1.0,
                        eval_every_agent_steps=0, eval_episodes=0, checkpoint_every_agent_steps=200)
    # step 201 runs 20 pretraining + 1 update, then one per step: update 51 happens at agent step 231
    with pytest.raises(TrainingDivergedError, match=r"update step 51.*agent step 231; last good checkpoint: .*agent.pt \(agent step 200\)"):
        train_online(env_fn, agent, cfg, tmp_path, progress=False)
    ck = torch.load(tmp_path / "agent.pt", weights_only=True)
    assert ck["extra"]["trainer"]["agent_step"] == 200 and ck["update_step"] == 0


class RecordingHead(RewardHead):
    """A CDRED-like head (no env reward): records the is_expert masks it is trained with."""

    uses_env_reward = False

    def __init__(self, x_dim: int, action_dim: int):
        super().__init__()
        self.lin = torch.nn.Linear(x_dim + action_dim, 1)
        self.masks: list[torch.Tensor] = []

    def reward(self, x, a):
        return torch.tanh(self.lin(torch.cat([x, a], -1)))

    def loss(self, x, a, env_reward, is_expert):
        self.masks.append(is_expert.clone())
        return self.lin(torch.cat([x, a], -1)).square().mean(dim=(1, 2))


def test_expert_buffer_hook_concatenates_halves(tmp_path):
    head = RecordingHead(32, 1)
    agent = TDMPC2Agent(AgentConfig.preset("tiny", episode_length=200, plan=False, batch_size=8), (3,), 1,
                        reward_head=head, device="cpu")
    rng = np.random.default_rng(0)
    expert = ReplayBuffer.from_episodes(
        [{"obs": rng.normal(size=(51, 3)).astype(np.float32), "action": rng.uniform(-1, 1, (50, 1)).astype(np.float32),
          "reward": np.zeros(50, np.float32)} for _ in range(3)],
        obs_shape=(3,), action_dim=1,
    )
    cfg = TrainerConfig(agent_steps=300, seed_agent_steps=200, pretrain_updates=5, utd=0.1,
                        eval_every_agent_steps=0, eval_episodes=0)
    s = train_online(env_fn, agent, cfg, tmp_path, progress=False, expert_buffer=expert)
    assert s["update_step"] == 5 + 10 and len(head.masks) == 15
    assert all(m.tolist() == [False] * 8 + [True] * 8 for m in head.masks)


def test_resume_without_saved_buffer_refills_before_updating(tmp_path):
    cfg = TrainerConfig(agent_steps=400, seed_agent_steps=200, pretrain_updates=10, utd=0.25,
                        eval_every_agent_steps=0, eval_episodes=0, save_buffer=False, checkpoint_every_agent_steps=200)
    first = train_online(env_fn, tiny_agent(), cfg, tmp_path, progress=False)
    assert first["update_step"] == 10 + 50 and not (tmp_path / "buffer.pt").exists()
    # extend the same run: the buffer is gone, so 200 steps are collected by the agent before updates resume
    longer = TrainerConfig(**{**cfg.__dict__, "agent_steps": 800})
    with pytest.warns(UserWarning, match="without a saved replay buffer"):
        s = train_online(env_fn, tiny_agent(), longer, tmp_path, progress=False)
    assert s["resumed_from"] == 400 and s["agent_step"] == 800 and s["update_step"] == 60 + 50


def test_pixel_training_on_rendered_frames(tmp_path):
    """Real MuJoCo rendering: 3 stacked 64x64 RGB frames, uint8 in the buffer, conv encoder updates."""
    from cdred_pipeline.envs import make_env

    def pix_env():
        return make_env("dmc:cartpole-balance", obs="rgb", episode_length=30, seed=0)

    agent = TDMPC2Agent(AgentConfig.preset("tiny", episode_length=30, plan=False, batch_size=8), (9, 64, 64), 1,
                        device="cpu")
    cfg = TrainerConfig(agent_steps=60, seed_agent_steps=30, pretrain_updates=3, utd=0.1, eval_every_agent_steps=0,
                        eval_episodes=1)
    s = train_online(pix_env, agent, cfg, tmp_path, progress=False, extra={"obs": "rgb"})
    assert s["agent_step"] == 60 and s["env_step"] == 120 and s["update_step"] == 3 + 3
    saved = torch.load(tmp_path / "buffer.pt", weights_only=True)["state"]
    assert saved["obs"].dtype == torch.uint8 and tuple(saved["obs"].shape[1:]) == (9, 64, 64)
    loaded = TDMPC2Agent.load(tmp_path / "agent.pt", device="cpu", task="dmc:cartpole-balance", obs_shape=(9, 64, 64))
    frame = pix_env().reset(seed=0)[0]
    assert np.array_equal(loaded.act(frame, t0=True, eval_mode=True), agent.act(frame, t0=True, eval_mode=True))


def test_trainer_state_loads_a_saved_dict_and_ignores_unknown_keys():
    """A checkpoint's ``trainer`` dict (plain types) loads into the state; keys of another version are ignored
    and fields it lacks keep the fresh run's values."""
    fresh = TrainerState(next_eval=400, next_ckpt=200, updates_from=200)
    saved = {"agent_step": 600, "episode": 3, "pretrained": True, "utd_updates": 100, "elapsed_s": 1.5,
             "next_eval": 800, "next_ckpt": 800, "last_eval": {"agent_step": 600, "eval_return_mean": -1.0},
             "best_eval_return": -1.0, "eval_at_step": 600, "from_another_version": 1}
    st = fresh.updated(saved)
    assert (st.agent_step, st.episode, st.pretrained, st.next_eval, st.updates_from) == (600, 3, True, 800, 200)
    assert st.last_checkpoint_step is None and fresh.agent_step == 0
    assert TrainerState().updated(st.to_dict()) == st
