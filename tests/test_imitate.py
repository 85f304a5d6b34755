"""cdred imitate on real MuJoCo and real zarr datasets, tiny agents and short runs.

One module-scoped dmc:cartpole-balance dataset (collect-experts with a tiny agent checkpoint, 2 demos
of 50 agent steps) feeds every run. Covers: a state run's files, metrics rows (eval return, reward
diagnostics on expert/random/current data, both predictor losses) and curve; its checkpoint evaluated
by the evaluate stage; the three ablations; the bad-input errors (pixels without rgb, too few expert
transitions, dims that do not fit the task); and a pixel run on a render-visual dataset.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.agent import AgentConfig  # noqa: E402
from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.datasets import validate  # noqa: E402
from cdred_pipeline.errors import DatasetError  # noqa: E402
from cdred_pipeline.stages import evaluate as ev  # noqa: E402
from cdred_pipeline.stages import imitate as im  # noqa: E402
from cdred_pipeline.stages.common import load_agent  # noqa: E402
from cli_helpers import one_line_error as _one_line_error, run_cli as _cli
from demo_helpers import checkpoint_demos, run_imitate_twice  # noqa: E402

torch.set_num_threads(1)
TASK, LENGTH = "dmc:cartpole-balance", 50
EVAL_KEYS = ("eval_return_mean", "diag_reward_expert", "diag_reward_random", "diag_reward_current",
             "predictor_loss_expert", "predictor_loss_behavioral")


def _rows(art) -> list[dict]:
    return [json.loads(line) for line in (art.path / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _tiny(**kw) -> im.ImitateConfig:
    """A few dozen updates. Cartpole runs 2 env steps per agent step; ``seed_agent_steps`` counts agent
    steps. Updates start once the first episode (50 agent steps) is in the buffer: then a burst of
    ``seed_agent_steps`` updates and ``utd`` per agent step after ``seed_agent_steps`` (so 120 env steps
    with ``seed_agent_steps=10`` give 10 + 50 = 60 updates)."""
    base = dict(env_steps=120, preset="tiny", seed_agent_steps=10, eval_every=120, eval_episodes=1,
                device="cpu")
    return im.ImitateConfig(**{**base, **kw})


# ------------------------------------------------------------------------------ module fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 2-demo cartpole dataset (50 agent steps each) collected with a tiny agent checkpoint."""
    root = tmp_path_factory.mktemp("imitate")
    made = checkpoint_demos(root, TASK, LENGTH)
    store, demos, path = made["store"], made["demos"], made["path"]
    assert validate(path) == []
    return {"root": root, "store": store, "demos": demos, "path": path}


@pytest.fixture(scope="module")
def state_run(data):
    cfg = _tiny(env_steps=160, seed_agent_steps=40, eval_every=80)
    return im.run(cfg, str(data["path"]), data["store"], progress=False)


# ------------------------------------------------------------------------------------- state run
def test_state_run_metrics_curve_and_checkpoint(state_run, data):
    art = state_run
    assert art.complete and art.manifest["inputs"] == {"dataset": data["demos"].key}
    assert {"agent.pt", "metrics.jsonl", "curve.png", "manifest.json"} <= {p.name for p in art.path.iterdir()}
    assert (art.path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(art)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["env_step"] for r in evals] == [100, 160]  # episode ends after 80 env steps and at the end
    # no update before the first episode is stored; then the burst of 40 and one per agent step after 40
    assert [r["update_step"] for r in evals] == [0, 40 + 40]
    assert {"eval_return_mean", "diag_reward_expert", "diag_reward_random", "diag_reward_current"} <= set(evals[0])
    for r in evals[1:]:
        missing = [k for k in EVAL_KEYS if k not in r]
        assert not missing, (missing, r)
        assert all(math.isfinite(r[k]) for k in EVAL_KEYS)
    head = art.manifest["headline"]
    assert head["env_steps"] == 160 and head["eval_return"] == pytest.approx(evals[-1]["eval_return_mean"])
    scores = art.manifest["scores"]
    assert scores["expert"]["return_mean"] == pytest.approx(data["demos"].manifest["scores"]["expert"]["return_mean"])
    for k in ("checkpoint", "metrics", "curve"):  # the manifest's paths name the final folder, not the .partial one
        assert Path(art.manifest["train"][k]).is_file() and Path(art.manifest["train"][k]).parent == art.path, k
    ck = torch.load(art.path / "agent.pt", weights_only=True)
    assert ck["extra"]["task"] == TASK and ck["extra"]["obs"] == "state" and ck["extra"]["dataset"] == data["demos"].key
    assert ck["extra"]["reward_config"]["mode"] == "cdred" and ck["extra"]["episode_length"] == LENGTH


def test_rerun_is_cached(state_run, data):
    cfg = _tiny(env_steps=160, seed_agent_steps=40, eval_every=80)
    again = im.run(cfg, str(data["path"]), data["store"], progress=False)
    assert again.key == state_run.key and again.manifest["finished"] == state_run.manifest["finished"]
    again_by_key = im.run(cfg, data["demos"].key, data["store"], progress=False)  # DATASET as an artifact key
    assert again_by_key.key == state_run.key


def test_same_seed_in_two_processes_gives_the_same_run(data, tmp_path):
    """A seeded run is reproducible: the same command in two fresh processes writes bitwise-identical
    weights and metrics (each process starts from its own unseeded global RNG)."""
    args = ["imitate", str(data["path"]), "--preset", "tiny", "--steps", "120", "--seed-steps", "10",
            "--eval-every", "120", "--eval-episodes", "1", "--seed", "3", "--device", "cpu"]
    (wa, ra), (wb, rb) = run_imitate_twice(_cli, tmp_path, args)
    assert ra == rb and any(r.get("update_step") for r in ra)
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


def test_checkpoint_evaluates_with_the_evaluate_stage(state_run, data):
    cfg = ev.EvalConfig(tremble=(0.0, 0.1), episodes=2, device="cpu")
    art = ev.run(cfg, str(state_run.path / "agent.pt"), data["store"], progress=False)
    rep = json.loads((art.path / "report.json").read_text())
    assert rep["task"] == TASK and rep["obs"] == "state" and len(rep["rows"]) == 4
    assert all(r["length"] == LENGTH for r in rep["rows"])  # episodes as long as the demos
    exp_ret = data["demos"].manifest["scores"]["expert"]["return_mean"]
    rnd_ret = data["demos"].manifest["scores"]["random"]["return_mean"]
    a0 = rep["aggregates"][0]
    assert a0["normalized_score"] == pytest.approx(100 * (a0["return_mean"] - rnd_ret) / (exp_ret - rnd_ret))
    by_key = ev.run(cfg, state_run.key, data["store"], progress=False)  # AGENT as an artifact key
    assert by_key.key == art.key


# ------------------------------------------------------------------------------------- ablations
@pytest.mark.parametrize("change", [{"reward": "red"}, {"reward_space": "obs"}, {"g": "exp"},
                                    {"zeta": 1.0, "alpha": 0.5, "sigma": 5.0}, {"detach_reward_input": True},
                                    {"reward_init": "rnd"}],
                         ids=["red", "obs-space", "g-exp", "zeta-alpha-sigma", "detach", "rnd-init"])
def test_ablations_run(data, change):
    art = im.run(_tiny(**change), str(data["path"]), data["store"], progress=False)
    assert art.complete
    evals = [r for r in _rows(art) if r["kind"] == "eval"]
    assert evals and math.isfinite(evals[-1]["eval_return_mean"]) and evals[-1]["update_step"] == 10 + 50
    assert "diag_reward_expert" in evals[-1] and "predictor_loss_expert" in evals[-1]
    ck = torch.load(art.path / "agent.pt", weights_only=True)
    rc = ck["extra"]["reward_config"]
    if "reward" in change:
        assert rc["mode"] == "red"
    if "g" in change:
        assert rc["g"] == "exp"
    assert (rc["zeta"], rc["alpha"], rc["sigma"]) == (change.get("zeta", 0.8), change.get("alpha", 0.9),
                                                      change.get("sigma", 1.0))  # else the paper's
    assert rc["detach_input"] == change.get("detach_reward_input", False)
    assert rc["init"] == change.get("reward_init", "released")
    x_dim = int(ck["reward_head"]["x_dim"])
    assert x_dim == (5 if change.get("reward_space") == "obs" else AgentConfig.preset("tiny").latent_dim)
    agent, extra = load_agent(art.path / "agent.pt", device="cpu")  # rebuilds the head from its config
    a = agent.act(np.zeros(5, np.float32), t0=True, eval_mode=True)
    assert a.shape == (1,) and np.all(np.abs(a) <= 1)


# ------------------------------------------------------------------------------------- bad input
def test_pixels_without_rgb_says_render_visual(data, tmp_path):
    res = _cli(tmp_path / "wd", "imitate", str(data["path"]), "--obs", "rgb", "--preset", "tiny", "--steps", "10")
    assert res.returncode == DatasetError.exit_code == 4
    assert "render-visual" in _one_line_error(res)
    assert not (tmp_path / "wd" / im.STAGE).exists()


def test_too_few_expert_transitions_gives_the_numbers(data, tmp_path):
    res = _cli(tmp_path / "wd", "imitate", str(data["path"]), "--num-demos", "1", "--preset", "small",
               "--steps", "10")
    assert res.returncode == 4
    line = _one_line_error(res)
    h, b = AgentConfig.preset("small").horizon, AgentConfig.preset("small").batch_size
    assert f"{LENGTH} transitions" in line and f"{LENGTH - h + 1} sub-trajectories" in line
    assert f"needs {b}" in line
    with pytest.raises(DatasetError, match=f"a batch needs {b}"):
        im.run(im.ImitateConfig(env_steps=10, preset="small", num_demos=1, device="cpu"), str(data["path"]),
               ArtifactStore(tmp_path / "wd2"), progress=False)


def test_too_few_expert_transitions_leaves_no_partial_artifact(data, tmp_path):
    """Bad input is refused before the stage opens an artifact (like the dims and rgb checks)."""
    store = ArtifactStore(tmp_path / "wd")
    with pytest.raises(DatasetError):
        im.run(im.ImitateConfig(env_steps=10, preset="small", num_demos=1, device="cpu"), str(data["path"]), store,
               progress=False)
    assert store.list() == [], [f"{a.stage}/{a.path.name}" for a in store.list()]


def test_dataset_dims_that_do_not_fit_the_task(tmp_path):
    from cdred_pipeline.datasets.synthetic import write_random_dataset

    path, _ = write_random_dataset(tmp_path / "odd.zarr", [60, 60], obs_dim=7, action_dim=1, task=TASK)
    res = _cli(tmp_path / "wd", "imitate", str(path), "--preset", "tiny", "--steps", "10")
    assert res.returncode == 4
    line = _one_line_error(res)
    assert "obs_dim 7" in line and "5" in line and TASK in line
    assert not (tmp_path / "wd" / im.STAGE).exists()


def test_bad_options_are_usage_errors(data, tmp_path):
    res = _cli(tmp_path / "wd", "imitate", str(data["path"]), "--tremble", "1.5")
    assert res.returncode == 2 and "tremble" in _one_line_error(res)
    res = _cli(tmp_path / "wd", "imitate", str(data["path"]), "--zeta", "1.5")
    assert res.returncode == 2 and "--zeta must be in [0, 1], got 1.5" in _one_line_error(res)
    res = _cli(tmp_path / "wd", "imitate", str(data["path"]), "--sigma", "0")
    assert res.returncode == 2 and "--sigma must be a finite number > 0, got 0.0" in _one_line_error(res)
    assert not (tmp_path / "wd" / im.STAGE).exists()
    from cdred_pipeline.errors import UsageError

    with pytest.raises(UsageError):
        im.ImitateConfig(obs="rgb", reward_space="obs")
    with pytest.raises(UsageError):
        im.ImitateConfig(reward_space="obs", plan=True)


# ------------------------------------------------------------------------------------- pixels
def test_pixel_run_on_a_rendered_dataset(data):
    from cdred_pipeline.stages import render_visual as rv

    rendered = rv.run(rv.RenderConfig(), str(data["path"]), data["store"], progress=False)
    art = im.run(_tiny(obs="rgb", env_steps=112, seed_agent_steps=5, utd=0.1), rendered.key, data["store"], progress=False)
    assert art.complete
    evals = [r for r in _rows(art) if r["kind"] == "eval"]
    assert evals[-1]["update_step"] == 5 + 5 and all(k in evals[-1] for k in EVAL_KEYS)
    ck = torch.load(art.path / "agent.pt", weights_only=True)
    assert ck["extra"]["obs"] == "rgb" and tuple(ck["obs_shape"]) == (9, 64, 64)
    rep_art = ev.run(ev.EvalConfig(episodes=1, device="cpu"), str(art.path / "agent.pt"), data["store"],
                     progress=False)
    rep = json.loads((rep_art.path / "report.json").read_text())
    assert rep["obs"] == "rgb" and rep["rows"][0]["length"] == LENGTH


def test_unset_reward_weights_stay_out_of_the_cache_key():
    """--zeta/--alpha/--sigma unset, detach off and the released init are the preset's (already in the key through
    the resolved reward-model config), so they stay out of the key; set, they are keyed."""
    assert not {"zeta", "alpha", "sigma", "detach_reward_input", "reward_init"} & set(im.ImitateConfig().key_config())
    assert im.ImitateConfig(zeta=1.0).key_config()["zeta"] == 1.0
    assert im.ImitateConfig(sigma=5.0).key_config()["sigma"] == 5.0
    assert im.ImitateConfig(detach_reward_input=True).key_config()["detach_reward_input"] is True
    assert im.ImitateConfig(reward_init="rnd").key_config()["reward_init"] == "rnd"

