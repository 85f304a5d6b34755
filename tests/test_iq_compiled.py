"""IQ-MPC's compiled update against its eager update: the critic terms and the policy loss compiled by
inductor's C++ backend, the gradient penalty (a double backward) eager, on a real tiny agent; no mocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cdred_pipeline.agent import AgentConfig, ReplayBuffer
from cdred_pipeline.agent.compiled import compile_unavailable
from cdred_pipeline.agent.iq_critic import IQConfig, IQMPCAgent
from cdred_pipeline.agent.trainer import sample_batch

torch.set_num_threads(1)
CPU = torch.device("cpu")
RTOL = 1e-4  # tests/test_compiled.py's: compiled and eager draw the same numbers and differ by rounding only


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


def _updates(compile_: bool, n: int = 3) -> tuple[list[dict[str, float]], dict[str, float]]:
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
    (eager, eager_terms), (compiled, compiled_terms) = _updates(False), _updates(True)
    for step, (e, c) in enumerate(zip(eager, compiled)):
        for k in e:
            assert math.isclose(c[k], e[k], rel_tol=RTOL, abs_tol=1e-6), (step, k, e[k], c[k])
    assert set(eager_terms) == set(compiled_terms) == {"softq", "value", "chi2", "grad_pen"}
    for k, v in eager_terms.items():
        assert math.isclose(compiled_terms[k], v, rel_tol=RTOL, abs_tol=1e-6), (k, v, compiled_terms[k])
    assert eager_terms["grad_pen"] > 0 and eager[0]["total_loss"] != eager[-1]["total_loss"]
