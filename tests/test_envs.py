"""Environment layer (docs/design.md §2): real MuJoCo physics and rendering, no mocks.

Covers every suite's factory on real episodes, action clipping, seeded resets, bitwise re-rendering from
stored physics states in fresh envs, the per-episode model arrays, Meta-World's scripted experts, the
registry/dims and the `cdred envs` CLI in a subprocess.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import subprocess

import numpy as np
import pytest

from cli_helpers import CDRED as CDRED_SCRIPT

from cdred_pipeline.envs import (
    InvalidActionError,
    TaskSpec,
    list_tasks,
    make_env,
    parse_task,
    scripted_policy,
    suite_available,
)
from cdred_pipeline.errors import CdredError, MissingDependencyError, UsageError

CDRED = str(CDRED_SCRIPT)
PAPER_MW = ("box-close", "bin-picking", "reach-wall", "stick-pull", "stick-push", "soccer")


def _run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([CDRED, *args], capture_output=True, text=True, timeout=120, env=env)


def _rollout(env, seed: int, n: int, action_seed: int = 0):
    """obs, rewards and physics states of ``n`` steps with seeded uniform actions."""
    rng = np.random.default_rng(action_seed)
    o, _ = env.reset(seed=seed)
    obs, rews, states = [o], [], [env.get_physics_state()]
    for _ in range(n):
        o, r, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        obs.append(o)
        rews.append(r)
        states.append(env.get_physics_state())
        if term or trunc:
            break
    return np.array(obs), np.array(rews), np.array(states)


# ------------------------------------------------------------------------------- task ids
def test_parse_task_canonical_ids_and_aliases():
    assert parse_task("dmc:cheetah-run").task == "dmc:cheetah-run"
    assert parse_task("dmc:cartpole-swingup-sparse").task == "dmc:cartpole-swingup_sparse"
    assert parse_task("dmc:cup-catch").task == "dmc:ball_in_cup-catch"
    assert parse_task("mw:box-close-v3") == ("mw", "box-close", "mw:box-close")
    assert parse_task("ms2:LiftCube-v0").task == "ms2:lift-cube"
    assert parse_task("gym:Pendulum-v1").suite == "gym"


@pytest.mark.parametrize("bad, near", [("dmc:cheetah-runn", "dmc:cheetah-run"), ("mw:box-clos", "mw:box-close"),
                                       ("cheetah-run", "dmc:cheetah-run"), ("gym:Pendulum-v9", "gym:Pendulum-v1")])
def test_unknown_task_is_usage_error_with_closest_ids(bad, near):
    with pytest.raises(UsageError) as e:
        make_env(bad)
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg and near in msg


def test_cli_unknown_task_exits_2_with_one_line_and_closest_ids():
    out = _run_cli("envs", "dmc:cheetah-runn")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "dmc:cheetah-run" in lines[0]


def test_cli_envs_dmc_lists_every_suite_task_with_right_dims():
    from dm_control import suite

    out = _run_cli("envs", "--suite", "dmc")
    assert out.returncode == 0, out.stderr
    rows = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines() if ln.startswith("dmc:")}
    assert len(rows) == len(suite.ALL_TASKS)
    for task, obs, act in [("dmc:cheetah-run", "17", "6"), ("dmc:humanoid-walk", "67", "21"),
                           ("dmc:dog-stand", "223", "38")]:
        assert rows[task][1:3] == [obs, act]
        assert rows[task][3:6] == ["2", "500", "yes"]


def test_list_tasks_mw_has_50_v3_tasks_obs39_act4_and_ms2_reason():
    mw = list_tasks("mw")
    assert len(mw) == 50 and {(s.obs_dim, s.action_dim) for s in mw} == {(39, 4)}
    assert all(s.episode_length == 100 and s.action_repeat == 2 for s in mw)
    ok, why = suite_available("ms2")
    if not ok:
        assert "ManiSkill2" in why or "Vulkan" in why
    assert {s.task for s in list_tasks("ms2")} >= {"ms2:lift-cube", "ms2:pick-cube", "ms2:turn-faucet"}
    out = _run_cli("envs", "--suite", "mw")
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("mw:")]
    assert out.returncode == 0 and len(rows) == 50 and {(r[1], r[2]) for r in rows} == {("39", "4")}


@pytest.mark.parametrize("task", ["dmc:cheetah-run", "dmc:quadruped-escape", "mw:box-close", "mw:stick-pull"])
def test_recorded_dims_match_a_built_env(task):
    listed = {s.task: s for s in list_tasks(parse_task(task).suite)}[task]
    env = make_env(task)
    s = env.spec_info
    assert (listed.obs_dim, listed.action_dim, listed.physics_state_dim) == (s.obs_dim, s.action_dim,
                                                                            s.physics_state_dim)
    env.close()


# ------------------------------------------------------------------------------- real episodes
@pytest.mark.parametrize("task, ep_len", [("dmc:cartpole-balance", 500), ("mw:reach", 100),
                                          ("gym:Pendulum-v1", 200), ("gym:InvertedDoublePendulum-v5", None)])
def test_factory_steps_real_episodes(task, ep_len):
    env = make_env(task, seed=0)
    spec = env.spec_info
    assert isinstance(spec, TaskSpec) and spec.task == parse_task(task).task
    for ep in range(2):
        o, info = env.reset(seed=ep)
        assert o.dtype == np.float32 and o.shape == (spec.obs_dim,) and info["success"] is False
        n, total, done = 0, 0.0, False
        while not done:
            o, r, term, trunc, info = env.step(env.action_space.sample())
            assert o.dtype == np.float32 and o.shape == (spec.obs_dim,) and np.isfinite(o).all()
            assert isinstance(r, float) and isinstance(info["success"], bool)
            assert info["executed_action"].dtype == np.float32
            n, total, done = n + 1, total + r, term or trunc
        if ep_len is not None:
            assert n == ep_len and trunc and not term
        else:  # InvertedDoublePendulum terminates when it falls
            assert term or n == spec.episode_length
    with pytest.raises(UsageError):
        env.step(env.action_space.sample())  # episode over: reset first
    env.close()


def test_maniskill2_steps_or_is_skipped_with_reason():
    ok, why = suite_available("ms2")
    if not ok:
        with pytest.raises(MissingDependencyError) as e:
            make_env("ms2:lift-cube")
        msg = str(e.value)
        assert "\n" not in msg and ("ManiSkill2" in msg or "Vulkan" in msg) and "README" in msg
        pytest.skip(f"ManiSkill2 not usable here: {why}")
    env = make_env("ms2:lift-cube", seed=0)
    o, _ = env.reset(seed=0)
    for _ in range(5):
        o, r, term, trunc, info = env.step(env.action_space.sample())
    assert o.dtype == np.float32 and isinstance(info["success"], bool)
    state = env.get_physics_state()
    env.set_physics_state(state)
    env.close()


def test_dmc_default_episode_length_is_500_agent_steps_with_repeat_2():
    env = make_env("dmc:cartpole-balance", seed=0, action_repeat=1, episode_length=7)
    env.reset(seed=0)
    phys = env._physics  # the dm_control Physics: 7 agent steps x repeat 1 = 7 control steps
    t0 = phys.time()
    for _ in range(7):
        *_, trunc, _ = env.step(np.zeros(1))
    assert trunc and phys.time() - t0 == pytest.approx(7 * env._env.control_timestep())
    env2 = make_env("dmc:cartpole-balance", seed=0)
    env2.reset(seed=0)
    t0 = env2._physics.time()
    env2.step(np.zeros(1))
    assert env2._physics.time() - t0 == pytest.approx(2 * env2._env.control_timestep())


# ------------------------------------------------------------------------------- actions
@pytest.mark.parametrize("task", ["dmc:cheetah-run", "mw:box-close", "gym:Pendulum-v1"])
def test_actions_outside_range_are_clipped(task):
    e1, e2 = make_env(task), make_env(task)
    a = e1.action_space.shape[0]
    raw = np.linspace(-5, 5, a).astype(np.float32)
    e1.reset(seed=3)
    e2.reset(seed=3)
    for _ in range(5):
        o1, r1, *_, i1 = e1.step(raw)
        o2, r2, *_, i2 = e2.step(np.clip(raw, -1, 1))
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2
    np.testing.assert_array_equal(i1["executed_action"], np.clip(raw, -1, 1))
    e1.close()
    e2.close()


def test_non_finite_or_misshapen_actions_raise():
    env = make_env("dmc:cheetah-run")
    env.reset(seed=0)
    for bad in (np.full(6, np.nan), np.array([0, 0, np.inf, 0, 0, 0]), np.zeros(5)):
        with pytest.raises(InvalidActionError) as e:
            env.step(bad)
        assert e.value.exit_code == 2
    env.close()


# ------------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("task", ["dmc:walker-walk", "mw:soccer", "gym:Hopper-v5"])
def test_same_seed_same_trajectory_other_seed_differs(task):
    a = _rollout(make_env(task, seed=1), seed=11, n=30)
    b = _rollout(make_env(task, seed=2), seed=11, n=30)
    c = _rollout(make_env(task, seed=1), seed=12, n=30)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0][0], c[0][0])  # a different seed: another initial state / goal


def test_reset_without_seed_follows_make_env_seed():
    e1, e2, e3 = make_env("mw:reach", seed=5), make_env("mw:reach", seed=5), make_env("mw:reach", seed=6)
    firsts = [[e.reset()[0] for _ in range(3)] for e in (e1, e2, e3)]
    for x, y in zip(firsts[0], firsts[1]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(firsts[0][1], firsts[0][2])  # a new goal every episode
    assert not np.array_equal(firsts[0][0], firsts[2][0])


def test_meta_world_goal_sampling_leaves_the_global_rng_as_it_was():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    env = make_env("mw:box-close", seed=0)
    env.reset(seed=4)
    env.step(np.zeros(4))
    assert np.array_equal(np.random.get_state()[1], before)
    env.close()


# ------------------------------------------------------------------------------- physics state / frames
def _frames_and_states(task: str, n: int, **kw):
    env = make_env(task, seed=0, obs="rgb", **kw)
    rng = np.random.default_rng(1)
    o, _ = env.reset(seed=7)
    assert o.shape == (9, 64, 64) and o.dtype == np.uint8
    np.testing.assert_array_equal(o[0:3], o[6:9])  # reset: the first frame three times
    frames, states = [o[6:9].transpose(1, 2, 0).copy()], [env.get_physics_state()]
    for _ in range(n):
        prev = o
        o, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        np.testing.assert_array_equal(o[0:6], prev[3:9])  # the stack shifts by one frame
        frames.append(o[6:9].transpose(1, 2, 0).copy())
        states.append(env.get_physics_state())
    np.testing.assert_array_equal(env.render_frame(), frames[-1])  # same pixels as the rgb obs
    env.close()
    return frames, states


@pytest.mark.parametrize("task", ["dmc:cheetah-run", "dmc:reacher-hard", "dmc:quadruped-escape",
                                  "dmc:manipulator-bring_ball", "mw:box-close", "mw:stick-pull",
                                  "gym:Hopper-v5"])
def test_physics_state_rerenders_rgb_obs_bitwise_in_fresh_env(task):
    frames, states = _frames_and_states(task, n=12)
    assert all(s.dtype == np.float64 and s.shape == states[0].shape for s in states)
    fresh = make_env(task, seed=99)  # never reset
    other = make_env(task, seed=3)
    other.reset(seed=1234)  # reset to another episode (other goal, terrain, target) first
    other.render_frame()  # its GL context exists before the restore
    for t in (12, 0, 5):
        fresh.set_physics_state(states[t])
        np.testing.assert_array_equal(fresh.render_frame(), frames[t])
        other.set_physics_state(states[t])
        np.testing.assert_array_equal(other.render_frame(), frames[t])
        np.testing.assert_array_equal(other.get_physics_state(), states[t])
    assert fresh.spec_info.physics_state_dim == states[0].size
    fresh.close()
    other.close()


def test_meta_world_state_needs_the_model_arrays():
    """Negative control: restoring qpos/qvel/mocap alone in an env with another goal misses the frame."""
    frames, states = _frames_and_states("mw:box-close", n=2)
    other = make_env("mw:box-close", seed=3)
    other.reset(seed=1234)
    own_model_part = other.get_physics_state()
    n_sim = other._n_sim
    mixed = np.concatenate([states[2][:n_sim], own_model_part[n_sim:]])
    other.set_physics_state(mixed)
    assert not np.array_equal(other.render_frame(), frames[2])
    other.set_physics_state(states[2])
    np.testing.assert_array_equal(other.render_frame(), frames[2])
    other.close()


def test_render_profiles_differ_and_are_recorded():
    fast, default = make_env("dmc:cheetah-run"), make_env("dmc:cheetah-run", render_profile="default")
    assert fast.spec_info.render_profile == "fast" and default.spec_info.render_profile == "default"
    fast.reset(seed=0)
    default.reset(seed=0)
    a, b = fast.render_frame(), default.render_frame()
    assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b)
    assert fast.render_frame(32).shape == (32, 32, 3)
    with pytest.raises(UsageError):
        fast.render_frame(camera="no-such-camera")
    fast.close()
    default.close()


def test_dmc_model_fields_cover_resets():
    """Every model array a dm_control task changes across resets is carried in its physics state."""
    from cdred_pipeline.envs.dmc import DMC_MODEL_FIELDS
    from dm_control import suite

    def arrays(m):  # mesh_polynormal: collision bookkeeping MuJoCo fills lazily; not rendered
        return {k: getattr(m, k).copy() for k in dir(m) if not k.startswith("_") and k != "mesh_polynormal"
                and isinstance(getattr(m, k, None), np.ndarray) and getattr(m, k).dtype.kind in "fiu"}

    for domain, task in suite.ALL_TASKS:
        env = make_env(f"dmc:{domain}-{task}", episode_length=3)
        model = env._physics.model.ptr
        env.reset(seed=0)
        base = arrays(model)
        env.reset(seed=1)
        for _ in range(3):
            env.step(env.action_space.sample())
        changed = {k for k, v in arrays(model).items() if not np.array_equal(v, base[k])}
        allowed = set(DMC_MODEL_FIELDS.get(domain, ())) | ({"hfield_data"} if (domain, task) == ("quadruped",
                                                                                                 "escape") else set())
        assert changed <= allowed, f"{domain}-{task} changes {changed - allowed} per episode"
        env.close()


@pytest.mark.parametrize("name", PAPER_MW)
def test_meta_world_model_fields_cover_resets(name):
    env = make_env(f"mw:{name}")

    def arrays():  # mesh_polynormal is collision bookkeeping MuJoCo fills lazily; it is not rendered
        m = env._env.model  # the model of the episode's env (a new one every reset)
        return {k: getattr(m, k).copy() for k in dir(m) if not k.startswith("_") and k != "mesh_polynormal"
                and isinstance(getattr(m, k, None), np.ndarray) and getattr(m, k).dtype.kind in "fiu"}

    env.reset(seed=0)
    base = arrays()
    env.reset(seed=1)
    env.step(np.zeros(4))
    changed = {k for k, v in arrays().items() if not np.array_equal(v, base[k])}
    assert changed <= {"body_pos", "site_pos"}
    env.close()


# ------------------------------------------------------------------------------- scripted experts
def test_meta_world_scripted_experts_solve_paper_tasks():
    solved = {}
    for name in PAPER_MW:
        env = make_env(f"mw:{name}", seed=0)
        policy = scripted_policy(f"mw:{name}")
        wins = 0
        for seed in range(3):
            o, _ = env.reset(seed=seed)
            done = ok = False
            while not done:
                a = policy(o)
                assert a.shape == (4,) and a.dtype == np.float32 and np.abs(a).max() <= 1
                o, _, term, trunc, info = env.step(a)
                ok, done = ok or info["success"], term or trunc
            wins += ok
        solved[name] = wins
        env.close()
    assert sum(w >= 2 for w in solved.values()) >= 4, solved


def test_scripted_policy_only_for_meta_world():
    with pytest.raises(UsageError):
        scripted_policy("dmc:cheetah-run")


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw", [dict(obs="depth"), dict(tremble=1.5), dict(tremble=-0.1), dict(image_size=0),
                                dict(render_profile="pretty"), dict(action_repeat=0), dict(episode_length=-3),
                                dict(seed=-1), dict(camera="no-such-camera")])
def test_bad_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        make_env("dmc:cartpole-balance", **kw)


def test_gym_non_mujoco_env_has_no_physics_state_or_frames():
    env = make_env("gym:Pendulum-v1")
    env.reset(seed=0)
    with pytest.raises(UsageError, match="MuJoCo"):
        env.get_physics_state()
    with pytest.raises(UsageError, match="MuJoCo"):
        env.render_frame()
    with pytest.raises(UsageError, match="MuJoCo"):
        make_env("gym:Pendulum-v1", obs="rgb")
    env.close()


def test_rendering_without_gl_backend_names_mujoco_gl_egl(monkeypatch):
    from cdred_pipeline.envs import check_gl_env, check_gl_for_rendering

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(CdredError, match="MUJOCO_GL=egl"):
        check_gl_for_rendering()
    monkeypatch.setenv("MUJOCO_GL", "vulkan")
    with pytest.raises(CdredError, match="MUJOCO_GL=egl"):
        check_gl_env()


def test_cli_invalid_mujoco_gl_is_one_line_naming_egl():
    out = _run_cli("envs", "dmc:cheetah-run", "--steps", "1", env_extra={"MUJOCO_GL": "bogus"})
    assert out.returncode == MissingDependencyError.exit_code
    assert "MUJOCO_GL=egl" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_steps_a_task():
    out = _run_cli("envs", "mw:reach", "--steps", "20")
    assert out.returncode == 0, out.stderr
    assert "obs 39, action 4" in out.stdout and "stepped 20 agent steps" in out.stdout


# ------------------------------------------------------------------------------- slow: whole registries
@pytest.mark.slow
def test_recorded_dims_table_matches_every_built_env():
    """task_dims.json (what `cdred envs` prints without building envs) equals a live probe of all tasks."""
    import json

    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    from cdred_pipeline.envs import probe_dims
    from cdred_pipeline.envs.spec import DIMS_FILE, dims_versions

    recorded = json.loads(DIMS_FILE.read_text())
    assert recorded["versions"] == dims_versions()
    assert {k for k in recorded["tasks"] if k.startswith("mw:")} == {f"mw:{n[:-3]}" for n in ALL_V3_ENVIRONMENTS}
    for task, dims in recorded["tasks"].items():
        assert probe_dims(task) == dims, task


@pytest.mark.slow
def test_meta_world_model_fields_cover_resets_all_50():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    for full in ALL_V3_ENVIRONMENTS:
        test_meta_world_model_fields_cover_resets(full[: -len("-v3")])
