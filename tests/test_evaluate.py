"""cdred evaluate on real MuJoCo (dmc:cartpole-balance, 50-step episodes) with tiny agents.

Covers: p = 0 is deterministic for a fixed seed; p = 1 executes only the tremble's random draws, so
two different agents get identical returns, equal to a uniform-random rollout over the same seeds;
the trembles counted match p within 3 sigma; report.json validates against REPORT_SCHEMA; the mp4
opens with one frame per step plus the reset frame; bad checkpoints, p outside [0, 1] and pixel/state
mismatches are one-line errors.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.agent import AgentConfig, TDMPC2Agent  # noqa: E402
from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.envs import make_env  # noqa: E402
from cdred_pipeline.errors import CdredError, UsageError  # noqa: E402
from cdred_pipeline.stages import evaluate as ev  # noqa: E402
from cli_helpers import one_line_error as _one_line_error, run_cli as _cli

torch.set_num_threads(1)
TASK, LENGTH = "dmc:cartpole-balance", 50


# ------------------------------------------------------------------------------------- helpers




def _save_agent(path: Path, *, seed: int, obs_shape: tuple[int, ...] = (5,), **extra: Any) -> Path:
    agent = TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=LENGTH, seed=seed), obs_shape, 1,
                        device="cpu")
    agent.save(path, extra={"task": TASK, "obs": "state", "episode_length": LENGTH, **extra})
    return path


_TYPES = {"object": dict, "array": list, "string": str, "number": (int, float), "integer": int, "boolean": bool}


def _check_schema(value: Any, schema: dict, where: str = "$") -> list[str]:
    """A small validator for the JSON-schema subset REPORT_SCHEMA uses (type, required, properties, items)."""
    errs: list[str] = []
    t = schema.get("type")
    if t is not None and not isinstance(value, _TYPES[t]):
        return [f"{where}: expected {t}, got {type(value).__name__}"]
    if isinstance(value, dict):
        errs += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errs += _check_schema(value[k], sub, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errs += _check_schema(item, schema["items"], f"{where}[{i}]")
    return errs


def test_schema_checker_rejects_bad_reports():
    good = {"agent": "a", "task": TASK, "obs": "state", "config": {}, "scores": {}, "rows": [], "aggregates": []}
    assert _check_schema(good, ev.REPORT_SCHEMA) == []
    assert _check_schema({**good, "rows": [{"p": 0}]}, ev.REPORT_SCHEMA)  # rows miss keys
    assert _check_schema({**good, "task": 3}, ev.REPORT_SCHEMA)
    assert _check_schema({k: v for k, v in good.items() if k != "aggregates"}, ev.REPORT_SCHEMA)


# ------------------------------------------------------------------------------ module fixtures
@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    """Two different untrained tiny state agents for cartpole-balance and a work dir."""
    root = tmp_path_factory.mktemp("eval")
    return {
        "root": root, "store": ArtifactStore(root / "wd"),
        "a": _save_agent(root / "a.pt", seed=0), "b": _save_agent(root / "b.pt", seed=1),
    }


def _report(art) -> dict:
    return json.loads((art.path / "report.json").read_text())


# ------------------------------------------------------------------------------------- behaviour
def test_p0_is_deterministic_for_a_fixed_seed(agents):
    cfg = ev.EvalConfig(tremble=(0.0,), episodes=3, seeds=(0, 1), device="cpu")
    scores = {"random": {"return_mean": 0.0}, "expert": {"return_mean": 100.0}}
    first = _report(ev.run(cfg, str(agents["a"]), agents["store"], force=True, progress=False, scores=scores))
    second_art = ev.run(cfg, str(agents["a"]), agents["store"], force=True, progress=False, scores=scores)
    second = _report(second_art)
    assert first["rows"] == second["rows"] and len(first["rows"]) == 6
    assert all(r["trembles"] == 0 and r["length"] == LENGTH for r in first["rows"])
    assert len({r["episode_seed"] for r in first["rows"]}) == 6  # every episode its own seed
    agg = first["aggregates"][0]
    assert agg["normalized_score"] == pytest.approx(agg["return_mean"])  # 100 (R - 0) / (100 - 0)
    assert agg["return_ci95"][0] <= agg["return_seed_mean"] <= agg["return_ci95"][1]
    # p is part of the cache key
    other = ev.run(ev.EvalConfig(tremble=(0.1,), episodes=1, seeds=(0,), device="cpu"), str(agents["a"]),
                   agents["store"], progress=False)
    assert other.key != second_art.key


def test_rollout_loop_on_three_envs_gives_the_one_env_episodes(agents):
    from cdred_pipeline.seeding import derive
    from cdred_pipeline.vector import run_eval_episodes

    agent = TDMPC2Agent.load(agents["a"], device="cpu")
    seeds = [derive(0, "eval-reset", i) for i in range(4)]
    runs = {}
    for k in (1, 3):
        envs = [make_env(TASK, seed=0, tremble=0.3, episode_length=LENGTH) for _ in range(k)]
        try:
            runs[k] = run_eval_episodes(envs, agent, seeds, filmed={1}, video_size=32)
        finally:
            for env in envs:
                env.close()
    for i, ((a, fa), (b, fb)) in enumerate(zip(runs[1], runs[3])):
        # same reset seed, same tremble draws; the batched matmul rounds unlike the one-row one (~1e-7)
        assert {k: a[k] for k in a if k != "return"} == {k: b[k] for k in b if k != "return"}, i
        assert b["return"] == pytest.approx(a["return"], rel=1e-5, abs=1e-5), i
        assert (fa is None) == (fb is None) == (i != 1)
    assert len(runs[1][1][1]) == len(runs[3][1][1]) == LENGTH + 1 and runs[1][1][1][0].shape == (32, 32, 3)


def test_p1_gives_the_random_policy_returns(agents):
    cfg = ev.EvalConfig(tremble=(1.0,), episodes=3, seeds=(0, 5), device="cpu")
    ra = _report(ev.run(cfg, str(agents["a"]), agents["store"], progress=False))["rows"]
    rb = _report(ev.run(cfg, str(agents["b"]), agents["store"], progress=False))["rows"]
    assert [r["episode_seed"] for r in ra] == [r["episode_seed"] for r in rb]
    assert [r["return"] for r in ra] == [r["return"] for r in rb]
    assert all(r["trembles"] == r["length"] == LENGTH for r in ra)
    # the same as a uniform-random policy over the same episode seeds: every executed action is a tremble draw
    env = make_env(TASK, tremble=1.0, episode_length=LENGTH, seed=0)
    for r in ra:
        env.reset(seed=r["episode_seed"])
        ret, done = 0.0, False
        while not done:
            _, rew, term, trunc, info = env.step(np.zeros(1, np.float32))
            assert info["trembled"]
            ret += float(rew)
            done = term or trunc
        assert ret == pytest.approx(r["return"], rel=1e-9, abs=1e-9)
    env.close()
    # ...while at p = 0 the two agents act differently (the equality above is not a coincidence)
    c0 = ev.EvalConfig(tremble=(0.0,), episodes=1, seeds=(0,), device="cpu")
    a0 = _report(ev.run(c0, str(agents["a"]), agents["store"], progress=False))["rows"][0]["return"]
    b0 = _report(ev.run(c0, str(agents["b"]), agents["store"], progress=False))["rows"][0]["return"]
    assert a0 != b0


def test_trembles_counted_match_p_within_3_sigma(agents):
    p = 0.3
    cfg = ev.EvalConfig(tremble=(p,), episodes=20, seeds=(3,), device="cpu")
    rep = _report(ev.run(cfg, str(agents["a"]), agents["store"], progress=False))
    steps = sum(r["length"] for r in rep["rows"])
    trembles = sum(r["trembles"] for r in rep["rows"])
    assert steps >= 1000
    sigma = math.sqrt(p * (1 - p) / steps)
    assert abs(trembles / steps - p) < 3 * sigma, (trembles, steps)
    assert rep["aggregates"][0]["tremble_rate"] == pytest.approx(trembles / steps)


# ------------------------------------------------------------------------------------- CLI report
def test_cli_sweep_writes_report_csv_plot_and_video(agents, tmp_path):
    wd = tmp_path / "wd"
    res = _cli(wd, "evaluate", str(agents["a"]), "--tremble", "0,0.5", "--episodes", "2", "--seeds", "0,1",
               "--videos", "1")
    assert res.returncode == 0, res.stderr
    arts = [p for p in (wd / ev.STAGE).iterdir() if not p.name.startswith(".")]
    assert len(arts) == 1
    art = arts[0]
    rep = json.loads((art / "report.json").read_text())
    assert _check_schema(rep, ev.REPORT_SCHEMA) == []
    assert [a["p"] for a in rep["aggregates"]] == [0.0, 0.5]
    assert len(rep["rows"]) == 2 * 2 * 2 and rep["task"] == TASK and rep["obs"] == "state"
    assert all(a["episodes"] == 4 and set(a["seed_means"]) == {"0", "1"} for a in rep["aggregates"])
    with open(art / "episodes.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rep["rows"])
    assert [float(r["return"]) for r in csv_rows] == pytest.approx([r["return"] for r in rep["rows"]])
    png = (art / "tremble.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 550  # the return panel alone: DMControl has no success flag
    # the printed table: a header and one line per p, success "-" (no success flag), not 0.00
    assert "return mean" in res.stdout and f"key:    {art.name}" in res.stdout
    p_rows = [ln.split() for ln in res.stdout.splitlines() if ln.strip().startswith(("0.00", "0.50"))]
    assert len(p_rows) == 2 and all(r[-2] == "-" for r in p_rows), p_rows
    videos = sorted((art / "videos").glob("*.mp4"))
    assert len(videos) == 1
    import imageio.v2 as imageio

    reader = imageio.get_reader(videos[0])
    try:
        frames = [f for f in reader]
        fps = reader.get_meta_data()["fps"]
    finally:
        reader.close()
    row = next(r for r in rep["rows"] if (r["p"], r["seed"], r["episode"]) == (0.0, 0, 0))
    assert videos[0].name == "p0_seed0_ep0.mp4"
    assert len(frames) == row["length"] + 1 == LENGTH + 1  # the reset frame plus one per step
    assert frames[0].shape == (256, 256, 3)
    assert fps == pytest.approx(1.0 / make_env(TASK).unwrapped.control_dt, rel=0.02)


# ------------------------------------------------------------------------------------- bad input
def _foreign_file(path: Path, kind: str) -> None:
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif kind == "json":
        path.write_text('{"task": "dmc:cartpole-balance"}')
    elif kind == "torch-dict":
        torch.save({"model": torch.zeros(2)}, path)
    elif kind == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a", "b")


@pytest.mark.parametrize("kind", ["text", "empty", "random", "json", "torch-dict", "zip"])
def test_not_a_checkpoint_is_a_one_line_cdred_error(agents, tmp_path, kind):
    bad = tmp_path / f"{kind}.pt"
    _foreign_file(bad, kind)
    with pytest.raises(CdredError) as info:
        ev.run(ev.EvalConfig(device="cpu"), str(bad), ArtifactStore(tmp_path / "wd"), progress=False)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "checkpoint" in msg
    assert not (tmp_path / "wd" / ev.STAGE).exists() or not any((tmp_path / "wd" / ev.STAGE).iterdir())


def test_not_a_checkpoint_via_cli(agents, tmp_path):
    bad = tmp_path / "notes.pt"
    _foreign_file(bad, "text")
    res = _cli(tmp_path / "wd", "evaluate", str(bad))
    assert res.returncode != 0
    line = _one_line_error(res)
    assert str(bad) in line and "checkpoint" in line


def test_truncated_checkpoint_is_a_one_line_error(agents, tmp_path):
    cut = tmp_path / "cut.pt"
    data = agents["a"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    res = _cli(tmp_path / "wd", "evaluate", str(cut))
    assert res.returncode != 0
    assert str(cut) in _one_line_error(res)
    with pytest.raises(CdredError):
        ev.run(ev.EvalConfig(device="cpu"), str(cut), ArtifactStore(tmp_path / "wd2"), progress=False)


@pytest.mark.parametrize("p", ["1.5", "-0.1", "nan", "0,2"])
def test_tremble_outside_unit_interval_is_rejected(agents, tmp_path, p):
    res = _cli(tmp_path / "wd", "evaluate", str(agents["a"]), "--tremble", p)
    assert res.returncode == 2, res.stderr
    assert "tremble" in _one_line_error(res)
    with pytest.raises(UsageError):
        ev.EvalConfig(tremble=ev.parse_tremble_list(p))


def test_pixel_agent_on_a_state_env_and_the_reverse(agents, tmp_path):
    # a pixel agent whose checkpoint claims state observations: evaluated on a state env
    pix = _save_agent(tmp_path / "pixel.pt", seed=0, obs_shape=(9, 64, 64))
    res = _cli(tmp_path / "wd", "evaluate", str(pix), "--episodes", "1")
    assert res.returncode != 0
    line = _one_line_error(res)
    assert "(9, 64, 64)" in line and "(5,)" in line
    # a state agent whose checkpoint claims rgb: evaluated on a pixel env
    st = _save_agent(tmp_path / "state.pt", seed=0, obs="rgb")
    with pytest.raises(CdredError, match=r"\(5,\).*\(9, 64, 64\)"):
        ev.run(ev.EvalConfig(episodes=1, device="cpu"), str(st), ArtifactStore(tmp_path / "wd2"), progress=False)
