"""CUDA-graph update and plan against the eager code on the same GPU. Skipped without CUDA (CI has
none); run on a GPU machine with `pytest tests/test_cuda_graphs.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdred_pipeline.agent import AgentConfig, ReplayBuffer, TDMPC2Agent
from cdred_pipeline.agent.cuda_graphs import graphs_available
from cdred_pipeline.errors import UsageError

cuda = pytest.mark.skipif(not graphs_available(torch.device("cuda")), reason="needs a CUDA device")


def test_cuda_graphs_on_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="cuda_graphs needs a CUDA device"):
        TDMPC2Agent(AgentConfig.preset("tiny"), (3,), 1, device="cpu", cuda_graphs=True)
    assert TDMPC2Agent(AgentConfig.preset("tiny"), (3,), 1, device="cpu").cuda_graphs is False


def _buffer(device: torch.device, obs_dim: int = 5, action_dim: int = 2) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(4 * 101, (obs_dim,), action_dim, device, seed=0)
    for _ in range(4):
        buf.add_episode(rng.normal(size=(101, obs_dim)).astype(np.float32),
                        rng.uniform(-1, 1, (100, action_dim)).astype(np.float32), rng.normal(size=100).astype(np.float32))
    return buf


@cuda
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_graphed_updates_match_eager_updates(preset):
    dev = torch.device("cuda")
    cfg = AgentConfig.preset(preset, batch_size=64)
    batches = [_buffer(dev).sample(cfg.batch_size, cfg.horizon) for _ in range(8)]
    runs = {}
    for graphs in (False, True):
        torch.cuda.manual_seed(123)  # dropout / policy samples / Q heads draw from the default CUDA generator
        agent = TDMPC2Agent(cfg, (5,), 2, device=dev, cuda_graphs=graphs)
        runs[graphs] = ([agent.update(b) for b in batches], [p.detach().clone() for p in agent.model.parameters()])
        if graphs:
            assert agent._update_graph is not None and agent._update_graph[1].graph is not None  # replayed, not eager
    for m_eager, m_graph in zip(runs[False][0], runs[True][0]):
        for k in ("total_loss", "consistency_loss", "value_loss", "pi_loss", "grad_norm"):
            assert m_graph[k] == pytest.approx(m_eager[k], rel=1e-3, abs=1e-5), k
    for a, b in zip(runs[False][1], runs[True][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@cuda
def test_graphed_plan_matches_eager_plan_and_reloads():
    dev = torch.device("cuda")
    cfg = AgentConfig.preset("tiny", plan=True)
    obs = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    actions = {}
    for graphs in (False, True):
        agent = TDMPC2Agent(cfg, (5,), 2, device=dev, cuda_graphs=graphs)
        actions[graphs] = np.stack([agent.act(o, t0=(i == 0), eval_mode=(i % 2 == 0)) for i, o in enumerate(obs)])
    assert np.all(np.abs(actions[True]) <= 1)
    np.testing.assert_allclose(actions[True], actions[False], rtol=1e-4, atol=1e-5)


@cuda
def test_act_batch_on_a_graphed_agent_matches_the_eager_agent():
    """Rows on the agent's own generator plan through the graph; rows with their own generators plan
    eagerly (a graph holds one generator); both match the eager agent."""
    dev = torch.device("cuda")
    cfg = AgentConfig.preset("tiny", plan=True)
    obs = np.random.default_rng(2).normal(size=(4, 3, 5)).astype(np.float32)  # 4 steps of 3 episodes
    out = {}
    for graphs in (False, True):
        agent = TDMPC2Agent(cfg, (5,), 2, device=dev, cuda_graphs=graphs)
        shared = [agent.new_act_state() for _ in range(3)]
        own = [agent.new_act_state(10 + r) for r in range(3)]
        out[graphs] = (np.stack([agent.act_batch(obs[t], shared) for t in range(4)]),
                       np.stack([agent.act_batch(obs[t], own) for t in range(4)]))
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-6, atol=1e-7)


@cuda
def test_graphed_agent_checkpoint_reload_gives_identical_actions(tmp_path):
    dev = torch.device("cuda")
    cfg = AgentConfig.preset("tiny", plan=True, batch_size=32)
    agent = TDMPC2Agent(cfg, (5,), 2, device=dev)
    assert agent.cuda_graphs  # auto: on for CUDA
    buf = _buffer(dev)
    for _ in range(5):
        agent.update(buf.sample(cfg.batch_size, cfg.horizon))
    o = np.zeros(5, np.float32)
    for i in range(4):
        agent.act(o, t0=(i == 0))
    agent.save(tmp_path / "a.pt")
    a1 = TDMPC2Agent.load(tmp_path / "a.pt", device=dev)
    a2 = TDMPC2Agent.load(tmp_path / "a.pt", device=dev)
    x1 = [a1.act(o, eval_mode=True) for _ in range(4)]
    x2 = [a2.act(o, eval_mode=True) for _ in range(4)]
    assert all(np.array_equal(p, q) for p, q in zip(x1, x2))
    a1.update(buf.sample(cfg.batch_size, cfg.horizon))  # the update graph is rebuilt after a load
