"""render-visual on real MuJoCo and real zarr stores.

Datasets are made by stepping the real online pixel env (``make_env(task, obs="rgb")``) with seeded
random actions, storing ``get_physics_state()`` and the frame the env shows at every step (the last
frame of its stacked observation). render-visual must reproduce those frames bitwise from the states
alone, with one worker or a process pool of several (the executor of ``--workers``), after a SIGKILL
and a resume, and must report (not accept) probe
hashes it cannot reproduce.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline import render as R  # noqa: E402
from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.datasets import EpisodeWriter, copy_dataset, load_episodes, open_dataset  # noqa: E402
from cdred_pipeline.datasets import layout as L  # noqa: E402
from cdred_pipeline.errors import DatasetError, MissingDependencyError, UsageError  # noqa: E402
from cdred_pipeline.stages import render_visual as rv  # noqa: E402
from cli_helpers import CDRED, kill_cli_when  # noqa: E402
from store_helpers import file_stamps  # noqa: E402

DMC, MW = "dmc:cartpole-balance", "mw:reach"


# ------------------------------------------------------------------------------------- helpers
def cdred_cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", **(extra_env or {})}
    return subprocess.run([str(CDRED), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    ds = open_dataset(path)
    return {k: np.asarray(ds.group[k][:]) for k in ds.keys()}


def assert_same_store(a: Path, b: Path) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and np.array_equal(xa[k], xb[k]), k
    assert open_dataset(a).attrs == open_dataset(b).attrs


def _set_attrs(path: Path, attrs: dict) -> None:
    g = L.open_group(path, mode="r+")
    g.attrs.update(attrs)
    L.consolidate(path)


def make_datasets(root: Path) -> dict[str, Path]:
    """The random-action pixel datasets of every render test (episode 0 probed, frames stored)."""
    return {
        "root": root,
        DMC: R.write_random_dataset(root / "cart.zarr", DMC, episodes=3, episode_length=12, seed=1, rgb=True),
        MW: R.write_random_dataset(root / "reach.zarr", MW, episodes=2, episode_length=8, seed=2, rgb=True),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_datasets(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="module")
def one_worker(data: dict[str, Path]) -> dict[str, object]:
    """The uninterrupted one-worker run of each dataset (the reference for the other tests)."""
    store = ArtifactStore(data["root"] / "runs1")
    out = {"store": store}
    for task in (DMC, MW):
        before = file_stamps(data[task])
        out[task] = rv.run(rv.RenderConfig(chunk_episodes=1), data[task], store, progress=False)
        assert file_stamps(data[task]) == before, "the input dataset was modified"
    return out


# ------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("task", [DMC, MW])
def test_rendered_frames_equal_online_pixel_env_bitwise(data, one_worker, task):
    art = one_worker[task]
    assert art.complete and art.manifest["headline"]["verify"] == "ok"
    assert all(c["match"] and c["row_matches"] for c in art.manifest["verification"]["checks"])
    src, out = open_dataset(data[task]), open_dataset(art.path / rv.DATASET_NAME)
    cam = src.cameras[0]
    assert cam == ("0" if task == DMC else "corner4")
    online = np.asarray(src.group[f"data/rgb/{cam}"][:])
    rendered = np.asarray(out.group[f"data/rgb/{cam}"][:])
    assert rendered.shape == (src.num_steps, 64, 64, 3) and rendered.dtype == np.uint8
    assert np.array_equal(rendered, online)  # every step, bitwise
    assert np.array_equal(out.group[f"meta/final_rgb/{cam}"][:], src.group[f"meta/final_rgb/{cam}"][:])
    for k in ("data/physics_state", "data/obs", "data/action", "meta/episode_ends", "meta/final_obs"):
        assert np.array_equal(out.group[k][:], src.group[k][:]), k
    # the reader stacks frames exactly as the online env does
    demos = load_episodes(out.path, obs="rgb")
    assert demos[0]["obs"].shape == (src.lengths[0] + 1, 9, 64, 64)
    # settings recorded in the dataset and the manifest
    rec = out.attrs["render"][cam]
    assert rec["size"] == 64 and rec["render_profile"] == "fast" and rec["task"] == task
    assert rec["gl_backend"].startswith("egl")
    assert art.manifest["render"]["frames"] == src.num_steps + src.num_episodes
    # the contact sheet is a real PNG next to the dataset
    import imageio.v3 as iio

    sheet = iio.imread(art.path / f"contact_sheet_{cam}.png")
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.shape[0] >= 64


def test_two_workers_equal_one_worker_bitwise(data, one_worker):
    store = ArtifactStore(data["root"] / "runs2")
    art = rv.run(rv.RenderConfig(workers=2, chunk_episodes=1), data[DMC], store, progress=False)
    ref = one_worker[DMC]
    assert art.key == ref.key  # workers and range size are not part of the cache key
    assert art.manifest["render"]["executor"] == "process" and art.manifest["render"]["workers"] == 2
    assert ref.manifest["render"]["executor"] == "local"
    assert_same_store(art.path / rv.DATASET_NAME, ref.path / rv.DATASET_NAME)
    assert len({u["pid"] for u in art.manifest["unit_info"].values()}) >= 1
    assert all(u["pid"] != os.getpid() for u in art.manifest["unit_info"].values())  # rendered in workers
    assert not (art.path / "parts").exists()


def test_cache_hit_and_artifact_key_resolution(data, one_worker):
    store, ref = one_worker["store"], one_worker[DMC]
    again = rv.run(rv.RenderConfig(), data[DMC], store, progress=False)
    assert again.path == ref.path and again.manifest["finished"] == ref.manifest["finished"]
    assert rv.resolve_dataset(ref.key[:6], store) == ref.path / rv.DATASET_NAME
    assert rv.resolve_dataset(ref.path, store) == ref.path / rv.DATASET_NAME
    assert rv.dataset_identity(ref.path / rv.DATASET_NAME, {}) == {"render-visual": ref.key}
    with pytest.raises(DatasetError, match="no such dataset"):
        rv.resolve_dataset("nope-not-here", store)
    # other pixels, other key; a cached --no-verify result is verified when asked later (probes are at 64 px)
    small = rv.run(rv.RenderConfig(size=32, verify=False), data[DMC], store, progress=False)
    assert small.key != ref.key and small.manifest["verification"]["reason"] == "--no-verify"
    assert open_dataset(small.path / rv.DATASET_NAME).image_shape("0") == (32, 32, 3)
    checked = rv.run(rv.RenderConfig(size=32), data[DMC], store, progress=False)
    assert checked.key == small.key and checked.manifest["verification"]["status"] == "ok"
    assert store.get(rv.STAGE, small.key).manifest["verification"]["status"] == "ok"


# ---------------------------------------------------------------------------------- kill/resume
def _partial_units(workdir: Path) -> int:
    for m in (workdir / rv.STAGE).glob(".*.partial/manifest.json"):
        try:
            return len(json.loads(m.read_text()).get("units", []))
        except (json.JSONDecodeError, OSError):
            return 0
    return 0


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_and_resume_equals_uninterrupted_run(data, one_worker, workers):
    root = data["root"] / f"kill{workers}"
    root.mkdir()
    stage_args = ("render-visual", str(data[DMC]), "--chunk-episodes", "1", "--workers", str(workers))
    args = ("--workdir", str(root), "-q", *stage_args)
    returncode = kill_cli_when(root, stage_args, lambda: _partial_units(root) >= 1, timeout=60,
                               what="no unit recorded", extra_env={rv.UNIT_DELAY_ENV: "30"})
    assert returncode == -signal.SIGKILL
    assert 1 <= _partial_units(root) < 3
    first = json.loads(next((root / rv.STAGE).glob(".*.partial/manifest.json")).read_text())
    done_frames = sum(int(first["unit_info"][u]["frames"]) for u in first["units"])
    assert not any(p.name[0] != "." for p in (root / rv.STAGE).iterdir())  # nothing looks complete
    res = cdred_cli(*args, cwd=root)
    assert res.returncode == 0, res.stderr
    art = ArtifactStore(root).get(rv.STAGE, one_worker[DMC].key)
    assert art is not None and art.manifest["resumed"] >= 1
    total = art.manifest["render"]["frames"]
    # exactly the ranges not recorded before the kill were rendered again (recorded ones were reused)
    assert art.manifest["render_runs"][-1]["frames_rendered"] == total - done_frames
    assert_same_store(art.path / rv.DATASET_NAME, one_worker[DMC].path / rv.DATASET_NAME)


# ---------------------------------------------------------------------------------- verification
def test_probe_frames_record():
    states = np.stack([np.array([0.1 * i, 0.2, 0.0, 0.0]) for i in range(7)])
    p = R.probe_frames(DMC, states, size=32)
    assert p["steps"] == [0, 3, 6] and len(p["sha256"]) == 3 and p["size"] == 32 and p["camera"] == "0"
    assert p["render_profile"] == "fast" and p["gl_backend"].startswith("egl") and "mujoco" in p["versions"]
    assert R.probe_frames(DMC, states, size=32)["sha256"] == p["sha256"]  # deterministic in fresh envs
    assert [R.frame_sha256(R.decode_frame(f)) for f in p["frames"]] == p["sha256"]
    back = json.loads(json.dumps(p))  # plain JSON for dataset attrs; the states round-trip exactly
    assert np.array_equal(np.array(back["states"]), states[[0, 3, 6]])
    with pytest.raises(UsageError, match="out of range"):
        R.probe_frames(DMC, states, steps=[9])
    with pytest.raises(DatasetError, match="needs 4"):
        R.probe_frames(DMC, np.zeros((2, 5)))


def test_probe_mismatch_is_reported_with_psnr_and_versions(data, tmp_path):
    src = open_dataset(data[DMC])
    bad = copy_dataset(data[DMC], tmp_path / "tampered.zarr")
    # a probe made under another look (stands in for another GL backend): hashes and frames differ
    other = R.probe_frames(DMC, np.asarray(src.group["data/physics_state"][:12]), render_profile="default")
    other["render_profile"] = "fast"
    other["versions"]["mujoco"] = "9.9.9"  # as if collected with another simulator version
    sim = dict(src.attrs["sim"], probe=other)
    _set_attrs(bad, {"sim": sim})
    store = ArtifactStore(tmp_path / "runs")
    with pytest.warns(rv.RenderMismatchWarning, match=r"MISMATCH.*PSNR \d+\.\d+ dB.*mujoco 9\.9\.9 -> 3\.3\.0"):
        art = rv.run(rv.RenderConfig(), bad, store, progress=False)
    v = art.manifest["verification"]
    assert v["status"] == "mismatch" and art.manifest["headline"]["verify"] == "mismatch"
    assert all(not c["match"] and isinstance(c["psnr"], float) and 10 < c["psnr"] < 60 for c in v["checks"])
    assert v["versions"]["recorded"]["mujoco"] == "9.9.9"
    # a tampered hash alone (pixels identical) is reported too, and via the real CLI
    sim2 = dict(src.attrs["sim"])
    sim2["probe"] = dict(sim2["probe"], sha256=["0" * 64] + sim2["probe"]["sha256"][1:])
    bad2 = copy_dataset(data[DMC], tmp_path / "tampered2.zarr")
    _set_attrs(bad2, {"sim": sim2})
    res = cdred_cli("--workdir", str(tmp_path / "runs"), "-q", "render-visual", str(bad2), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr and "MISMATCH: 1 of 3 probe frames" in res.stderr and "PSNR inf dB" in res.stderr
    assert "verify: MISMATCH" in res.stdout


# ---------------------------------------------------------------------------------- bad input
def _stateless_dataset(path: Path, task: str, obs_dim: int, action_dim: int, state_dim: int) -> Path:
    attrs = {"env": {"task": task, "obs_dim": obs_dim, "action_dim": action_dim}, "source": {"kind": "import"}}
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, attrs) as w:
        t = 5
        w.append_episode(rng.normal(size=(t, obs_dim)), rng.uniform(-1, 1, (t, action_dim)), np.zeros(t), np.zeros(t, bool),
                         None if state_dim == 0 else rng.normal(size=(t, state_dim)), rng.normal(size=obs_dim),
                         None if state_dim == 0 else rng.normal(size=state_dim), seed=0, success=False)
    return path


def test_dataset_without_physics_state_is_one_line_error_cli(tmp_path):
    ds = _stateless_dataset(tmp_path / "imported.zarr", DMC, 5, 1, 0)
    res = cdred_cli("--workdir", str(tmp_path / "runs"), "render-visual", str(ds), cwd=tmp_path)
    assert res.returncode == DatasetError.exit_code
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be re-rendered" in lines[0] and "no simulator states" in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "runs" / rv.STAGE).exists()


def test_unavailable_simulator_and_bad_sizes(tmp_path):
    ds = _stateless_dataset(tmp_path / "ms2.zarr", "ms2:lift-cube", 42, 4, 10)
    with pytest.raises(MissingDependencyError) as exc:
        rv.run(rv.RenderConfig(), ds, ArtifactStore(tmp_path / "runs"), progress=False)
    assert "ms2:lift-cube" in str(exc.value) and "\n" not in str(exc.value)
    wrong = _stateless_dataset(tmp_path / "wrong.zarr", DMC, 5, 1, 7)
    with pytest.raises(DatasetError, match="7 entries but dmc:cartpole-balance here needs 4"):
        rv.run(rv.RenderConfig(), wrong, ArtifactStore(tmp_path / "runs"), progress=False)
    assert not (tmp_path / "runs" / rv.STAGE).exists()  # refused before any artifact folder is made
    for size in (8, 15, 513, 4096):
        with pytest.raises(UsageError, match="16-512"):
            rv.RenderConfig(size=size)
    assert rv.RenderConfig(size=16).size == 16 and rv.RenderConfig.preset("large").size == 128
    res = cdred_cli("render-visual", str(wrong), "--size", "1024", cwd=tmp_path)
    assert res.returncode == UsageError.exit_code and len(res.stderr.strip().splitlines()) == 1
    assert "16-512" in res.stderr
