"""Unit tests of the TD-MPC2-style agent (tiny preset, CPU, real tensors; no mocks)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdred_pipeline.agent import AgentConfig, PRESETS, ReplayBuffer, RewardHead, TDMPC2Agent, TwoHotRewardHead
from cdred_pipeline.agent.layers import ConvEncoder, EnsembleMLP, NormedLinear, RunningScale, ShiftAug, SimNorm
from cdred_pipeline.agent.ops import soft_ce, symexp, symlog, two_hot, two_hot_decode_probs, two_hot_inv
from cdred_pipeline.agent.planner import estimate_value, mppi_plan
from cdred_pipeline.agent.trainer import sample_batch
from cdred_pipeline.errors import CdredError, CheckpointError, TrainingDivergedError, UsageError

torch.set_num_threads(1)


def tiny(**kw) -> AgentConfig:
    return AgentConfig.preset("tiny", **kw)


def fill_buffer(obs_dim=3, action_dim=1, episodes=4, T=30, capacity=1000, seed=0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(capacity, (obs_dim,), action_dim, "cpu", seed=seed)
    for _ in range(episodes):
        buf.add_episode(rng.normal(size=(T + 1, obs_dim)).astype(np.float32),
                        rng.uniform(-1, 1, (T, action_dim)).astype(np.float32), rng.normal(size=T).astype(np.float32))
    return buf


class ActionReward(RewardHead):
    """Hand-built reward: r(x, a) = sum(a) (rewards a > 0); no parameters, zero loss."""

    uses_env_reward = False

    def __init__(self) -> None:
        super().__init__()
        self.seen_is_expert = None
        self.seen_x_shape = None

    def reward(self, x, a):
        return a.sum(-1, keepdim=True)

    def loss(self, x, a, env_reward, is_expert):
        self.seen_is_expert, self.seen_x_shape = is_expert.clone(), tuple(x.shape)
        return (x * 0).sum(dim=(1, 2))


# ---------------------------------------------------------------------------------------- math
def test_two_hot_round_trip_and_properties():
    y = torch.cat([torch.linspace(-2e4, 2e4, 1001), torch.tensor([0.0, 1e-4, -3.5, 7.25, 123.0])]).unsqueeze(-1)
    p = two_hot(y, 101, -10.0, 10.0)
    assert p.shape == (y.shape[0], 101)
    assert torch.all(p >= 0) and torch.allclose(p.sum(-1), torch.ones(len(y)))
    assert int((p > 0).sum(-1).max()) <= 2
    back = two_hot_decode_probs(p, -10.0, 10.0)
    assert torch.allclose(back, y, rtol=1e-4, atol=1e-4)
    # logits = log(probs) decode to the same value
    assert torch.allclose(two_hot_inv(torch.log(p.clamp_min(1e-30)), -10.0, 10.0), y, rtol=1e-3, atol=1e-3)
    # outside the symlog range: clamped to the edge bins
    big = two_hot(torch.tensor([[1e9], [-1e9]]), 101, -10.0, 10.0)
    assert big[0, -1] == 1 and big[1, 0] == 1
    assert torch.allclose(symexp(symlog(y)), y, rtol=1e-5)
    nan_row = two_hot(torch.tensor([[float("nan")], [1.0]]), 101, -10.0, 10.0)
    assert torch.isnan(nan_row[0]).all() and torch.isfinite(nan_row[1]).all()


def test_soft_ce_is_minimised_by_the_two_hot_target():
    y = torch.tensor([[3.3], [-0.2]])
    target_logits = torch.log(two_hot(y, 101, -10, 10).clamp_min(1e-12))
    other = torch.zeros(2, 101)
    assert torch.all(soft_ce(target_logits, y, -10, 10) < soft_ce(other, y, -10, 10))
    assert soft_ce(other, y, -10, 10).shape == (2, 1)


# ---------------------------------------------------------------------------------------- layers
def test_simnorm_groups_sum_to_one():
    x = torch.randn(4, 7, 64) * 5
    out = SimNorm(8)(x)
    assert out.shape == x.shape
    assert torch.allclose(out.view(4, 7, 8, 8).sum(-1), torch.ones(4, 7, 8), atol=1e-6)
    agent = TDMPC2Agent(tiny(), (5,), 2, device="cpu")
    z = agent.model.encode(torch.randn(10, 5))
    zn = agent.model.next(z, torch.rand(10, 2) * 2 - 1)
    for t in (z, zn):
        assert torch.allclose(t.view(10, -1, 8).sum(-1), torch.ones(10, agent.cfg.latent_dim // 8), atol=1e-5)


def test_normed_linear_order_and_dropout():
    layer = NormedLinear(6, 4, dropout=0.5)
    x = torch.randn(3, 6)
    layer.eval()
    ref = F.mish(F.layer_norm(F.linear(x, layer.weight, layer.bias), (4,), layer.ln.weight, layer.ln.bias))
    assert torch.allclose(layer(x), ref)
    layer.train()
    assert not torch.allclose(layer(x.repeat(50, 1)), ref.repeat(50, 1))


def test_q_ensemble_shapes_and_vectorised_equals_per_head_reference():
    cfg = tiny()
    agent = TDMPC2Agent(cfg, (5,), 2, device="cpu")
    m = agent.model
    z, a = torch.rand(3, 7, cfg.latent_dim), torch.rand(3, 7, 2) * 2 - 1
    assert m.Q(z, a, "all").shape == (cfg.num_q, 3, 7, cfg.num_bins)
    assert m.Q(z, a, "min").shape == (3, 7, 1) and m.Q(z, a, "avg", target=True).shape == (3, 7, 1)
    # zero-initialised output layer: every head predicts exactly 0 at init
    assert torch.allclose(m.Q(z, a, "avg"), torch.zeros(3, 7, 1), atol=1e-5)
    # batched heads == a per-head loop over the same weights
    ens = EnsembleMLP(4, 5, [8, 8], 3, dropout=0.0)
    with torch.no_grad():
        for p in ens.parameters():
            p.normal_()
    x = torch.randn(6, 5)
    out = ens(x)
    for e in range(4):
        h = x
        for i in range(3):
            h = h @ getattr(ens, f"w{i}")[e] + getattr(ens, f"b{i}")[e]
            if i < 2:
                h = F.mish(F.layer_norm(h, (8,)) * getattr(ens, f"ln_w{i}")[e] + getattr(ens, f"ln_b{i}")[e])
        assert torch.allclose(out[e], h, atol=1e-5)
    assert torch.allclose(ens(x, heads=torch.tensor([2, 0])), out[[2, 0]])
    # detach: gradient reaches the input, not the parameters
    xi = x.clone().requires_grad_(True)
    ens(xi, detach=True).sum().backward()
    assert xi.grad is not None and all(p.grad is None for p in ens.parameters())
    # target copy is separate, frozen, and starts equal
    assert all(not p.requires_grad for p in m._target_Qs.parameters())
    assert all(torch.equal(p, q) for p, q in zip(m._Qs.parameters(), m._target_Qs.parameters()))


def test_pixel_encoder_shapes_and_shift_aug():
    enc = ConvEncoder((9, 64, 64), 32, 512, 8, shift_pad=3)
    assert isinstance(enc.proj, torch.nn.Identity)  # 32 * 4 * 4 = 512: the paper latent, no projection
    obs = torch.randint(0, 256, (2, 3, 9, 64, 64), dtype=torch.uint8)
    z = enc(obs)
    assert z.shape == (2, 3, 512) and torch.allclose(z.view(2, 3, 64, 8).sum(-1), torch.ones(2, 3, 64), atol=1e-5)
    x = torch.rand(4, 9, 64, 64)
    assert torch.equal(ShiftAug(0)(x), x)
    shifted = ShiftAug(3)(x)
    assert shifted.shape == x.shape
    small = ConvEncoder((9, 64, 64), 8, 32, 8, shift_pad=3)
    assert small(obs).shape == (2, 3, 32)


def test_shift_aug_is_replicate_pad_and_crop_in_any_dtype():
    """Each image is the replicate-padded image cropped at its own integer offset (DrQ), the same
    values for uint8 frames as for their float copies."""
    frames = torch.randint(0, 256, (6, 9, 16, 16), dtype=torch.uint8)
    torch.manual_seed(3)
    out = ShiftAug(3)(frames)
    torch.manual_seed(3)
    sx, sy = torch.randint(0, 7, (6, 1, 1)), torch.randint(0, 7, (6, 1, 1))
    padded = torch.nn.functional.pad(frames.float(), (3,) * 4, mode="replicate")
    crops = torch.stack([padded[i, :, sy[i, 0, 0]:sy[i, 0, 0] + 16, sx[i, 0, 0]:sx[i, 0, 0] + 16] for i in range(6)])
    assert out.dtype == torch.uint8 and torch.equal(out.float(), crops)
    assert not torch.equal(out, frames)  # some image moved (6 draws of 49 offsets)
    torch.manual_seed(3)
    assert torch.equal(ShiftAug(3)(frames.float()), crops)


def test_running_scale_tracks_percentile_range():
    s = RunningScale(tau=0.5)
    s.update(torch.linspace(0, 100, 1001).unsqueeze(-1))
    assert math.isclose(float(s.value), 0.5 * 1 + 0.5 * 90.0, rel_tol=1e-4)
    s2 = RunningScale(tau=1.0)
    s2.update(torch.zeros(10, 1))
    assert float(s2.value) == 1.0  # clamped at 1


def test_policy_prior_bounds_and_entropy_scaling():
    agent = TDMPC2Agent(tiny(), (5,), 3, device="cpu")
    z = agent.model.encode(torch.randn(64, 5))
    a, info = agent.model.pi(z)
    assert a.shape == (64, 3) and torch.all(a.abs() <= 1) and torch.all(info["mean"].abs() <= 1)
    ls = info["log_std"]
    assert torch.all(ls >= agent.cfg.log_std_min) and torch.all(ls <= agent.cfg.log_std_max)
    assert info["scaled_entropy"].shape == (64, 1)


# ---------------------------------------------------------------------------------------- config
def test_presets_and_config_validation():
    assert set(PRESETS) >= {"paper", "small", "tiny"}
    p = AgentConfig.preset("paper")
    assert (p.latent_dim, p.mlp_dim, p.enc_dim, p.num_q, p.num_bins) == (512, 512, 256, 5, 101)
    assert (p.num_samples, p.num_pi_trajs, p.num_elites, p.iterations, p.temperature) == (512, 24, 64, 6, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lr = 1.0  # type: ignore[misc]
    with pytest.raises(UsageError, match="unknown agent preset"):
        AgentConfig.preset("huge")
    with pytest.raises(UsageError, match="unknown AgentConfig field"):
        AgentConfig.preset("tiny", latentdim=3)
    with pytest.raises(UsageError, match="cannot plan"):
        AgentConfig.preset("tiny", reward_space="obs", plan=True)
    assert AgentConfig.preset("tiny", episode_length=500).gamma == pytest.approx(0.99)
    assert AgentConfig.preset("tiny", episode_length=100).gamma == pytest.approx(0.95)
    assert AgentConfig.preset("tiny", episode_length=5000).gamma == pytest.approx(0.995)
    assert AgentConfig.preset("tiny", discount=0.9).gamma == 0.9
    with pytest.raises(UsageError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise UsageError("CUDA is not available (skipped on GPU machines)")
        TDMPC2Agent(tiny(), (3,), 1, device="cuda")


def test_paper_preset_parameter_count():
    """The TD-MPC2 part of the paper model is ~5M parameters (App. A; TD-MPC2's 5M model)."""
    agent = TDMPC2Agent(AgentConfig.preset("paper"), (17,), 6, device="cpu")  # dmc:cheetah-run dims
    assert 4.5e6 < agent.num_params() < 5.5e6


# ---------------------------------------------------------------------------------------- buffer
def test_buffer_never_crosses_episode_ends_and_is_fifo():
    H = 3
    buf = ReplayBuffer(100, (2,), 1, "cpu", seed=1)
    # obs encodes (episode id, time); episodes of different lengths wrap around the ring several times
    for ep, T in enumerate([10, 25, 7, 30, 40, 12, 3, 2, 33]):
        obs = np.stack([np.full(T + 1, ep), np.arange(T + 1)], 1).astype(np.float32)
        act = np.arange(T, dtype=np.float32).reshape(T, 1) + 1000 * ep
        buf.add_episode(obs, act, np.arange(T, dtype=np.float32) + 1000 * ep)
        if buf.num_valid_starts(H):
            b = buf.sample(256, H)
            assert b["obs"].shape == (H + 1, 256, 2) and b["action"].shape == (H, 256, 1) and b["reward"].shape == (H, 256, 1)
            ids, times = b["obs"][..., 0], b["obs"][..., 1]
            assert torch.all(ids == ids[0]), "a sample crossed an episode boundary"
            assert torch.all(times[1:] - times[:-1] == 1)
            assert torch.equal(b["action"][..., 0], times[:-1] + 1000 * ids[:-1])
            assert torch.equal(b["reward"][..., 0], times[:-1] + 1000 * ids[:-1])
    assert buf.num_episodes == 9 and buf.num_steps <= 100
    # FIFO: slots of the last episodes are 95 (41+13+4+3+34); episode 3 keeps only its last 5 slots
    # (times 26..30) and episodes 0-2 are gone
    b = buf.sample(2000, 1)["obs"][0]
    ids, times = b[:, 0], b[:, 1]
    assert set(ids.unique().tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0, 8.0}
    assert times[ids == 3].min() == 26
    with pytest.raises(CdredError, match="does not fit"):
        buf.add_episode(np.zeros((200, 2), np.float32), np.zeros((199, 1), np.float32), np.zeros(199, np.float32))
    with pytest.raises(ValueError, match="obs must have shape"):
        buf.add_episode(np.zeros((5, 2), np.float32), np.zeros((5, 1), np.float32), np.zeros(5, np.float32))


def test_buffer_pixels_stay_uint8_and_state_round_trip():
    buf = ReplayBuffer(64, (9, 8, 8), 2, "cpu", obs_dtype=torch.uint8, seed=3)
    obs = np.random.default_rng(0).integers(0, 256, (21, 9, 8, 8), dtype=np.uint8)
    buf.add_episode(obs, np.zeros((20, 2), np.float32), np.zeros(20, np.float32))
    assert buf._obs.dtype == torch.uint8 and buf.sample(4, 3)["obs"].dtype == torch.uint8
    other = ReplayBuffer(64, (9, 8, 8), 2, "cpu", obs_dtype=torch.uint8, seed=99)
    other.load_state_dict(buf.state_dict())
    a, b = buf.sample(16, 3), other.sample(16, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="uint8"):
        buf.add_episode(obs.astype(np.float32), np.zeros((20, 2), np.float32), np.zeros(20, np.float32))


def test_buffer_state_loads_into_another_capacity():
    """A wrapped ring re-added oldest first into a bigger buffer keeps every valid window."""
    small = ReplayBuffer(50, (2,), 1, "cpu")
    for ep, T in enumerate([20, 15, 18, 9]):  # 21+16+19+10 = 66 slots: the first episode is partly overwritten
        obs = np.stack([np.full(T + 1, ep), np.arange(T + 1)], 1).astype(np.float32)
        small.add_episode(obs, np.arange(T, dtype=np.float32).reshape(T, 1), np.arange(T, dtype=np.float32))
    big = ReplayBuffer(500, (2,), 1, "cpu")
    big.load_state_dict(small.state_dict())
    assert big.num_steps == small.num_steps and big.num_valid_starts(3) == small.num_valid_starts(3)
    assert big.num_episodes == 4
    b = big.sample(500, 3)
    ids, times = b["obs"][..., 0], b["obs"][..., 1]
    assert torch.all(ids == ids[0]) and torch.all(times[1:] - times[:-1] == 1)
    assert set(ids[0].unique().tolist()) == {0.0, 1.0, 2.0, 3.0} and times[0][ids[0] == 0].min() == 16


def test_buffer_sampler_state_makes_a_rebuilt_buffer_draw_the_same_batches():
    """A buffer rebuilt from the same episodes (a resumed run's expert buffer) and given the sampler state
    draws what the original draws next; one holding other data is refused."""
    buf = fill_buffer(seed=4)
    buf.sample(8, 3)
    state = buf.sampler_state()
    rebuilt = fill_buffer(seed=4)
    rebuilt.load_sampler_state(state, what="expert buffer")
    a, b = buf.sample(32, 3), rebuilt.sample(32, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CdredError, match=r"checkpoint's expert buffer held \(episodes, slots\) \(4, 124\), this one \(3, 93\)"):
        fill_buffer(seed=4, episodes=3).load_sampler_state(state, what="expert buffer")


def test_sample_batch_with_expert_buffer_marks_halves():
    beh, exp = fill_buffer(seed=0), fill_buffer(seed=1)
    b = sample_batch(beh, 8, 3, exp)
    assert b["obs"].shape == (4, 16, 3) and b["action"].shape == (3, 16, 1) and b["reward"].shape == (3, 16, 1)
    assert b["is_expert"].tolist() == [False] * 8 + [True] * 8
    assert not sample_batch(beh, 8, 3)["is_expert"].any()


# ---------------------------------------------------------------------------------------- update
def test_update_returns_floats_and_decreases_loss_on_a_fixed_batch():
    agent = TDMPC2Agent(tiny(plan=False), (3,), 1, device="cpu")
    torch.manual_seed(0)
    batch = fill_buffer().sample(32, 3)
    first = agent.update(batch)
    assert all(isinstance(v, float) and math.isfinite(v) for v in first.values())
    assert {"total_loss", "consistency_loss", "reward_loss", "value_loss", "pi_loss", "grad_norm", "lr"} <= set(first)
    for _ in range(100):
        last = agent.update(batch)
    assert last["total_loss"] < 0.6 * first["total_loss"]
    assert last["reward_loss"] < 0.8 * first["reward_loss"]
    assert last["consistency_loss"] < 0.5 * first["consistency_loss"]
    assert agent.update_step == 101
    # target Qs moved by Polyak averaging but are not equal to the online Qs
    m = agent.model
    assert not all(torch.equal(p, q) for p, q in zip(m._Qs.parameters(), m._target_Qs.parameters()))


def test_soft_update_is_the_polyak_average_of_alg_1():
    m = TDMPC2Agent(tiny(plan=False), (3,), 1, device="cpu").model
    with torch.no_grad():
        for p in m._Qs.parameters():
            p.add_(torch.randn_like(p))
    online = [p.detach().double().clone() for p in m._Qs.parameters()]
    before = [p.detach().double().clone() for p in m._target_Qs.parameters()]
    m.soft_update_target_Q(0.01)
    for t, b, o in zip(m._target_Qs.parameters(), before, online):
        assert torch.allclose(t.double(), 0.99 * b + 0.01 * o, atol=1e-6)
        assert not torch.equal(t.double(), b)


def test_nan_loss_raises_training_diverged_and_leaves_weights():
    agent = TDMPC2Agent(tiny(), (3,), 1, device="cpu")
    batch = fill_buffer().sample(16, 3)
    agent.update(batch)
    before = [p.detach().clone() for p in agent.model.parameters()]
    bad = dict(batch, reward=batch["reward"].clone())
    bad["reward"][0, 0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="update step 2"):
        agent.update(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.model.parameters()))


def test_lr_scheduler_hook():
    agent = TDMPC2Agent(tiny(lr_step_every=2, lr_gamma=0.1), (3,), 1, device="cpu")
    batch = fill_buffer().sample(8, 3)
    lrs = [agent.update(batch)["lr"] for _ in range(4)]
    assert lrs[0] == pytest.approx(3e-4) and lrs[1] == pytest.approx(3e-5) and lrs[3] == pytest.approx(3e-6)
    assert agent.optim.param_groups[0]["lr"] == pytest.approx(3e-6 * 0.3)
    assert agent.pi_optim.param_groups[0]["lr"] == pytest.approx(3e-6)


def test_reward_head_gets_is_expert_and_obs_space_input():
    head = ActionReward()
    agent = TDMPC2Agent(tiny(reward_space="obs", plan=False), (3,), 1, reward_head=head, device="cpu")
    b = sample_batch(fill_buffer(seed=0), 8, 3, fill_buffer(seed=1))
    agent.update(b)
    assert head.seen_x_shape == (3, 16, 3)  # raw observations, not latents
    assert head.seen_is_expert.tolist() == [False] * 8 + [True] * 8
    with pytest.raises(UsageError, match="state observations"):
        TDMPC2Agent(tiny(reward_space="obs", plan=False), (9, 64, 64), 1, device="cpu")
    head2 = ActionReward()
    TDMPC2Agent(tiny(plan=False), (3,), 1, reward_head=head2, device="cpu").update(fill_buffer().sample(8, 3))
    assert head2.seen_x_shape == (3, 8, 32)  # latents


# ---------------------------------------------------------------------------------------- planning
def test_planner_prefers_the_better_action_sequence():
    cfg = tiny(plan=True)
    agent = TDMPC2Agent(cfg, (3,), 2, reward_head=ActionReward(), device="cpu")
    m = agent.model
    z = m.encode(torch.zeros(1, 3))
    good, bad = torch.ones(cfg.horizon, 1, 2), -torch.ones(cfg.horizon, 1, 2)
    v = estimate_value(m, z.expand(2, -1), torch.cat([good, bad], 1), agent.gamma)
    assert v.shape == (2, 1) and v[0, 0] > v[1, 0]
    # Q heads start at 0, so the return is sum_t gamma^t * 2 for the all-ones sequence
    expected = sum(2 * agent.gamma ** t for t in range(cfg.horizon))
    assert float(v[0, 0]) == pytest.approx(expected, abs=1e-4)
    for eval_mode in (True, False):
        acts = np.stack([agent.act(np.zeros(3, np.float32), t0=True, eval_mode=eval_mode) for _ in range(20)])
        assert acts.shape == (20, 2) and acts.dtype == np.float32 and np.all(np.abs(acts) <= 1)
        # a 2-iteration, 64-sample plan is noisy (a sample adds the final std's noise too): its average
        assert np.all(acts.mean(0) > 0.3), acts
    gen = torch.Generator().manual_seed(0)
    a, mean = mppi_plan(m, z, cfg, gamma=agent.gamma, prev_mean=torch.ones(cfg.horizon, 2), eval_mode=True, generator=gen)
    assert mean.shape == (cfg.horizon, 2) and torch.all(mean > 0)


def test_policy_act_modes():
    agent = TDMPC2Agent(tiny(plan=False), (3,), 2, device="cpu")
    o = np.ones(3, np.float32)
    e1, e2 = agent.act(o, t0=True, eval_mode=True), agent.act(o, eval_mode=True)
    assert np.array_equal(e1, e2)  # eval: tanh(mu)
    s = [agent.act(o, eval_mode=False) for _ in range(3)]
    assert not np.array_equal(s[0], s[1]) and all(np.all(np.abs(x) <= 1) for x in s)
    with pytest.raises(ValueError, match="observation shape"):
        agent.act(np.ones(4, np.float32))


def test_act_batch_prior_rows_per_row_are_bitwise_the_same_at_any_batch_size_and_place():
    agent = TDMPC2Agent(tiny(plan=False), (3,), 2, device="cpu")
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    states = [agent.new_act_state() for _ in range(8)]
    full = agent.act_batch(obs, states, per_row=True)
    for k in (1, 3, 8):
        assert np.array_equal(agent.act_batch(obs[:k], states[:k], per_row=True), full[:k]), k
    for i in range(8):  # each row alone, and the rows in reverse order: the same bits
        assert np.array_equal(agent.act_batch(obs[i:i + 1], states[:1], per_row=True)[0], full[i]), i
    assert np.array_equal(agent.act_batch(np.ascontiguousarray(obs[::-1]), states, per_row=True), full[::-1])
    assert np.allclose(agent.act_batch(obs, states), full, atol=1e-6)  # one pass for all rows: up to rounding
    assert np.allclose(agent.act(obs[2], t0=True, eval_mode=True), full[2], atol=1e-6)  # one row alone, up to rounding
    with pytest.raises(ValueError, match="states"):
        agent.act_batch(obs, states[:2])


def test_act_batch_mppi_rows_with_own_generators_do_not_depend_on_the_other_rows():
    agent = TDMPC2Agent(tiny(plan=True, num_samples=32, iterations=2), (3,), 2, device="cpu")
    obs = np.random.default_rng(1).normal(size=(3, 4, 3)).astype(np.float32)  # 4 steps of 3 episodes

    def roll(rows: list[int]) -> np.ndarray:
        states = [agent.new_act_state(100 + r) for r in rows]
        return np.stack([agent.act_batch(obs[rows, t], states) for t in range(obs.shape[1])])

    together = roll([0, 1, 2])
    for r in range(3):
        assert np.array_equal(roll([r])[:, 0], together[:, r]), r
    # on the agent's own generator a state draws what act() draws: the same actions as act with t0 at the start
    agent.act_generator.manual_seed(7)
    state = agent.new_act_state()
    own = [agent.act_batch(obs[0, t][None], [state])[0] for t in range(4)]
    agent.act_generator.manual_seed(7)
    ref = [agent.act(obs[0, t], t0=t == 0, eval_mode=True) for t in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(own, ref))


# ---------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("plan", [True, False])
def test_checkpoint_reload_gives_bitwise_identical_eval_actions(tmp_path, plan):
    agent = TDMPC2Agent(tiny(plan=plan, seed=5), (3,), 2, device="cpu")
    buf = fill_buffer(action_dim=2)
    for _ in range(3):
        agent.update(buf.sample(16, 3))
    obs = [np.random.default_rng(i).normal(size=3).astype(np.float32) for i in range(4)]
    agent.act(obs[0], t0=True, eval_mode=True)  # a warm-start mean exists at save time
    path = tmp_path / "agent.pt"
    agent.save(path, extra={"task": "gym:Pendulum-v1", "preset": "tiny"})
    loaded = TDMPC2Agent.load(path, device="cpu", task="gym:Pendulum-v1")
    assert loaded.extra == {"task": "gym:Pendulum-v1", "preset": "tiny"} and loaded.update_step == 3
    for i, o in enumerate(obs):
        assert np.array_equal(agent.act(o, t0=False, eval_mode=True), loaded.act(o, t0=False, eval_mode=True))
    # training continues identically with the global RNG restored
    batch = buf.sample(16, 3)
    agent.save(path)
    ref = agent.update(batch)
    again = TDMPC2Agent.load(path, device="cpu", restore_rng=True)
    assert again.update(batch) == ref
    raw = torch.load(path, weights_only=True)  # no pickled classes
    assert raw["format"] == "cdred-agent" and raw["package_version"] and isinstance(raw["config"], dict)


def test_resume_restores_python_random_and_the_heads_last_loss_terms(tmp_path):
    """restore_rng brings back the global torch, numpy and Python random states and the loss terms the
    head keeps for the next evaluation's diagnostics."""
    import random

    from cdred_pipeline.reward import CDREDConfig, CDREDRewardHead

    cfg = tiny()
    agent = TDMPC2Agent(cfg, (3,), 1, reward_head=CDREDRewardHead(cfg.latent_dim, 1, CDREDConfig.preset("small")),
                        device="cpu")
    agent.update({**fill_buffer().sample(8, 3), "is_expert": torch.tensor([False] * 4 + [True] * 4)})
    random.seed(11)
    path = tmp_path / "agent.pt"
    agent.save(path)
    draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
    fresh = TDMPC2Agent(cfg, (3,), 1, reward_head=CDREDRewardHead(cfg.latent_dim, 1, CDREDConfig.preset("small")),
                        device="cpu")
    fresh.load_state(path, restore_rng=True)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == draws
    terms = agent.reward_head.last_loss_terms
    assert terms and all(torch.equal(terms[k], fresh.reward_head.last_loss_terms[k]) for k in terms)


def test_checkpoint_errors(tmp_path):
    agent = TDMPC2Agent(tiny(), (3,), 1, device="cpu")
    path = tmp_path / "a.pt"
    agent.save(path, extra={"task": "gym:Pendulum-v1"})
    with pytest.raises(CheckpointError, match="for task gym:Pendulum-v1, not dmc:cartpole-balance"):
        TDMPC2Agent.load(path, device="cpu", task="dmc:cartpole-balance")
    with pytest.raises(CheckpointError, match=r"observation shape \(3,\), not \(5,\)"):
        TDMPC2Agent.load(path, device="cpu", obs_shape=(5,))
    with pytest.raises(CheckpointError, match=r"obs_shape \(3,\).*this agent has \(4,\)"):
        TDMPC2Agent(tiny(), (4,), 1, device="cpu").load_state(path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable cdred agent checkpoint"):
        TDMPC2Agent.load(junk, device="cpu")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a cdred agent checkpoint"):
        TDMPC2Agent.load(other, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        TDMPC2Agent.load(tmp_path / "missing.pt", device="cpu")
    custom = TDMPC2Agent(tiny(), (3,), 1, reward_head=ActionReward(), device="cpu")
    custom.save(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="pass reward_head="):
        TDMPC2Agent.load(tmp_path / "c.pt", device="cpu")
    assert TDMPC2Agent.load(tmp_path / "c.pt", device="cpu", reward_head=ActionReward()).update_step == 0
    with pytest.raises(TypeError, match="plain types"):
        agent.save(tmp_path / "x.pt", extra={"bad": object()})
    assert not (tmp_path / "x.pt").exists()


def test_default_reward_head_is_two_hot():
    agent = TDMPC2Agent(tiny(), (3,), 1, device="cpu")
    assert isinstance(agent.reward_head, TwoHotRewardHead) and agent.reward_head.uses_env_reward
    r = agent.model.reward(torch.zeros(4, 32), torch.zeros(4, 1))
    assert r.shape == (4, 1) and torch.allclose(r, torch.zeros(4, 1), atol=1e-6)
