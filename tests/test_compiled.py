"""The fast paths of the update: closed-form Mish, and the torch.compile'd losses of CDRED and IQ-MPC
against eager PyTorch (real agents, real kernels built by inductor's C++ backend; no mocks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdred_pipeline.agent import AgentConfig, ReplayBuffer, TDMPC2Agent
from cdred_pipeline.agent.compiled import compile_unavailable, resolve_compile
from cdred_pipeline.agent.iq_critic import IQConfig, IQMPCAgent
from cdred_pipeline.agent.layers import mish
from cdred_pipeline.agent.trainer import sample_batch
from cdred_pipeline.errors import UsageError
from cdred_pipeline.reward import CDREDConfig, CDREDRewardHead

torch.set_num_threads(1)
CPU = torch.device("cpu")
# Compiled and eager updates draw the same random numbers (fallback_random) and differ by float
# rounding only: over 10 updates every metric agrees to this relative tolerance (measured: <= 1e-5).
RTOL = 1e-4


def test_mish_equals_torch_mish_in_value_and_gradient():
    x = torch.cat([torch.linspace(-40, 40, 20001), torch.tensor([-1e4, -88.0, 0.0, 88.0, 1e4])]).requires_grad_()
    ours, ref = mish(x), F.mish(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(g_ours).all()


def _buffers() -> list[ReplayBuffer]:
    """A behavioural and an expert buffer of random episodes (5-d observations, 2-d actions)."""
    rng = np.random.default_rng(0)
    bufs = []
    for b in range(2):
        buf = ReplayBuffer(4 * 51, (5,), 2, "cpu", seed=b)
        for _ in range(4):
            buf.add_episode(rng.normal(size=(51, 5)).astype(np.float32), rng.uniform(-1, 1, (50, 2)).astype(np.float32),
                            rng.normal(size=50).astype(np.float32))
        bufs.append(buf)
    return bufs


def _agent(compile_: bool) -> tuple[TDMPC2Agent, list[ReplayBuffer]]:
    """A tiny CDRED imitation agent and a behavioural and an expert buffer of random episodes."""
    cfg = AgentConfig.preset("tiny", compile=compile_, episode_length=50, plan=False)
    head = CDREDRewardHead(cfg.latent_dim, 2, CDREDConfig.preset("tiny"))
    return TDMPC2Agent(cfg, (5,), 2, reward_head=head, device="cpu"), _buffers()


def _updates(compile_: bool, n: int = 10) -> list[dict[str, float]]:
    agent, (behavioural, expert) = _agent(compile_)
    cfg = agent.cfg
    torch.manual_seed(0)  # dropout draws from the global generator
    return [agent.update(sample_batch(behavioural, cfg.batch_size, cfg.horizon, expert, agent.device)) for _ in range(n)]


@pytest.mark.skipif(bool(compile_unavailable(CPU)), reason=compile_unavailable(CPU) or "compiler present")
def test_compiled_updates_match_eager_updates():
    eager, compiled = _updates(False), _updates(True)
    for step, (e, c) in enumerate(zip(eager, compiled)):
        for k in e:
            assert math.isclose(c[k], e[k], rel_tol=RTOL, abs_tol=1e-6), (step, k, e[k], c[k])
    assert eager[0]["total_loss"] != eager[-1]["total_loss"]  # the agent did learn something in between


def _iq_updates(compile_: bool, n: int = 3) -> tuple[list[dict[str, float]], dict[str, float]]:
    """``n`` updates of a tiny IQ-MPC agent with the gradient penalty on (batch 2 x 16): the logged
    metrics and the last update's loss terms."""
    cfg = AgentConfig.preset("tiny", compile=compile_, episode_length=50, plan=False, batch_size=16)
    agent = IQMPCAgent(cfg, (5,), 2, device="cpu", iq=IQConfig(grad_pen=1.0))
    behavioural, expert = _buffers()
    torch.manual_seed(0)  # dropout, the penalty's interpolation weights and the heads draw from it
    infos = [agent.update(sample_batch(behavioural, 16, cfg.horizon, expert, agent.device)) for _ in range(n)]
    return infos, {k: float(v) for k, v in agent.last_loss_terms.items()}


@pytest.mark.skipif(bool(compile_unavailable(CPU)), reason=compile_unavailable(CPU) or "compiler present")
def test_compiled_iqmpc_updates_match_eager_updates_with_the_gradient_penalty():
    """IQ-MPC's critic terms and policy loss compiled, its gradient penalty (a double backward) eager. Run
    after the CDRED test in one process, its policy loss (code shared by every agent) meets a second batch
    shape: compiled losses are static, so it recompiles instead of tracing symbolic sizes."""
    (eager, eager_terms), (compiled, compiled_terms) = _iq_updates(False), _iq_updates(True)
    for step, (e, c) in enumerate(zip(eager, compiled)):
        for k in e:
            assert math.isclose(c[k], e[k], rel_tol=RTOL, abs_tol=1e-6), (step, k, e[k], c[k])
    assert set(eager_terms) == set(compiled_terms) == {"softq", "value", "chi2", "grad_pen"}
    for k, v in eager_terms.items():
        assert math.isclose(compiled_terms[k], v, rel_tol=RTOL, abs_tol=1e-6), (k, v, compiled_terms[k])
    assert eager_terms["grad_pen"] > 0 and eager[0]["total_loss"] != eager[-1]["total_loss"]


def test_compile_without_a_toolchain_falls_back_or_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    why = compile_unavailable(CPU)
    assert "C++ compiler" in why
    assert resolve_compile(None, True, CPU) == (False, f"running eagerly: {why}")  # a preset's default: eager
    assert resolve_compile(False, True, CPU) == (False, "")
    assert resolve_compile(None, False, CPU) == (False, "")
    assert resolve_compile(None, True, torch.device("cuda")) == (False, "")  # CUDA graphs by default there
    with pytest.raises(UsageError, match="--no-compile"):  # asked for explicitly: a one-line error
        resolve_compile(True, False, CPU)
    with pytest.raises(UsageError, match="C\\+\\+ compiler"):
        TDMPC2Agent(AgentConfig.preset("tiny", compile=True), (5,), 2, device="cpu")


def test_compile_is_a_runtime_choice_not_part_of_the_key():
    on, off = AgentConfig.preset("small"), AgentConfig.preset("small", compile=False)
    assert on.compile and not off.compile
    assert on.key_dict() == off.key_dict() and "compile" not in on.key_dict()
