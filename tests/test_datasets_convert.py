"""Converters and merge on real files: zarr -> HDF5 -> zarr and zarr -> parquet (frames as PNG) -> zarr are lossless
for every array; a foreign robomimic file imports; pickled (obs, action, reward, next_obs) episode
lists import as the reference loader reads them; bad inputs give one-line errors and no output."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cdred_pipeline.datasets import load_episodes, open_dataset, validate
from cdred_pipeline.datasets.convert import (
    detect_format, export_hdf5, export_parquet, import_file, import_hdf5, import_pickle, merge_datasets,
)
from cdred_pipeline.datasets.synthetic import SYNTHETIC_TASK, write_random_dataset
from cdred_pipeline.errors import DatasetError, UsageError

#: Tasks whose dims in the static task table fit the files below: a robomimic-like file with 7-d actions
#: (the table knows only ManiSkill2 pick-ycb's action dim) and pickled episodes of obs 4 / action 2.
LIFT_TASK, PICKLE_TASK = "ms2:pick-ycb", "dmc:point_mass-easy"


def assert_same_store(a: Path, b: Path) -> None:
    """Every array equal (values, dtype, shape) and attrs equal except the import provenance."""
    A, B = open_dataset(a), open_dataset(b)
    assert A.keys() == B.keys()
    for k in A.keys():
        x, y = A.array(k)[:], B.array(k)[:]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y), k
        assert dict(A.array(k).attrs) == dict(B.array(k).attrs), k
    attrs_b = dict(B.attrs)
    attrs_b.pop("import", None)
    assert dict(A.attrs) == attrs_b


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    path, _ = write_random_dataset(tmp_path_factory.mktemp("src") / "d.zarr", [13, 1, 40, 7], obs_dim=6,
                                   action_dim=3, state_dim=9, cameras={"front": 8, "side": 8}, seed=11)
    return path


def test_hdf5_round_trip_lossless_and_robomimic_layout(src, tmp_path):
    h5 = export_hdf5(src, tmp_path / "d.hdf5")
    with h5py.File(h5, "r") as f:
        assert f["data"].attrs["total"] == 61
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == SYNTHETIC_TASK
        d = f["data/demo_2"]
        assert set(d) >= {"obs", "next_obs", "actions", "rewards", "dones", "terminated", "states"}
        assert d["obs/state"].shape == (40, 6) and d["obs/front_image"].shape == (40, 8, 8, 3)
        assert d["states"].shape == (40, 9) and d["actions"].shape == (40, 3)
        assert d.attrs["num_samples"] == 40
        ds = open_dataset(src)
        np.testing.assert_array_equal(d["next_obs/state"][-1], ds.episode(2)["final_obs"])
    assert detect_format(h5) == "hdf5"
    back = import_file(h5, tmp_path / "h.zarr")
    assert_same_store(src, back)
    assert open_dataset(back).attrs["import"]["format"] == "hdf5"


def test_parquet_round_trip_lossless_and_table_shape(src, tmp_path):
    out = export_parquet(src, tmp_path / "d.parquet")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_steps"] == 61 and meta["cameras"] == ["front", "side"]
    t = pq.read_table(out / "steps.parquet")
    assert t.num_rows == 61
    assert {"index", "episode_index", "frame_index", "observation.state", "action", "next.reward", "next.done",
            "observation.physics_state", "observation.images.front"} <= set(t.column_names)
    rows = t.slice(14, 3).to_pylist()  # episode 2 starts at step 14
    assert [r["episode_index"] for r in rows] == [2, 2, 2] and [r["frame_index"] for r in rows] == [0, 1, 2]
    ds = open_dataset(src)
    np.testing.assert_array_equal(np.array(rows[1]["observation.state"], np.float32), ds.array("data/obs")[15])
    assert len(rows[0]["action"]) == 3
    e = pq.read_table(out / "episodes.parquet")
    assert e.num_rows == 4 and e.column("length").to_pylist() == [13, 1, 40, 7]
    back = import_file(out, tmp_path / "p.zarr")
    assert_same_store(src, back)


def test_parquet_frames_are_png_image_structs(src, tmp_path):
    out = export_parquet(src, tmp_path / "d.parquet")
    t = pq.read_table(out / "steps.parquet")
    col = t.schema.field("observation.images.front").type
    assert [col.field(i).name for i in range(col.num_fields)] == ["bytes", "path"]
    assert json.loads(t.schema.metadata[b"huggingface"])["info"]["features"]["observation.images.side"] == {"_type": "Image"}
    frames = open_dataset(src).array("data/rgb/front")[:]
    cell = t.column("observation.images.front")[20].as_py()
    assert cell["path"] is None and cell["bytes"].startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(cell["bytes"]))), frames[20])
    df = pd.read_parquet(out / "steps.parquet")  # pandas: one dict {bytes, path} per cell
    assert len(df) == 61 and df["observation.images.front"].iloc[20]["bytes"] == cell["bytes"]


def test_parquet_frames_load_as_images_in_hugging_face_datasets(src, tmp_path):
    hf = pytest.importorskip("datasets", reason="Hugging Face datasets not installed (pip install datasets)")
    out = export_parquet(src, tmp_path / "d.parquet")
    steps = hf.load_dataset("parquet", data_files=str(out / "steps.parquet"), split="train",
                            cache_dir=str(tmp_path / "cache"))
    assert isinstance(steps.features["observation.images.front"], hf.Image)
    img = steps[20]["observation.images.side"]
    assert isinstance(img, Image.Image) and img.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(img), open_dataset(src).array("data/rgb/side")[20])
    eps = hf.load_dataset("parquet", data_files=str(out / "episodes.parquet"), split="train",
                          cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(np.asarray(eps[3]["final_observation.images.front"]),
                                  open_dataset(src).array("meta/final_rgb/front")[3])


def _to_raw_frames(out: Path) -> None:
    """Rewrite a parquet export's frame columns as raw HWC fixed-size binary."""
    meta = json.loads((out / "meta.json").read_text())
    for file, key in (("steps.parquet", "columns"), ("episodes.parquet", "episode_columns")):
        t = pq.read_table(out / file)
        for name, spec in meta[key].items():
            if spec.get("dtype") == "uint8":
                frames = np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"]))) for c in t.column(name).to_pylist()])
                size = int(np.prod(spec["shape"]))
                raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), len(frames), [None, pa.py_buffer(frames.tobytes())])
                t = t.set_column(t.schema.get_field_index(name), name, raw)
                spec["encoding"] = "raw HWC bytes"
        pq.write_table(t.replace_schema_metadata(None), out / file)
    (out / "meta.json").write_text(json.dumps(meta))


def test_parquet_import_reads_raw_frame_exports(src, tmp_path):
    out = export_parquet(src, tmp_path / "d.parquet")
    _to_raw_frames(out)
    assert pa.types.is_fixed_size_binary(pq.read_schema(out / "steps.parquet").field("observation.images.front").type)
    assert_same_store(src, import_file(out, tmp_path / "p.zarr"))


def test_parquet_damaged_png_is_one_line(src, tmp_path):
    out = export_parquet(src, tmp_path / "d.parquet")
    t = pq.read_table(out / "episodes.parquet")
    name = "final_observation.images.front"
    cells = t.column(name).to_pylist()
    cells[2] = {"bytes": b"not a png", "path": None}
    t = t.set_column(t.schema.get_field_index(name), name, pa.array(cells, type=t.schema.field(name).type))
    pq.write_table(t, out / "episodes.parquet")
    with pytest.raises(DatasetError, match=r"episodes.parquet: final_observation.images.front: row 2: not a readable PNG"):
        import_file(out, tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists()


def test_round_trips_keep_render_attrs_of_rendered_stores(tmp_path):
    from cdred_pipeline.datasets import RgbWriter

    state, eps = write_random_dataset(tmp_path / "s.zarr", [4, 6], seed=3)
    rng = np.random.default_rng(0)
    with RgbWriter(state, tmp_path / "v.zarr", "corner", attrs={"render_profile": "fast", "probe": "ab12"}) as rw:
        for e in eps:
            rw.append_episode(rng.integers(0, 256, (len(e["obs"]) + 1, 8, 8, 3), dtype=np.uint8))
    src = tmp_path / "v.zarr"
    assert dict(open_dataset(src).array("data/rgb/corner").attrs)["render_profile"] == "fast"
    assert_same_store(src, import_file(export_hdf5(src, tmp_path / "v.h5"), tmp_path / "h.zarr"))
    assert_same_store(src, import_file(export_parquet(src, tmp_path / "v.pq"), tmp_path / "p.zarr"))


def test_round_trips_without_physics_state(tmp_path):
    path, _ = write_random_dataset(tmp_path / "d.zarr", [3, 4], state_dim=0, seed=2)
    assert open_dataset(path).physics_state_dim == 0
    assert_same_store(path, import_file(export_hdf5(path, tmp_path / "d.h5"), tmp_path / "h.zarr"))
    assert_same_store(path, import_file(export_parquet(path, tmp_path / "d.pq"), tmp_path / "p.zarr"))


def _robomimic_file(path: Path, n: int = 3, drop: str | None = None) -> list[dict]:
    rng = np.random.default_rng(0)
    demos = []
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        g.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1})
        for i in range(n):
            t = 5 + i
            demo = {"robot0_eef_pos": rng.normal(size=(t + 1, 3)), "object": rng.normal(size=(t + 1, 10)),
                    "actions": rng.uniform(-1, 1, (t, 7)), "rewards": np.r_[np.zeros(t - 1), 1.0],
                    "dones": np.r_[np.zeros(t - 1), 1].astype(np.int64), "states": rng.normal(size=(t, 32))}
            demos.append(demo)
            d = g.create_group(f"demo_{i * 5}")  # numeric order, not lexical: demo_0, demo_5, demo_10
            for k in ("robot0_eef_pos", "object"):
                d.create_dataset(f"obs/{k}", data=demo[k][:-1])
                d.create_dataset(f"next_obs/{k}", data=demo[k][1:])
            for k in ("actions", "rewards", "dones", "states"):
                if k != drop:
                    d.create_dataset(k, data=demo[k])
            d.attrs["num_samples"] = t
    return demos


def test_import_foreign_robomimic_file(tmp_path):
    demos = _robomimic_file(tmp_path / "lift.hdf5")
    with pytest.raises(UsageError, match="give --task"):
        import_file(tmp_path / "lift.hdf5", tmp_path / "x.zarr")
    out = import_file(tmp_path / "lift.hdf5", tmp_path / "lift.zarr", task=LIFT_TASK)
    ds = open_dataset(out)
    assert (ds.num_episodes, ds.obs_dim, ds.action_dim, ds.physics_state_dim) == (3, 13, 7, 32)
    assert ds.attrs["source"]["kind"] == "import" and ds.attrs["source"]["obs_keys"] == ["obs/object", "obs/robot0_eef_pos"]
    assert validate(out) == []
    for i, demo in enumerate(demos):  # keys concatenated in sorted order: object, robot0_eef_pos
        ep = ds.episode(i)
        full = np.concatenate([demo["object"], demo["robot0_eef_pos"]], axis=1).astype(np.float32)
        np.testing.assert_array_equal(ep["obs"], full[:-1])
        np.testing.assert_array_equal(ep["final_obs"], full[-1])
        np.testing.assert_array_equal(ep["action"], demo["actions"].astype(np.float32))
        assert ep["terminated"][-1] and not ep["terminated"][:-1].any()
    assert any("final_physics_state copied" in n for n in ds.attrs["source"]["notes"])


def test_hdf5_missing_key_is_one_line_and_leaves_no_output(tmp_path):
    _robomimic_file(tmp_path / "bad.hdf5", drop="rewards")
    with pytest.raises(DatasetError) as err:
        import_file(tmp_path / "bad.hdf5", tmp_path / "o.zarr", task=LIFT_TASK)
    assert str(err.value) == f"{tmp_path / 'bad.hdf5'}: data/demo_0/rewards: missing key"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["bad.hdf5"]
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(DatasetError, match=r"empty.hdf5: data: missing key"):
        import_hdf5(tmp_path / "empty.hdf5", tmp_path / "o.zarr", task=LIFT_TASK)


def test_hdf5_bad_content_leaves_no_output(tmp_path):
    _robomimic_file(tmp_path / "big.hdf5")
    with h5py.File(tmp_path / "big.hdf5", "r+") as f:
        a = f["data/demo_5/actions"]
        a[0, 0] = 3.0
    with pytest.raises(DatasetError, match=r"big.hdf5: data/demo_5: action: values outside \[-1, 1\]"):
        import_file(tmp_path / "big.hdf5", tmp_path / "o.zarr", task=LIFT_TASK)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / ".o.zarr.partial").exists()


def _pickle_episodes(rng, n=3, d=4, a=2):
    eps = []
    for i in range(n):
        t = 6 + i
        traj = rng.normal(size=(t + 1, d)).astype(np.float32)
        eps.append((list(traj[:-1]), rng.uniform(-1, 1, (t, a)).astype(np.float32), list(rng.normal(size=t)),
                    list(traj[1:])))
    return eps


def test_import_pickle_like_the_reference_loader(tmp_path):
    rng = np.random.default_rng(3)
    eps = _pickle_episodes(rng)
    f = tmp_path / "demos.pkl"
    f.write_bytes(pickle.dumps(eps))
    with pytest.raises(UsageError, match="runs arbitrary code"):
        import_file(f, tmp_path / "o.zarr", task=PICKLE_TASK)
    out = import_file(f, tmp_path / "o.zarr", task=PICKLE_TASK, trust_pickle=True)
    ds = open_dataset(out)
    assert (ds.num_episodes, ds.obs_dim, ds.action_dim, ds.physics_state_dim) == (3, 4, 2, 0)
    loaded = load_episodes(out)
    for got, (o, act, r, no) in zip(loaded, eps):
        # reference: obs sequence = obs[0], then next_obs[0..T-1]
        np.testing.assert_array_equal(got["obs"], np.stack([o[0]] + list(no)))
        np.testing.assert_array_equal(got["action"], act)
        np.testing.assert_allclose(got["reward"], np.float32(r))
    # dict episodes (D4RL-style keys) work too
    dict_eps = [{"observations": np.stack(o), "actions": act, "rewards": np.array(r), "next_observations": np.stack(no)}
                for o, act, r, no in eps]
    f2 = tmp_path / "dict.pkl"
    f2.write_bytes(pickle.dumps(dict_eps))
    out2 = import_pickle(f2, tmp_path / "o2.zarr", task=PICKLE_TASK, trust_pickle=True)
    assert_same_store_arrays = open_dataset(out2)
    np.testing.assert_array_equal(assert_same_store_arrays.array("data/obs")[:], ds.array("data/obs")[:])


@pytest.mark.parametrize("payload, msg", [
    ({"not": "episodes"}, "expected a non-empty list of episodes"),
    ([(np.zeros((3, 4)), np.zeros((3, 2)))], r"episode 0: expected \(obs, action, reward, next_obs\)"),
    ([(np.zeros((3, 4)), np.zeros((2, 2)), np.zeros(3), np.zeros((3, 4)))], "episode 0: shapes obs"),
    ([(np.zeros((3, 4)), np.zeros((3, 2)), np.zeros(3), np.zeros((3, 4))),
      (np.zeros((3, 5)), np.zeros((3, 2)), np.zeros(3), np.zeros((3, 5)))], "episode 1: dims obs 5"),
    ([(np.zeros((3, 4)), np.zeros((3, 2)), np.array([0, np.nan, 0]), np.zeros((3, 4)))], "episode 0: reward: NaN/inf"),
])
def test_pickle_of_the_wrong_shape(tmp_path, payload, msg):
    f = tmp_path / "bad.pkl"
    f.write_bytes(pickle.dumps(payload))
    with pytest.raises(DatasetError, match=msg):
        import_file(f, tmp_path / "o.zarr", task=PICKLE_TASK, trust_pickle=True)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / ".o.zarr.partial").exists()


def test_unknown_task_and_format(tmp_path):
    f = tmp_path / "demos.pkl"
    f.write_bytes(pickle.dumps([]))
    with pytest.raises(UsageError, match="closest"):
        import_file(f, tmp_path / "o.zarr", task="dmc:cheetah-rnu", trust_pickle=True)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unknown format"):
        import_file(tmp_path / "x.txt", tmp_path / "o.zarr", task=PICKLE_TASK)


def test_merge_concatenates_and_refuses_mismatches(src, tmp_path):
    other, _ = write_random_dataset(tmp_path / "o.zarr", [5, 6], obs_dim=6, action_dim=3, state_dim=9,
                                    cameras={"front": 8, "side": 8}, seed=4)
    out = merge_datasets([src, other], tmp_path / "m.zarr")
    m, a, b = open_dataset(out), open_dataset(src), open_dataset(other)
    assert m.num_episodes == 6 and m.num_steps == a.num_steps + b.num_steps
    assert m.episode_ends.tolist() == a.episode_ends.tolist() + (a.num_steps + b.episode_ends).tolist()
    for k in set(m.keys()) - {"meta/episode_ends"}:
        np.testing.assert_array_equal(m.array(k)[:], np.concatenate([a.array(k)[:], b.array(k)[:]]), err_msg=k)
    assert m.attrs["source"]["kind"] == "merge" and len(m.attrs["source"]["parts"]) == 2
    assert validate(out) == []
    task, _ = write_random_dataset(tmp_path / "t.zarr", [3], obs_dim=6, action_dim=3, state_dim=9,
                                   cameras={"front": 8, "side": 8}, task="synthetic:other-walk")
    with pytest.raises(DatasetError, match="attrs.env.task: 'synthetic:other-walk' differs"):
        merge_datasets([src, task], tmp_path / "m2.zarr")
    dims, _ = write_random_dataset(tmp_path / "dims.zarr", [3], obs_dim=7, action_dim=3, state_dim=9)
    with pytest.raises(DatasetError, match="attrs.env.obs_dim: 7 differs"):
        merge_datasets([src, dims], tmp_path / "m3.zarr")
    assert not (tmp_path / "m2.zarr").exists() and not (tmp_path / "m3.zarr").exists()
