"""Tests of the CDRED reward model (paper §3, Eq. 3-9, Lemma 1; docs/design.md §4)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from cdred_pipeline.errors import UsageError
from cdred_pipeline.reward import (
    PRESETS,
    CDREDConfig,
    CDREDRewardHead,
    bonus,
    lemma1_statistic,
    red_loss,
    red_reward,
    reward_from_outputs,
)

F64 = torch.float64


# --------------------------------------------------------------------------- independent reference
def np_reward(fe, fb, tg, alpha, zeta, sigma, g, eps=1e-6):
    """Eq. 5-9 written directly in float64 numpy, with the literal B2 - mu^2 denominator."""
    fe, fb, tg = (np.asarray(v, dtype=np.float64) for v in (fe, fb, tg))
    K = tg.shape[0]
    mu = sum(tg[k] for k in range(K)) / K
    b2 = sum(tg[k] ** 2 for k in range(K)) / K
    den = np.maximum(b2 - mu**2, eps)

    def b(f):
        l2 = np.sum((f - mu) ** 2, axis=-1)
        est = np.mean(np.sqrt(np.abs(f**2 - mu**2) / den), axis=-1)
        return alpha * l2 + (1 - alpha) * est

    gf = {"identity": lambda v: v, "exp": np.exp}[g]
    return zeta * gf(-sigma * b(fe)) - (1 - zeta) * gf(-sigma * b(fb))


def _rand_outputs(seed: int, K: int = 5, B: int = 7, p: int = 6, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    tg = torch.randn(K, B, p, generator=g, dtype=dtype)
    fe = torch.randn(B, p, generator=g, dtype=dtype) * 0.5
    fb = torch.randn(B, p, generator=g, dtype=dtype) * 0.5
    return fe, fb, tg


def _head(D: int = 6, A: int = 2, dtype=F64, **cfg) -> CDREDRewardHead:
    torch.manual_seed(cfg.pop("torch_seed", 0))
    return CDREDRewardHead(D, A, CDREDConfig.preset("tiny", **cfg)).to(dtype)


def _xa(T: int, B: int, D: int = 6, A: int = 2, seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, D, generator=g, dtype=dtype), torch.rand(T, B, A, generator=g, dtype=dtype) * 2 - 1


# --------------------------------------------------------------------------- pure formulas
@pytest.mark.parametrize("g", ["identity", "exp"])
@pytest.mark.parametrize("alpha,zeta,sigma", [(0.9, 0.8, 1.0), (0.3, 0.55, 0.25), (1.0, 1.0, 2.0), (0.0, 0.0, 1.0)])
def test_reward_from_outputs_matches_numpy(g, alpha, zeta, sigma):
    for seed in range(3):
        fe, fb, tg = _rand_outputs(seed)
        got = reward_from_outputs(fe, fb, tg, alpha=alpha, zeta=zeta, sigma=sigma, g=g)
        assert got.shape == (fe.shape[0],) and got.dtype == F64
        ref = np_reward(fe.numpy(), fb.numpy(), tg.numpy(), alpha, zeta, sigma, g)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_reward_defaults_are_paper_values():
    fe, fb, tg = _rand_outputs(11)
    ref = np_reward(fe.numpy(), fb.numpy(), tg.numpy(), 0.9, 0.8, 1.0, "identity")
    np.testing.assert_allclose(reward_from_outputs(fe, fb, tg).numpy(), ref, rtol=1e-12)
    c = CDREDConfig()
    assert (c.num_targets, c.embed_dim, c.hidden, c.alpha, c.zeta, c.sigma, c.g, c.mode) == (
        5, 64, (512, 512), 0.9, 0.8, 1.0, "identity", "cdred")


def test_reward_callable_g_and_bad_g():
    fe, fb, tg = _rand_outputs(2)
    a = reward_from_outputs(fe, fb, tg, g=torch.tanh)
    ref_b_e = bonus(fe, tg)
    ref_b_b = bonus(fb, tg)
    torch.testing.assert_close(a, 0.8 * torch.tanh(-ref_b_e) - 0.2 * torch.tanh(-ref_b_b))
    with pytest.raises(ValueError, match="g must be"):
        reward_from_outputs(fe, fb, tg, g="softplus")


def test_bonus_guard_on_degenerate_target_dimension():
    """A dimension where all K targets coincide: B2 - mu^2 = 0 would divide by zero without the guard."""
    fe, _, tg = _rand_outputs(3)
    tg[:, :, 0] = 0.7  # all targets equal in dim 0
    b = bonus(fe, tg, alpha=0.5, eps=1e-6)
    assert torch.isfinite(b).all()
    ref = np_reward(fe.numpy(), fe.numpy(), tg.numpy(), 0.5, 1.0, 1.0, "identity", eps=1e-6)
    np.testing.assert_allclose((-b).numpy(), ref, rtol=1e-12)


def test_bonus_zero_at_ensemble_mean_and_grows_away():
    _, _, tg = _rand_outputs(4)
    mu = tg.mean(0)
    assert torch.allclose(bonus(mu, tg), torch.zeros(mu.shape[0], dtype=F64), atol=1e-12)
    assert (bonus(mu + 0.5, tg) > bonus(mu + 0.1, tg)).all()


def test_lemma1_statistic_definition():
    fe, _, tg = _rand_outputs(5)
    t = tg.numpy()
    mu, b2 = t.mean(0), (t**2).mean(0)
    ref = (fe.numpy() ** 2 - mu**2) / (b2 - mu**2)
    np.testing.assert_allclose(lemma1_statistic(fe, tg).numpy(), ref, rtol=1e-10)
    # one occurrence (n = 1): f* is a single target draw c, and y averages to exactly 1 over the K draws
    y1 = torch.stack([lemma1_statistic(tg[k], tg) for k in range(tg.shape[0])]).mean(0)
    torch.testing.assert_close(y1, torch.ones_like(y1))


def test_shape_errors_are_clear():
    fe, fb, tg = _rand_outputs(6)
    with pytest.raises(ValueError, match="needs"):
        reward_from_outputs(fe[:3], fb, tg)
    with pytest.raises(ValueError, match="K=2"):
        bonus(fe, tg[:1])


def test_red_reward_eq3():
    fe, _, tg = _rand_outputs(7)
    t, f = tg.numpy(), fe.numpy()
    literal = np.mean([np.sum((f - t[k]) ** 2, -1) for k in range(t.shape[0])], 0)
    centered = np.sum((f - t.mean(0)) ** 2, -1)
    np.testing.assert_allclose(red_loss(fe, tg, centered=False).numpy(), literal, rtol=1e-12)
    np.testing.assert_allclose(red_loss(fe, tg).numpy(), centered, rtol=1e-12)
    # bias-variance identity: literal = centered + sum_d (B2 - mu^2)
    np.testing.assert_allclose(literal, centered + (t.var(0)).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(red_reward(fe, tg, sigma=0.3).numpy(), np.exp(-0.3 * centered), rtol=1e-12)
    # centered RED == CDRED with alpha = 1, zeta = 1, g = exp
    torch.testing.assert_close(
        red_reward(fe, tg, sigma=0.3), reward_from_outputs(fe, fe, tg, alpha=1.0, zeta=1.0, sigma=0.3, g="exp")
    )


# --------------------------------------------------------------------------- Lemma 1 with a fitted network
@pytest.mark.parametrize("n", [1, 4, 16])
def test_lemma1_fitted_predictor_estimates_one_over_n(n):
    """M distinct points each occur n times; occurrence i of point j carries its own target draw
    c_ji = f_{k_ji}(x_j), k_ji ~ U{0..K-1}. The expert predictor is fitted by MSE on all M*n occurrences
    (evaluated once per distinct point and gathered per occurrence: the same loss and gradient as
    feeding the duplicated rows). Lemma 1: y = (f*^2 - mu^2)/(B2 - mu^2) averages to 1/n.

    The check is statistical: y is averaged over M = 512 points x p = 16 dims with fixed seeds, and the
    tolerance is 4 standard errors of that average (per-point means as the samples), capped at 35% of
    1/n (over 40 seeds of the exact optimum the z-scores were N(0, 1)-like, max |z| 2.6); the fitted
    network must also be close to the exact optimum (the mean of the draws).
    """
    M, D, A = 512, 8, 2
    cfg = CDREDConfig(hidden=(256, 256), embed_dim=16, seed=1)
    torch.manual_seed(n)
    head = CDREDRewardHead(D, A, cfg).to(F64)
    g = torch.Generator().manual_seed(100 + n)
    x = torch.randn(M, D, generator=g, dtype=F64)
    a = torch.rand(M, A, generator=g, dtype=F64) * 2 - 1
    with torch.no_grad():
        _, _, tgt = head.outputs(x, a)  # (K, M, p)
    k = torch.randint(cfg.num_targets, (M, n), generator=g)
    c = tgt[k, torch.arange(M)[:, None]]  # (M, n, p): the n occurrences' target draws
    inp = torch.cat([x, a], -1)
    opt = torch.optim.Adam(head.expert_predictor.parameters(), lr=3e-3)
    for _ in range(1000):
        f = head.expert_predictor(inp)
        loss = (f.unsqueeze(1) - c).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        f = head.expert_predictor(inp)
    y_fit = lemma1_statistic(f, tgt)
    y_opt = lemma1_statistic(c.mean(1), tgt)  # Eq. 8's optimum
    per_point = y_fit.mean(-1)
    se = per_point.std().item() / math.sqrt(M)
    tol = min(4 * se, 0.35 / n)
    assert abs(y_fit.mean().item() - 1 / n) < tol, (y_fit.mean().item(), 1 / n, tol)
    assert abs(y_opt.mean().item() - 1 / n) < tol, (y_opt.mean().item(), 1 / n, tol)
    # the network reached Eq. 8's optimum: its error is small against the draws' own deviation from mu
    f_opt, mu = c.mean(1), tgt.mean(0)
    rel_fit = ((f - f_opt).square().mean() / (f_opt - mu).square().mean()).sqrt().item()
    assert rel_fit < 0.2, rel_fit


# --------------------------------------------------------------------------- training behaviour
def test_expert_predictor_lowers_b_on_its_set_only():
    D, A, N = 64, 2, 64
    head = _head(D, A, seed=3)
    g = torch.Generator().manual_seed(5)
    x_on, a_on = torch.randn(N, D, generator=g, dtype=F64), torch.rand(N, A, generator=g, dtype=F64) * 2 - 1
    x_off, a_off = torch.randn(N, D, generator=g, dtype=F64), torch.rand(N, A, generator=g, dtype=F64) * 2 - 1

    def b_means(x, a):
        with torch.no_grad():
            fe, fb, t = head.outputs(x, a)
        return bonus(fe, t).mean().item(), bonus(fb, t).mean().item()

    (on0, on0_b), (off0, _) = b_means(x_on, a_on), b_means(x_off, a_off)
    r_before = head.reward(x_on, a_on).mean().item()
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(7)
    is_expert = torch.ones(N, dtype=torch.bool)
    for _ in range(300):
        loss = head.loss(x_on.unsqueeze(0), a_on.unsqueeze(0), None, is_expert, generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    (on1, on1_b), (off1, _) = b_means(x_on, a_on), b_means(x_off, a_off)
    assert on1 < 0.1 * on0, (on0, on1)
    assert off1 > 0.3 * off0 and off1 > 5 * on1, (off0, off1, on1)
    assert on1_b == on0_b  # behavioural predictor untouched by expert-only training
    assert head.reward(x_on, a_on).mean().item() > r_before
    assert head.reward(x_on, a_on).mean().item() > head.reward(x_off, a_off).mean().item()
    d = head.diagnostics(x_on, a_on)
    assert set(d) >= {"b_E", "b_B", "R"} and abs(d["b_E"] - on1) < 1e-9


def test_loss_draws_one_target_per_sample():
    """Eq. 4: each (t, b) regresses onto the target k ~ U{0..K-1} drawn for it; halves averaged separately."""
    head = _head()
    T, B = 3, 8
    x, a = _xa(T, B)
    is_expert = torch.tensor([True, False] * 4)
    got = head.loss_terms(x, a, is_expert, generator=torch.Generator().manual_seed(9))
    k = torch.randint(5, (T, B), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        fe, fb, tg = head.outputs(x, a)
    c = tg[k, torch.arange(T)[:, None], torch.arange(B)[None, :]]  # (T, B, p)
    err_e = (fe - c).square().mean(-1)[:, is_expert].mean(-1)
    err_b = (fb - c).square().mean(-1)[:, ~is_expert].mean(-1)
    torch.testing.assert_close(got["expert"].detach(), err_e)
    torch.testing.assert_close(got["behavioral"].detach(), err_b)
    total = head.loss(x, a, torch.randn(T, B, 1, dtype=F64), is_expert, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(total.detach(), err_e + err_b)  # env_reward ignored
    assert head.uses_env_reward is False


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def test_halves_never_train_the_other_predictor():
    head = _head()
    T, B = 2, 8
    x, a = _xa(T, B)
    # expert-only batch: no gradient on the behavioural predictor, some on the expert one
    head.zero_grad()
    head.loss(x, a, None, torch.ones(B, dtype=torch.bool)).sum().backward()
    assert all((g == 0).all() for g in _grads(head.behavioral_predictor))
    assert any((g != 0).any() for g in _grads(head.expert_predictor))
    # behavioural-only batch: the reverse
    head.zero_grad()
    head.loss(x, a, None, torch.zeros(B, dtype=torch.bool)).sum().backward()
    assert all((g == 0).all() for g in _grads(head.expert_predictor))
    assert any((g != 0).any() for g in _grads(head.behavioral_predictor))
    # mixed batch: changing the expert rows leaves f_B's gradient unchanged, and vice versa
    is_expert = torch.tensor([True] * 3 + [False] * 5)

    def grads_with(xx):
        head.zero_grad()
        head.loss(xx, a, None, is_expert, generator=torch.Generator().manual_seed(1)).sum().backward()
        return _grads(head.expert_predictor), _grads(head.behavioral_predictor)

    ge0, gb0 = grads_with(x)
    x_e = x.clone()
    x_e[:, is_expert] += 1.0
    ge1, gb1 = grads_with(x_e)
    assert all(torch.equal(u, v) for u, v in zip(gb0, gb1))
    assert not all(torch.equal(u, v) for u, v in zip(ge0, ge1))
    x_b = x.clone()
    x_b[:, ~is_expert] += 1.0
    ge2, gb2 = grads_with(x_b)
    assert all(torch.equal(u, v) for u, v in zip(ge0, ge2))
    assert not all(torch.equal(u, v) for u, v in zip(gb0, gb2))


def test_gradient_to_input_follows_detach_input():
    for detach, expect_grad in ((False, True), (True, False)):
        head = _head(detach_input=detach)
        x, a = _xa(2, 4)
        x.requires_grad_(True)
        head.loss(x, a, None, torch.tensor([True, True, False, False])).sum().backward()
        assert (x.grad is not None and (x.grad != 0).any()) == expect_grad


# --------------------------------------------------------------------------- frozen targets
def test_targets_are_buffers_never_optimised():
    head = _head()
    param_ids = {id(p) for p in head.parameters()}
    bufs = dict(head.targets.named_buffers())
    assert len(bufs) == 2 * (len(head.cfg.hidden) + 1)
    assert all(id(b) not in param_ids and not b.requires_grad for b in bufs.values())
    before = {n: b.clone() for n, b in bufs.items()}
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    x, a = _xa(2, 8)
    for _ in range(5):
        opt.zero_grad()
        head.loss(x, a, None, torch.tensor([True, False] * 4)).sum().backward()
        opt.step()
    assert all(torch.equal(before[n], b) for n, b in head.targets.named_buffers())
    assert head.targets.w0.shape == (5, 8, 64)  # (K, D + A, hidden) stacked, one batched matmul per layer


def test_targets_identical_after_save_load():
    head = _head(seed=42)
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert any(k.startswith("targets.") for k in state)
    fresh = _head(seed=7, torch_seed=123)  # different targets and predictors before loading
    assert not torch.equal(fresh.targets.w0, head.targets.w0)
    fresh.load_state_dict(state)
    for (n, b), (_, b2) in zip(head.targets.named_buffers(), fresh.targets.named_buffers()):
        assert torch.equal(b, b2), n
    x, a = _xa(2, 3)
    torch.testing.assert_close(fresh.reward(x, a), head.reward(x, a), rtol=0, atol=0)


def _assert_orthogonal_layer(targets, i: int, gain: float) -> None:
    """Target layer i of the first target: orthogonal with ``gain`` (W W^T or W^T W = gain^2 I on the
    smaller side) and a zero bias."""
    w = getattr(targets, f"w{i}")[0].T  # (out, in)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0], dtype=gram.dtype), atol=1e-5, rtol=0)
    assert not getattr(targets, f"b{i}").any()


def test_targets_seeded_and_independent_of_global_rng():
    h1 = _head(seed=5, torch_seed=0)
    h2 = _head(seed=5, torch_seed=99)
    h3 = _head(seed=6, torch_seed=0)
    assert torch.equal(h1.targets.w1, h2.targets.w1)
    assert not torch.equal(h1.targets.w1, h3.targets.w1)
    # the predictors too: the stage builds the head before anything seeds the global RNG
    for name, p1 in h1.named_parameters():
        p2, p3 = dict(h2.named_parameters())[name], dict(h3.named_parameters())[name]
        assert torch.equal(p1, p2), name
        if name.endswith("weight") and p1.dim() == 2:
            assert not torch.equal(p1, p3), name
    assert not torch.equal(h1.expert_predictor[0].weight, h1.behavioral_predictor[0].weight)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    _ = CDREDRewardHead(6, 2, CDREDConfig.preset("tiny"))
    assert torch.equal(torch.get_rng_state(), before)  # building a head leaves the global RNG alone
    # the released code's scales: hidden target layers orthogonal with gain 1 (orthonormal rows), zero bias
    for i in range(h1.targets.num_layers - 1):
        _assert_orthogonal_layer(h1.targets, i, gain=1.0)
    # ... the last target layer at nn.Linear's default: weights and bias uniform in +-1/sqrt(fan_in)
    last = h1.targets.num_layers - 1
    w, b = getattr(h1.targets, f"w{last}"), getattr(h1.targets, f"b{last}")
    bound = 1 / w.shape[1] ** 0.5
    assert w.abs().max() <= bound and b.abs().max() <= bound and b.abs().max() > bound / 2
    assert abs(float(w.std()) - bound / 3**0.5) < 0.1 * bound  # std of U(-bound, bound)
    # predictors: TD-MPC2's init, truncated normal std 0.02, zero biases
    for net in (h1.expert_predictor, h1.behavioral_predictor):
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        assert all(m.weight.abs().max() < 0.2 and not m.bias.any() for m in linears)
        assert all(abs(float(m.weight.std()) - 0.02) < 0.004 for m in linears)


def test_rnd_init_scales():
    """init "rnd": every target layer orthogonal with gain sqrt 2 and zero bias; predictors at nn.Linear's
    default (uniform in +-1/sqrt(fan_in), non-zero biases); the released init stays the default."""
    head = CDREDRewardHead(6, 2, CDREDConfig.preset("tiny", init="rnd"))
    for i in range(head.targets.num_layers):
        _assert_orthogonal_layer(head.targets, i, gain=2**0.5)
    for net in (head.expert_predictor, head.behavioral_predictor):
        for m in (m for m in net.modules() if isinstance(m, torch.nn.Linear)):
            bound = 1 / m.weight.shape[1] ** 0.5
            assert m.weight.abs().max() <= bound and m.bias.abs().max() > 0
            assert abs(float(m.weight.std()) - bound / 3**0.5) < 0.15 * bound
    assert CDREDConfig().init == "released"
    with pytest.raises(UsageError, match="init"):
        CDREDConfig(init="xavier")


def test_targets_move_with_to_dtype():
    head = CDREDRewardHead(6, 2, CDREDConfig.preset("tiny"))
    assert head.targets.w0.dtype == torch.float32
    head = head.to(F64)
    assert all(b.dtype == F64 for b in head.targets.buffers())
    x, a = _xa(2, 3)
    assert head.reward(x, a).dtype == F64
    head = head.to(torch.device("cpu"), dtype=torch.float32)
    assert all(b.dtype == torch.float32 for b in head.targets.buffers())


# --------------------------------------------------------------------------- shapes and modes
def test_shapes():
    head = _head()
    T, B = 4, 5
    x, a = _xa(T, B)
    assert head.reward(x, a).shape == (T, B, 1)
    assert head.reward(x[0], a[0]).shape == (B, 1)
    assert head.reward(x[0, 0], a[0, 0]).shape == (1,)
    assert head.loss(x, a, None, torch.tensor([True, False, True, False, False])).shape == (T,)
    fe, fb, tg = head.outputs(x, a)
    assert fe.shape == fb.shape == (T, B, 16) and tg.shape == (5, T, B, 16)
    # reward() is Eq. 5 on the network outputs
    ref = reward_from_outputs(fe.reshape(-1, 16), fb.reshape(-1, 16), tg.reshape(5, -1, 16))
    torch.testing.assert_close(head.reward(x, a).reshape(-1), ref)


def test_bad_inputs_raise_clear_errors():
    head = _head()
    x, a = _xa(2, 4)
    with pytest.raises(ValueError, match="x_dim=6"):
        head.reward(x[..., :5], a)
    with pytest.raises(ValueError, match="leading dims"):
        head.reward(x, a[:1])
    with pytest.raises(ValueError, match="is_expert"):
        head.loss(x, a, None, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_expert"):
        head.loss(x, a, None, torch.ones(4))
    with pytest.raises(ValueError, match=r"\(T, B, D\)"):
        head.loss(x[0], a[0], None, torch.ones(4, dtype=torch.bool))


def test_red_mode():
    head = _head(mode="red", sigma=0.2)
    x, a = _xa(3, 6)
    r = head.reward(x, a)
    assert r.shape == (3, 6, 1) and ((r > 0) & (r <= 1)).all()
    fe, _, tg = head.outputs(x, a)
    torch.testing.assert_close(r.squeeze(-1), torch.exp(-0.2 * (fe - tg.mean(0)).square().sum(-1)))
    is_expert = torch.tensor([True] * 3 + [False] * 3)
    head.zero_grad()
    terms = head.loss_terms(x, a, is_expert)
    (terms["expert"] + terms["behavioral"]).sum().backward()
    assert torch.equal(terms["behavioral"], torch.zeros(3, dtype=F64))
    assert all((g == 0).all() for g in _grads(head.behavioral_predictor))
    assert any((g != 0).any() for g in _grads(head.expert_predictor))
    literal = _head(mode="red", red_centered=False)
    fe, _, tg = literal.outputs(x, a)
    torch.testing.assert_close(literal.reward(x, a).squeeze(-1), red_reward(fe, tg, centered=False))


def test_g_exp_mode_and_loss_coef():
    head = _head(g="exp", loss_coef=0.5)
    x, a = _xa(2, 4)
    fe, fb, tg = head.outputs(x, a)
    torch.testing.assert_close(
        head.reward(x, a).squeeze(-1), 0.8 * torch.exp(-bonus(fe, tg)) - 0.2 * torch.exp(-bonus(fb, tg))
    )
    ie = torch.tensor([True, False, True, False])
    l1 = head.loss(x, a, None, ie, generator=torch.Generator().manual_seed(0))
    t = head.loss_terms(x, a, ie, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(l1, 0.5 * (t["expert"] + t["behavioral"]))


def test_config_presets_and_validation():
    assert set(PRESETS) == {"paper", "small", "tiny"}
    assert CDREDConfig.preset("small").hidden == (128, 128)
    assert CDREDConfig.preset("paper", alpha=0.5).alpha == 0.5
    assert CDREDConfig.preset("tiny").to_dict()["hidden"] == [64, 64]
    for bad in ({"alpha": 1.5}, {"zeta": -0.1}, {"sigma": 0.0}, {"num_targets": 1}, {"g": "relu"},
                {"mode": "gail"}, {"hidden": ()}, {"eps": 0.0}):
        with pytest.raises(UsageError):
            CDREDConfig(**bad)
    with pytest.raises(UsageError, match="unknown CDRED preset"):
        CDREDConfig.preset("huge")


def test_paper_preset_parameter_count():
    """App. A.1 sizes at latent 512: two predictors trainable, five targets frozen."""
    head = CDREDRewardHead(512, 6, CDREDConfig.preset("paper"))
    per_net = (518 * 512 + 512 + 2 * 512) + (512 * 512 + 512 + 2 * 512) + (512 * 64 + 64)
    assert sum(p.numel() for p in head.parameters()) == 2 * per_net
    assert sum(b.numel() for b in head.targets.buffers()) == 5 * (518 * 512 + 512 + 512 * 512 + 512 + 512 * 64 + 64)


def test_is_a_reward_head_when_the_agent_base_exists():
    base = pytest.importorskip("cdred_pipeline.agent.reward_head").RewardHead
    head = _head()
    assert isinstance(head, base) and head.uses_env_reward is False


@pytest.mark.parametrize("mode", ["cdred", "red"])
def test_fused_loss_and_reward_equals_separate_calls(mode):
    """The update's shared forward pass gives exactly loss() and reward() of the same (x, a)."""
    head = CDREDRewardHead(12, 3, CDREDConfig.preset("tiny", mode=mode, seed=4)).double()
    x, a = torch.randn(3, 10, 12, dtype=torch.float64), torch.rand(3, 10, 3, dtype=torch.float64) * 2 - 1
    is_expert = torch.arange(10) % 2 == 0
    loss_f, r_f = head.loss_and_reward(x, a, None, is_expert, generator=torch.Generator().manual_seed(7))
    loss_s = head.loss(x, a, None, is_expert, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(loss_f, loss_s, rtol=0, atol=0)
    torch.testing.assert_close(r_f, head.reward(x, a), rtol=0, atol=0)
    assert not r_f.requires_grad and r_f.shape == (3, 10, 1)
