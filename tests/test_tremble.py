"""Tremble wrapper (paper App. D.4, docs/design.md §2) on real envs: frequency, p=0/p=1, seeding."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import math

import numpy as np
import pytest

from cdred_pipeline.envs import CdredEnv, TrembleWrapper, make_env
from cdred_pipeline.errors import UsageError


def _run(env, n_steps: int, seed0: int = 0, action_seed: int = 0):
    """Step ``n_steps`` agent steps over consecutive seeded episodes; return per-step records."""
    rng = np.random.default_rng(action_seed)
    recs = {"trembled": [], "executed": [], "policy": [], "obs": [], "reward": []}
    ep = seed0
    env.reset(seed=ep)
    for _ in range(n_steps):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        o, r, term, trunc, info = env.step(a)
        recs["trembled"].append(info["trembled"])
        recs["executed"].append(info["executed_action"])
        recs["policy"].append(a)
        recs["obs"].append(o)
        recs["reward"].append(r)
        if term or trunc:
            ep += 1
            env.reset(seed=ep)
    return {k: np.array(v) for k, v in recs.items()}


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_tremble_frequency_within_3_sigma(p):
    n = 10_000
    rec = _run(make_env("gym:Pendulum-v1", tremble=p), n)
    k = int(rec["trembled"].sum())
    assert abs(k - n * p) <= 3 * math.sqrt(n * p * (1 - p)), (k, n * p)
    # trembled steps ran a fresh uniform action, the others the policy's
    t = rec["trembled"]
    np.testing.assert_array_equal(rec["executed"][~t], rec["policy"][~t])
    assert not np.any(np.all(rec["executed"][t] == rec["policy"][t], axis=1))


def test_p0_identical_to_no_wrapper():
    plain = make_env("dmc:cartpole-swingup", episode_length=50)
    assert isinstance(plain, CdredEnv)  # tremble=0 adds no wrapper
    wrapped = TrembleWrapper(make_env("dmc:cartpole-swingup", episode_length=50), 0.0)
    a, b = _run(plain, 120), _run(wrapped, 120)
    for key in ("obs", "reward", "executed"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not b["trembled"].any()


def test_p1_executes_only_uniform_random_actions():
    rec = _run(make_env("gym:Pendulum-v1", tremble=1.0), 2000)
    assert rec["trembled"].all()
    ex = rec["executed"].ravel()
    assert ex.min() >= -1 and ex.max() <= 1
    assert abs(ex.mean()) < 0.05 and abs(ex.var() - 1 / 3) < 0.03  # U(-1, 1): mean 0, variance 1/3


def test_same_seed_same_trembles_and_independent_of_global_rng():
    np.random.seed(1)
    a = _run(make_env("gym:Pendulum-v1", tremble=0.3), 600, seed0=10)
    np.random.seed(2)  # the wrapper must not read the global RNG
    b = _run(make_env("gym:Pendulum-v1", tremble=0.3, seed=77), 600, seed0=10)
    c = _run(make_env("gym:Pendulum-v1", tremble=0.3), 600, seed0=20)
    np.testing.assert_array_equal(a["trembled"], b["trembled"])
    np.testing.assert_array_equal(a["executed"], b["executed"])
    np.testing.assert_array_equal(a["obs"], b["obs"])
    assert not np.array_equal(a["trembled"], c["trembled"])


def test_executed_actions_replay_the_trembled_trajectory():
    """What a dataset stores (executed actions) reproduces the episode without the wrapper."""
    noisy = make_env("dmc:cheetah-run", tremble=0.5, episode_length=40)
    rec = _run(noisy, 40, seed0=3)
    plain = make_env("dmc:cheetah-run", episode_length=40)
    plain.reset(seed=3)
    obs = [plain.step(a)[0] for a in rec["executed"]]
    np.testing.assert_array_equal(np.array(obs), rec["obs"])


def test_wrapper_forwards_env_extras():
    env = make_env("dmc:cheetah-run", tremble=0.2, seed=0)
    assert isinstance(env, TrembleWrapper) and env.spec_info.task == "dmc:cheetah-run"
    env.reset(seed=5)
    assert env.episode_seed == 5
    state = env.get_physics_state()
    env.step(np.zeros(6))
    env.set_physics_state(state)
    np.testing.assert_array_equal(env.get_physics_state(), state)
    assert env.render_frame(32).shape == (32, 32, 3)


@pytest.mark.parametrize("p", [-0.01, 1.01, float("nan"), "often"])
def test_p_outside_unit_interval_is_usage_error(p):
    with pytest.raises(UsageError):
        make_env("gym:Pendulum-v1", tremble=p)
    with pytest.raises(UsageError):
        TrembleWrapper(make_env("gym:Pendulum-v1"), p)
