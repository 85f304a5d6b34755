"""Minari export and import on real files through the minari package: what ``minari.load_dataset`` reads
equals the zarr source (T + 1 observations, actions, rewards, terminations, truncations, frames, simulator
states, seeds), the import of an export reproduces the source store exactly, gym tasks record their
EnvSpec and other suites their task id, a foreign Minari dataset imports, and bad input is one error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

minari = pytest.importorskip("minari", reason="minari is not installed (pip install 'cdred[formats]')")

from cdred_pipeline.datasets import open_dataset  # noqa: E402
from cdred_pipeline.datasets.minari_io import (  # noqa: E402
    default_dataset_id, export_minari, import_minari, is_minari_dataset,
)
from cdred_pipeline.datasets.synthetic import write_random_dataset  # noqa: E402
from cdred_pipeline.errors import DatasetError, UsageError  # noqa: E402
from store_helpers import zarr_arrays  # noqa: E402

LENGTHS = [13, 1, 40, 7]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    path, eps = write_random_dataset(tmp_path_factory.mktemp("src") / "d.zarr", LENGTHS, obs_dim=6, action_dim=3,
                                     state_dim=9, cameras={"front": 8, "side": 6}, seed=11)
    assert any(ep["terminated"][-1] for ep in eps) and not all(ep["terminated"][-1] for ep in eps)
    return path


@pytest.fixture()
def root(tmp_path, monkeypatch) -> Path:
    """Minari's data root for the test (never the user's home)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def assert_same_store(a: Path, b: Path) -> None:
    """Every array equal (values, dtype, shape, attrs) and the root attrs equal but for the import entry."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    xa, xb = zarr_arrays(ga), zarr_arrays(gb)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and np.array_equal(xa[k], xb[k]), k
        assert dict(ga[k].attrs) == dict(gb[k].attrs), k
    attrs_b = dict(gb.attrs)
    assert attrs_b.pop("import")["format"] == "minari"
    assert dict(ga.attrs) == attrs_b


def test_minari_reads_the_export(src, root):
    out = export_minari(src, "cdred/synth-v0", root)
    assert out == root / "cdred/synth-v0" and (out / "data/metadata.json").is_file()
    mds = minari.load_dataset("cdred/synth-v0")
    assert mds.total_episodes == len(LENGTHS) and mds.total_steps == sum(LENGTHS)
    assert mds.storage.metadata["cdred_task"] == "synthetic:random-walk" and mds.spec.env_spec is None
    ds = open_dataset(src)
    metas = list(mds.storage.get_episode_metadata(range(len(LENGTHS))))
    for i, ep in enumerate(mds.iterate_episodes()):
        want = ds.episode(i, rgb=True)
        t = LENGTHS[i]
        obs = ep.observations
        assert np.array_equal(obs["state"], np.concatenate([want["obs"], want["final_obs"][None]]))
        assert obs["state"].dtype == np.float32 and obs["rgb_front"].shape == (t + 1, 8, 8, 3)
        for cam in ("front", "side"):
            assert np.array_equal(obs[f"rgb_{cam}"], np.concatenate([want["rgb"][cam], want["final_rgb"][cam][None]]))
        assert ep.actions.dtype == np.float32 and np.array_equal(ep.actions, want["action"])
        assert np.array_equal(ep.rewards, want["reward"])
        assert np.array_equal(ep.terminations, want["terminated"])
        truncated = np.zeros(t, bool)
        truncated[-1] = not want["terminated"][-1]
        assert np.array_equal(ep.truncations, truncated)
        assert np.array_equal(ep.infos["physics_state"],
                              np.concatenate([want["physics_state"], want["final_physics_state"][None]]))
        assert metas[i]["seed"] == want["seed"] and bool(metas[i]["success"]) == want["success"]
    assert not [p.name for p in (root / "cdred").iterdir() if "partial" in p.name]


def test_round_trip_is_exact(src, root, tmp_path):
    export_minari(src, "cdred/synth-v0", root)
    back = import_minari("cdred/synth-v0", tmp_path / "by_id.zarr")  # through MINARI_DATASETS_PATH
    assert_same_store(src, back)
    by_path = import_minari(root / "cdred/synth-v0", tmp_path / "by_path.zarr")
    assert_same_store(src, by_path)
    other_root = import_minari("cdred/synth-v0", tmp_path / "by_root.zarr", root=root)
    assert_same_store(src, other_root)


def test_gym_task_records_env_spec(tmp_path, root):
    path, _ = write_random_dataset(tmp_path / "p.zarr", [5, 8], obs_dim=3, action_dim=1, state_dim=2,
                                   task="gym:Pendulum-v1")
    export_minari(path, "pendulum-demo-v1", root)
    mds = minari.load_dataset("pendulum-demo-v1")
    assert mds.spec.env_spec.id == "Pendulum-v1"
    env = mds.recover_environment()
    assert env.observation_space.shape == (3,)
    env.close()
    assert_same_store(path, import_minari("pendulum-demo-v1", tmp_path / "back.zarr"))


def test_suite_task_is_in_metadata(tmp_path, root):
    path, _ = write_random_dataset(tmp_path / "r.zarr", [4, 6], obs_dim=39, action_dim=4, state_dim=5, task="mw:reach")
    assert default_dataset_id("mw:reach") == "cdred/mw-reach-v0"
    export_minari(path, default_dataset_id("mw:reach"), root)
    mds = minari.load_dataset("cdred/mw-reach-v0")
    assert mds.spec.env_spec is None and mds.storage.metadata["cdred_task"] == "mw:reach"
    assert is_minari_dataset(root / "cdred/mw-reach-v0") and not is_minari_dataset(path)
    assert mds.storage.metadata["cdred_attrs"]["env"]["task"] == "mw:reach"
    with pytest.raises(UsageError, match="not --task"):
        import_minari("cdred/mw-reach-v0", tmp_path / "no.zarr", task="dmc:cheetah-run")
    assert not (tmp_path / "no.zarr").exists()


def _foreign(root: Path) -> list[dict]:
    """A Minari dataset written by minari itself, not by cdred: float64 obs, actions in [-2, 2], no states."""
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(3)
    eps = []
    for i, t in enumerate([6, 3]):
        term = np.zeros(t, bool)
        term[-1] = i == 0
        eps.append({"obs": rng.normal(size=(t + 1, 4)), "act": rng.uniform(-2, 2, (t, 2)).astype(np.float32),
                    "rew": rng.normal(size=t), "term": term, "trunc": ~term & (np.arange(t) == t - 1)})
    buffers = [EpisodeBuffer(id=i, seed=40 + i, observations=e["obs"], actions=e["act"], rewards=e["rew"],
                             terminations=e["term"], truncations=e["trunc"],
                             infos={"success": np.r_[np.zeros(len(e["rew"]), bool), i == 0]})
               for i, e in enumerate(eps)]
    minari.create_dataset_from_buffers("other/walker-v2", buffers, algorithm_name="x",
                                       observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float64),
                                       action_space=gym.spaces.Box(-2.0, 2.0, (2,), np.float32))
    return eps


@pytest.mark.filterwarnings("ignore::UserWarning")  # minari asks for an author, description, ...
def test_foreign_dataset_imports(tmp_path, root):
    eps = _foreign(root)
    with pytest.raises(UsageError, match="--task"):
        import_minari("other/walker-v2", tmp_path / "x.zarr")
    out = import_minari("other/walker-v2", tmp_path / "w.zarr", task="synthetic:walker")
    ds = open_dataset(out)
    assert ds.num_episodes == 2 and ds.physics_state_dim == 0
    notes = ds.attrs["source"]["notes"]
    assert any("mapped linearly" in n for n in notes) and any("no simulator states" in n for n in notes)
    for i, e in enumerate(eps):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["obs"], e["obs"][:-1].astype(np.float32))
        np.testing.assert_array_equal(got["final_obs"], e["obs"][-1].astype(np.float32))
        np.testing.assert_allclose(got["action"], e["act"] / 2.0, atol=1e-7)
        np.testing.assert_array_equal(got["terminated"], e["term"])
        assert got["seed"] == 40 + i and got["success"] == (i == 0)


def test_bad_input_is_one_error(src, tmp_path, root):
    with pytest.raises(UsageError, match="dataset id"):
        export_minari(src, "no version", root)
    export_minari(src, "cdred/synth-v0", root)
    with pytest.raises(DatasetError, match="already exists"):
        export_minari(src, "cdred/synth-v0", root)
    export_minari(src, "cdred/synth-v0", root, overwrite=True)
    assert minari.load_dataset("cdred/synth-v0").total_episodes == len(LENGTHS)
    with pytest.raises(DatasetError, match="no such Minari dataset"):
        import_minari("cdred/absent-v0", tmp_path / "a.zarr")
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        import_minari(src, tmp_path / "b.zarr")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_cli_export_and_import(src, tmp_path):
    """``cdred package export --format minari`` and ``cdred package import`` (folder: --format auto; id:
    --format minari --minari-root) through the real console script."""
    from cli_helpers import one_line_error, run_cli
    from cdred_pipeline.stages.package import EXPORT_FORMATS, IMPORT_FORMATS

    if "minari" not in EXPORT_FORMATS or "minari" not in IMPORT_FORMATS:
        pytest.skip("cdred package export/import --format minari is not wired into the CLI")
    mroot = tmp_path / "minari"
    res = run_cli(tmp_path, "package", "export", str(src), "--format", "minari", "-o", str(mroot))
    assert res.returncode == 0, res.stderr
    folder = mroot / default_dataset_id("synthetic:random-walk")
    assert (folder / "data/metadata.json").is_file()
    res = run_cli(tmp_path, "package", "import", str(folder), "-o", str(tmp_path / "a.zarr"))
    assert res.returncode == 0, res.stderr
    assert_same_store(src, tmp_path / "a.zarr")
    res = run_cli(tmp_path, "package", "import", default_dataset_id("synthetic:random-walk"), "--format", "minari",
                  "--minari-root", str(mroot), "-o", str(tmp_path / "b.zarr"))
    assert res.returncode == 0, res.stderr
    assert_same_store(src, tmp_path / "b.zarr")
    res = run_cli(tmp_path, "package", "import", "cdred/absent-v0", "--format", "minari", "--minari-root", str(mroot),
                  "-o", str(tmp_path / "c.zarr"))
    assert res.returncode == 4 and "no such Minari dataset" in one_line_error(res)
    res = run_cli(tmp_path, "package", "export", str(src), "--format", "minari", "-o", str(mroot),
                  "--dataset-id", "no version")
    assert res.returncode == 2 and "dataset id" in one_line_error(res)


def test_cli_export_of_an_artifact_key_to_a_relative_root(tmp_path):
    """As a user types it: the demos' artifact key as DATASET and a data root relative to the current
    folder (minari joins a relative root onto itself unless it is made absolute first)."""
    import subprocess

    from cli_helpers import cdred_command, cli_env

    def cdred(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cdred_command(), "--workdir", "wd", "-q", *args], cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=240)

    res = cdred("collect-experts", "mw:reach", "--policy", "scripted", "--episodes", "2", "--random-episodes", "1")
    assert res.returncode == 0, res.stderr
    [key] = [p.name for p in (tmp_path / "wd" / "demos").iterdir() if not p.name.startswith(".")]
    res = cdred("package", "export", key[:8], "--format", "minari", "-o", "minari_root")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "minari_root" / default_dataset_id("mw:reach")
    assert res.stdout.strip() == f"wrote {folder}"
    import minari

    assert minari.MinariDataset(folder / "data").spec.total_episodes == 2
