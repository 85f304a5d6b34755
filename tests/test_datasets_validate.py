"""Every validation problem is detected on a real store that a test damages on disk (plain zarr or
file operations), reported as one line naming the store, the key and the problem, all at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from cdred_pipeline.datasets import load_episodes, open_dataset, validate
from cdred_pipeline.datasets.synthetic import write_random_dataset
from cdred_pipeline.errors import DatasetError


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path, _ = write_random_dataset(tmp_path_factory.mktemp("good") / "d.zarr", [20, 35, 10, 47],
                                   cameras={"cam": 8}, chunk_bytes=256, seed=0)
    assert validate(path) == []
    return path


@pytest.fixture
def store(good, tmp_path) -> Path:
    dst = tmp_path / "d.zarr"
    shutil.copytree(good, dst)
    return dst


def _rw(path: Path):
    return zarr.open_group(str(path), mode="r+", use_consolidated=False)


def _one_line(problems: list[str], path: Path, key: str, text: str) -> None:
    hits = [p for p in problems if p.startswith(f"{path}: {key}: ") and text in p]
    assert hits, f"no problem for {key!r} containing {text!r} in {problems}"
    assert all("\n" not in p for p in problems)


def _set_attr(path: Path, **kw) -> None:
    g = _rw(path)
    attrs = g.attrs.asdict()
    for k, v in kw.items():
        if isinstance(v, dict):
            attrs[k] = {**attrs.get(k, {}), **v}
        else:
            attrs[k] = v
    g.attrs.update(attrs)


def test_nan_rows_found_with_step_and_episode(store):
    g = _rw(store)
    g["data/obs"][40] = np.nan
    g["data/physics_state"][3, 1] = np.inf
    g["meta/final_obs"][2, 0] = np.nan
    problems = validate(store)
    _one_line(problems, store, "data/obs", "NaN/inf values in 1 row(s), first at step 40, episode 1")
    _one_line(problems, store, "data/physics_state", "first at step 3, episode 0")
    _one_line(problems, store, "meta/final_obs", "NaN/inf")
    assert validate(store, deep=False) == []  # content problems are the deep pass's
    with pytest.raises(DatasetError, match="data/obs: NaN/inf at row 40"):
        load_episodes(store)  # the training reader refuses them anyway


def test_actions_out_of_range(store):
    g = _rw(store)
    g["data/action"][60:62] = 1.5
    problems = validate(store)
    _one_line(problems, store, "data/action", "values outside [-1, 1] (max |a| = 1.5) in 2 row(s), first at step 60, episode 2")
    with pytest.raises(DatasetError, match="outside"):
        load_episodes(store)


def test_mismatched_dims_and_lengths(store):
    _set_attr(store, env={"obs_dim": 9, "action_dim": 2, "physics_state_dim": 3})
    g = _rw(store)
    g["data/reward"].resize((100,))
    problems = validate(store, deep=False)
    _one_line(problems, store, "data/obs", "width 5, attrs.env.obs_dim is 9")
    _one_line(problems, store, "data/physics_state", "width 4, attrs.env.physics_state_dim is 3")
    _one_line(problems, store, "data/reward", "100 rows, data/obs has 112")
    with pytest.raises(DatasetError, match=r"d.zarr: data/reward: 100 rows, data/obs has 112 \(\+3 more; run `cdred package validate"):
        open_dataset(store)


def test_final_arrays_width_and_episode_count(store):
    g = _rw(store)
    del g["meta/final_physics_state"]
    g["meta"].create_array("final_physics_state", data=np.zeros((4, 6)), chunks=(4, 6))
    g["meta/seed"].resize((3,))
    problems = validate(store, deep=False)
    _one_line(problems, store, "meta/final_physics_state", "width 6, data/physics_state has width 4")
    _one_line(problems, store, "meta/seed", "3 rows, meta/episode_ends has 4 episodes")


def test_episode_ends_wrong(store):
    g = _rw(store)
    g["meta/episode_ends"][:] = np.array([20, 10, 65, 112])
    problems = validate(store, deep=False)
    _one_line(problems, store, "meta/episode_ends", "not strictly increasing from 0 (episode 1 ends at 10")
    _one_line(problems, store, "meta/length", "episode 1 has length 35 but episode_ends gives -10")
    g["meta/episode_ends"][:] = np.array([20, 55, 65, 100])
    problems = validate(store, deep=False)
    _one_line(problems, store, "meta/episode_ends", "last end is 100 but the data arrays have 112 rows")
    with pytest.raises(DatasetError, match="meta/episode_ends"):
        open_dataset(store)


def test_truncated_store_missing_chunks(store):
    chunks = sorted((store / "data/obs/c").iterdir())
    assert len(chunks) > 3
    shutil.rmtree(chunks[1])
    (store / "meta/success/c/0").unlink()
    problems = validate(store, deep=False)
    _one_line(problems, store, "data/obs", "chunk file(s) missing (c/1/0")
    _one_line(problems, store, "data/obs", "the store is truncated")
    _one_line(problems, store, "meta/success", "1 chunk file(s) missing (c/0)")
    with pytest.raises(DatasetError, match="chunk file"):
        open_dataset(store)


def test_truncated_chunk_file_is_unreadable(store):
    f = store / "data/action/c/1/0"
    f.write_bytes(f.read_bytes()[:10])
    problems = validate(store)
    _one_line(problems, store, "data/action", "chunk c/1/0 (rows")
    _one_line(problems, store, "data/action", "unreadable")


def test_newer_layout_version(store):
    _set_attr(store, cdred_dataset_version=2)
    problems = validate(store)
    assert problems == [f"{store}: attrs.cdred_dataset_version: layout version 2 is newer than this cdred reads (1); upgrade cdred"]
    with pytest.raises(DatasetError, match="newer"):
        open_dataset(store)


def test_rgb_shape_dtype_and_final_frames(store):
    g = _rw(store)
    del g["data/rgb/cam"]
    g["data/rgb"].create_array("cam", shape=(112, 8, 8, 4), dtype="uint16", chunks=(64, 8, 8, 4))
    g["data/rgb/cam"][:] = 1
    g["data/rgb"].create_array("side", shape=(112, 8, 8, 3), dtype="uint8", chunks=(64, 8, 8, 3))
    g["data/rgb/side"][:] = 1
    problems = validate(store, deep=False)
    _one_line(problems, store, "data/rgb/cam", "dtype uint16, expected uint8")
    _one_line(problems, store, "data/rgb/cam", "shape (112, 8, 8, 4), expected (N, H, W, 3)")
    _one_line(problems, store, "meta/final_rgb/side", "missing")
    _set_attr(store, env={"image_size": 16})
    _one_line(validate(store, deep=False), store, "data/rgb/side", "frames are 8x8, attrs.env.image_size is 16")


def test_return_must_match_rewards(store):
    _rw(store)["meta/return"][1] = 1e6
    _one_line(validate(store), store, "meta/return", "1 episode(s) differ from the sum of data/reward (episode 1")


def test_not_finished_and_stale_consolidation(store):
    root = json.loads((store / "zarr.json").read_text())
    g = _rw(store)
    g["data/obs"].resize((200, 5))  # consolidated metadata still says 112 rows
    problems = validate(store, deep=False)
    _one_line(problems, store, "data/obs", "consolidated metadata says shape (112, 5), the array is (200, 5)")
    root = json.loads((store / "zarr.json").read_text())
    root.pop("consolidated_metadata", None)
    (store / "zarr.json").write_text(json.dumps(root))
    _one_line(validate(store, deep=False), store, "zarr.json", "no consolidated metadata")


def test_not_a_dataset(tmp_path):
    assert validate(tmp_path / "nope") == [f"{tmp_path / 'nope'}: no such file or directory"]
    f = tmp_path / "file.hdf5"
    f.write_bytes(b"x")
    assert "not a zarr store" in validate(f)[0]
    (tmp_path / "empty").mkdir()
    assert "not a zarr store" in validate(tmp_path / "empty")[0]
    v2 = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    v2.attrs["x"] = 1
    assert "zarr format 2" in validate(tmp_path / "v2.zarr")[0]
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("obs", shape=(3,), dtype="f4")
    assert validate(tmp_path / "plain.zarr") == [f"{tmp_path / 'plain.zarr'}: attrs.cdred_dataset_version: missing: not a cdred dataset"]
    with pytest.raises(DatasetError, match="not a cdred dataset"):
        open_dataset(tmp_path / "plain.zarr")


def test_missing_arrays_and_env_keys_all_reported(store):
    g = _rw(store)
    del g["data/terminated"]
    del g["meta/seed"]
    attrs = g.attrs.asdict()
    attrs["env"] = {"obs_dim": 5}
    g.attrs.update(attrs)
    problems = validate(store, deep=False)
    for key in ("data/terminated", "meta/seed", "attrs.env.task", "attrs.env.action_dim"):
        _one_line(problems, store, key, "missing")
    assert len(problems) >= 4
