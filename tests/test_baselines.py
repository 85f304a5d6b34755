"""The baselines of ``cdred imitate --method``: IQ-MPC (inverse soft-Q critic, no learned reward) and BC.

Formulas against independent float64 computations (the inverse soft-Q terms, the gradient penalty of a
linear critic), BC fitting a fixed dataset, and runs on a real 2-demo dmc:cartpole-balance dataset with
tiny agents: the metrics both methods log at the online trainer's marks, the two-process bitwise check
and ``cdred evaluate`` on each checkpoint (RED's too), and the one-line errors of bad method options.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.agent import AgentConfig, ReplayBuffer, TDMPC2Agent  # noqa: E402
from cdred_pipeline.agent.bc import bc_loss, bc_update, eval_marks  # noqa: E402
from cdred_pipeline.agent.iq_critic import (IQConfig, IQMPCAgent, gradient_penalty,  # noqa: E402
                                            inverse_soft_q_loss, inverse_soft_q_terms)
from cdred_pipeline.agent.trainer import sample_batch  # noqa: E402
from cdred_pipeline.errors import UsageError  # noqa: E402
from cdred_pipeline.stages import evaluate as ev  # noqa: E402
from cdred_pipeline.stages import imitate as im  # noqa: E402
from cdred_pipeline.stages.common import load_agent  # noqa: E402
from cli_helpers import one_line_error, run_cli  # noqa: E402
from demo_helpers import checkpoint_demos, run_imitate_twice  # noqa: E402

torch.set_num_threads(1)
TASK, LENGTH = "dmc:cartpole-balance", 50


# ------------------------------------------------------------------------------------ formulas
def _iq_reference(q, v, y, expert, gamma, alpha, v0):
    """IQ-Learn's per-head, per-step loss written out with loops in float64."""
    E, H, N = q.shape[0], q.shape[1], q.shape[2]
    out = np.zeros((E, H))
    for k in range(E):
        for t in range(H):
            r = [q[k, t, i, 0] - y[t, i, 0] for i in range(N)]
            softq = -sum(r[i] for i in range(N) if expert[i]) / sum(expert)
            if v0 is None:
                beh = [i for i in range(N) if not expert[i]]
                value = sum(v[t, i, 0] - y[t, i, 0] for i in beh) / len(beh)
            else:
                value = (1 - gamma) * v0
            chi2 = sum(x * x for x in r) / N / (4 * alpha)
            out[k, t] = softq + value + chi2
    return out


@pytest.mark.parametrize("use_v0", [True, False], ids=["v0", "behavioural"])
def test_inverse_soft_q_loss_matches_a_float64_reference(use_v0):
    rng = np.random.default_rng(0)
    E, H, N, gamma, alpha = 3, 2, 6, 0.9, 0.5
    q, v, y = rng.normal(size=(E, H, N, 1)), rng.normal(size=(H, N, 1)), rng.normal(size=(H, N, 1))
    expert = np.array([False, False, False, True, True, True])
    v0 = float(v[0, expert, 0].mean()) if use_v0 else None
    t = {k: torch.tensor(x, dtype=torch.float32) for k, x in (("q", q), ("v", v), ("y", y))}
    terms = inverse_soft_q_terms(t["q"], t["v"], t["y"], torch.tensor(expert), gamma=gamma, alpha=alpha,
                                 v0=None if v0 is None else torch.tensor(v0, dtype=torch.float32))
    per = _iq_reference(q, v, y, expert, gamma, alpha, v0)
    got = (terms["softq"] + terms["value"] + terms["chi2"]).double().numpy()
    np.testing.assert_allclose(got, per, rtol=1e-5, atol=1e-6)
    rho = np.array([1.0, 0.5])
    loss = inverse_soft_q_loss(terms, torch.tensor(rho, dtype=torch.float32))
    assert float(loss) == pytest.approx(float((per.mean(0) * rho).sum() / H), rel=1e-5)


def test_gradient_penalty_of_a_linear_critic():
    """Q(x) = w.x + b has gradient w everywhere: the penalty is lam (|w| - 1)^2 and its gradient in w is
    2 lam (|w| - 1) w / |w|, whatever the interpolation weights."""
    torch.manual_seed(0)
    w = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    expert, behav = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    u = torch.rand(2, 5, 1, dtype=torch.float64)
    lam = 2.5
    pen = gradient_penalty(lambda x: x @ w + b, expert, behav, u, lam)
    norm = float(w.detach().norm())
    assert pen.shape == (2,)
    np.testing.assert_allclose(pen.detach().numpy(), lam * (norm - 1) ** 2, rtol=1e-12)
    pen.sum().backward()
    expected = 2 * 2 * lam * (norm - 1) * w.detach().numpy() / norm  # two rows of the leading dim
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-10)


def test_iq_presets_hold_the_authors_values():
    """tdmpc2/config.yaml (use_v0 on, gradient penalty off) and iq.py (alpha 0.5) of the authors' code."""
    for name in ("paper", "small", "tiny"):
        assert IQConfig.preset(name) == IQConfig(alpha=0.5, use_v0=True, grad_pen=0.0)
    with pytest.raises(UsageError, match="unknown IQ preset"):
        IQConfig.preset("huge")
    with pytest.raises(UsageError):
        IQConfig(alpha=0.0)


def _buffer(rng, n_eps, obs_dim, act_dim, seed, act_fn=None):
    buf = ReplayBuffer(n_eps * 41, (obs_dim,), act_dim, "cpu", seed=seed)
    for _ in range(n_eps):
        obs = rng.normal(size=(41, obs_dim)).astype(np.float32)
        act = act_fn(obs[:-1]) if act_fn else rng.uniform(-1, 1, (40, act_dim)).astype(np.float32)
        buf.add_episode(obs, act, np.zeros(40, np.float32))
    return buf


def test_bc_drives_the_action_error_below_a_bound():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(4, 2)).astype(np.float32)
    buf = _buffer(rng, 4, 4, 2, seed=3, act_fn=lambda o: (0.8 * np.tanh(o @ mix)).astype(np.float32))
    agent = TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=40, lr=1e-3), (4,), 2, device="cpu")
    every = buf.sample(160, 1)
    with torch.no_grad():
        before = float(bc_loss(agent, every["obs"][0], every["action"][0]))
    for _ in range(400):
        bc_update(agent, buf.sample(32, 1))
    with torch.no_grad():
        after = float(bc_loss(agent, every["obs"][0], every["action"][0]))
    assert agent.update_step == 400
    assert after < 0.02 and after < before / 5, (before, after)


def test_bc_evaluation_marks_are_the_online_trainers():
    assert eval_marks(80, 50, 40) == [50, 80]
    assert eval_marks(200, 50, 100) == [100, 200]
    assert eval_marks(120, 50, 1000) == [120]


def test_iqmpc_agent_updates_plans_and_reloads_as_itself(tmp_path):
    rng = np.random.default_rng(2)
    cfg = AgentConfig.preset("tiny", batch_size=8, episode_length=40, plan=True)
    agent = IQMPCAgent(cfg, (4,), 2, device="cpu", iq=IQConfig(grad_pen=1.0, use_v0=False))
    behav, expert = _buffer(rng, 1, 4, 2, seed=1), _buffer(rng, 1, 4, 2, seed=2)
    for _ in range(3):
        info = agent.update(sample_batch(behav, 8, cfg.horizon, expert))
    assert all(math.isfinite(v) for v in info.values()) and info["reward_loss"] == 0.0
    assert set(agent.last_loss_terms) == {"softq", "value", "chi2", "grad_pen"}
    action = agent.act(np.zeros(4, np.float32), t0=True, eval_mode=True)  # MPPI on the recovered reward
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)
    agent.save(tmp_path / "agent.pt", extra={"task": "x"})
    again = TDMPC2Agent.load(tmp_path / "agent.pt", device="cpu")
    assert type(again) is IQMPCAgent
    mine, theirs = agent.model.state_dict(), again.model.state_dict()
    assert [k for k in mine if not torch.equal(mine[k], theirs[k])] == []


# ------------------------------------------------------------------------------------ stage runs
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 2-demo cartpole dataset (50 agent steps each) collected with a tiny agent checkpoint."""
    return checkpoint_demos(tmp_path_factory.mktemp("baselines"), TASK, LENGTH)


def _tiny(**kw) -> im.ImitateConfig:
    """test_imitate's state run: 80 agent steps, evaluations after the first episode and at the end."""
    base = dict(env_steps=160, preset="tiny", seed_agent_steps=40, eval_every=80, eval_episodes=1, device="cpu")
    return im.ImitateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(data):
    return {m: im.run(_tiny(method=m), str(data["path"]), data["store"], progress=False) for m in ("red", "iqmpc", "bc")}


def _evals(art) -> list[dict]:
    rows = [json.loads(line) for line in (art.path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "eval"]


@pytest.mark.parametrize("method", ["iqmpc", "bc"])
def test_method_run_logs_at_the_online_marks(runs, method):
    art = runs[method]
    assert art.complete and (art.path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    evals = _evals(art)
    # the cdred run of the same settings (tests/test_imitate.py) evaluates here with these update counts
    assert [(r["env_step"], r["agent_step"], r["update_step"]) for r in evals] == [(100, 50, 0), (160, 80, 80)]
    assert all(math.isfinite(r["eval_return_mean"]) for r in evals)
    assert art.manifest["headline"]["env_steps"] == 160
    if method == "iqmpc":
        keys = ("diag_reward_expert", "diag_reward_random", "diag_reward_current", "iq_softq", "iq_chi2")
        assert all(math.isfinite(evals[-1][k]) for k in keys), evals[-1]
    else:
        assert evals[0]["bc_loss"] is None and math.isfinite(evals[-1]["bc_loss"])


@pytest.mark.parametrize("method", ["red", "iqmpc", "bc"])
def test_cdred_evaluate_loads_the_checkpoint(runs, data, method):
    agent, extra = load_agent(runs[method].path / "agent.pt", device="cpu")
    assert type(agent) is (IQMPCAgent if method == "iqmpc" else TDMPC2Agent) and extra["method"] == method
    art = ev.run(ev.EvalConfig(episodes=1, device="cpu"), runs[method].key, data["store"], progress=False)
    rep = json.loads((art.path / "report.json").read_text())
    assert rep["task"] == TASK and rep["rows"][0]["length"] == LENGTH


def test_methods_have_their_own_cache_keys(runs):
    assert runs["iqmpc"].key != runs["bc"].key
    assert im.ImitateConfig(reward="red").key_config() == im.ImitateConfig(method="red").key_config()
    assert "method" not in im.ImitateConfig().key_config()
    assert im.ImitateConfig(method="iqmpc").key_config()["method"] == "iqmpc"


@pytest.mark.parametrize("method", ["red", "iqmpc", "bc"])
def test_same_seed_in_two_processes_gives_the_same_run(data, tmp_path, method):
    args = ["imitate", str(data["path"]), "--method", method, "--preset", "tiny", "--steps", "120",
            "--seed-steps", "10", "--eval-every", "120", "--eval-episodes", "1", "--seed", "3", "--device", "cpu"]
    (wa, ra), (wb, rb) = run_imitate_twice(run_cli, tmp_path, args)
    assert ra == rb and any(r.get("update_step") for r in ra)
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


def test_bad_method_options_are_one_line_errors(data, tmp_path):
    res = run_cli(tmp_path / "wd", "imitate", str(data["path"]), "--method", "gail")
    assert res.returncode == 2
    assert "--method 'gail': choose one of cdred, red, iqmpc, bc" in one_line_error(res)
    res = run_cli(tmp_path / "wd", "imitate", str(data["path"]), "--method", "bc", "--tremble", "0.1")
    assert res.returncode == 2 and "BC never acts while it trains" in one_line_error(res)
    assert not (tmp_path / "wd" / im.STAGE).exists()
    with pytest.raises(UsageError, match="--zeta"):
        im.ImitateConfig(method="iqmpc", zeta=0.5)
    with pytest.raises(UsageError, match="--reward-init"):
        im.ImitateConfig(method="bc", reward_init="rnd")
    with pytest.raises(UsageError, match="--sigma"):
        im.ImitateConfig(method="iqmpc", sigma=5.0)
    with pytest.raises(UsageError, match="--plan"):
        im.ImitateConfig(method="bc", plan=True)


def test_sweep_registers_both_baselines():
    from cdred_pipeline.stages import sweep

    for name in ("iqmpc", "bc"):
        cfg = dataclasses.replace(im.ImitateConfig(plan=True), **dict(sweep.method_spec(name).imitate))
        assert cfg.method == name
