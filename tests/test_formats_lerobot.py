"""LeRobot v3.0 export on real files: the layout LeRobot reads (info.json, episodes/tasks/data parquet,
per-camera mp4), every step array equal to the zarr source when read back with pyarrow and with Hugging
Face ``datasets`` under LeRobot's feature types, the videos decodable frame for frame, and failures that
leave no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from cdred_pipeline.datasets import EpisodeWriter
from cdred_pipeline.datasets.lerobot import CODEBASE_VERSION, DEFAULT_FPS, export_lerobot
from cdred_pipeline.datasets.synthetic import default_attrs, random_episode, write_random_dataset
from cdred_pipeline.errors import DatasetError, UsageError
from store_helpers import zarr_arrays

LENGTHS = [13, 1, 40, 7]
CAMERAS = {"front": (16, 16), "side": (9, 11)}  # side: odd sizes (yuv444p)


def smooth_frames(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8 frames of gradients that drift over time (video codecs keep them close)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, size=3)
    t = np.arange(n)[:, None, None, None]
    img = base + 3.0 * t + 4.0 * yy[None, :, :, None] + 2.0 * xx[None, :, :, None] * np.array([1, -1, 0.5])
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A store of 4 episodes (61 steps) with simulator states, a terminated episode and two cameras."""
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("src") / "d.zarr"
    with EpisodeWriter(path, default_attrs(6, 3, physics_state_dim=4)) as w:
        for i, t in enumerate(LENGTHS):
            ep = random_episode(rng, t, 6, 3, 4, seed=100 + i)
            ep["terminated"][-1] = i == 2
            frames = {c: smooth_frames(rng, t + 1, h, w_) for c, (h, w_) in CAMERAS.items()}
            ep["rgb"] = {c: f[:-1] for c, f in frames.items()}
            ep["final_rgb"] = {c: f[-1] for c, f in frames.items()}
            w.append_episode(**ep)
    return path


@pytest.fixture(scope="module")
def exported(src, tmp_path_factory) -> Path:
    return export_lerobot(src, tmp_path_factory.mktemp("out") / "lerobot")


@pytest.fixture(scope="module")
def arrays(src) -> dict[str, np.ndarray]:
    return zarr_arrays(zarr.open_group(str(src), mode="r"))


def test_layout_and_info(exported, arrays):
    info = json.loads((exported / "meta/info.json").read_text())
    n, e = len(arrays["data/obs"]), len(LENGTHS)
    assert info["codebase_version"] == CODEBASE_VERSION == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"], info["fps"]) == (e, n, 1, DEFAULT_FPS)
    assert info["splits"] == {"train": f"0:{e}"} and info["chunks_size"] == 1000
    f = info["features"]
    assert f["observation.state"]["dtype"] == "float32" and f["observation.state"]["shape"] == [6]
    assert f["action"]["shape"] == [3] and len(f["action"]["names"]) == 3
    assert f["next.reward"] == {"dtype": "float32", "shape": [1], "names": None}
    for cam, (h, w) in CAMERAS.items():
        v = f[f"observation.images.{cam}"]
        assert v["dtype"] == "video" and v["shape"] == [h, w, 3] and v["names"] == ["height", "width", "channels"]
        assert v["info"]["video.fps"] == DEFAULT_FPS
        video = exported / info["video_path"].format(video_key=f"observation.images.{cam}", chunk_index=0, file_index=0)
        assert video == exported / f"videos/observation.images.{cam}/chunk-000/file-000.mp4" and video.is_file()
    data = exported / info["data_path"].format(chunk_index=0, file_index=0)
    assert data == exported / "data/chunk-000/file-000.parquet" and data.is_file()
    assert (exported / "meta/episodes/chunk-000/file-000.parquet").is_file()
    stats = json.loads((exported / "meta/stats.json").read_text())
    np.testing.assert_allclose(stats["observation.state"]["mean"], arrays["data/obs"].astype(np.float64).mean(0),
                               rtol=1e-9, atol=1e-12)
    front = arrays["data/rgb/front"].reshape(-1, 3) / 255.0
    for key, want in (("mean", front.mean(0)), ("std", front.std(0)), ("min", front.min(0)), ("max", front.max(0))):
        got = np.asarray(stats["observation.images.front"][key])
        assert got.shape == (3, 1, 1)
        np.testing.assert_allclose(got.reshape(3), want, rtol=1e-9, atol=1e-12)
    assert not list(exported.parent.glob(".*partial*"))


def test_step_table_equals_store(exported, arrays):
    t = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    assert t.column_names == ["observation.state", "action", "physics_state", "timestamp", "frame_index",
                              "episode_index", "index", "task_index", "next.reward", "next.done", "next.terminated"]

    def col(name: str) -> np.ndarray:
        c = t.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(c.type):
            return c.flatten().to_numpy().reshape(len(c), c.type.list_size)
        return c.to_numpy(zero_copy_only=False)

    for name, key in [("observation.state", "data/obs"), ("action", "data/action"), ("physics_state",
                      "data/physics_state"), ("next.reward", "data/reward"), ("next.terminated", "data/terminated")]:
        a = col(name)
        assert a.dtype == arrays[key].dtype and np.array_equal(a, arrays[key]), name
    ends = arrays["meta/episode_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    episode = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))
    frame = np.arange(ends[-1]) - starts[episode]
    assert np.array_equal(col("episode_index"), episode) and np.array_equal(col("frame_index"), frame)
    assert np.array_equal(col("index"), np.arange(ends[-1])) and not col("task_index").any()
    assert np.array_equal(col("timestamp"), (frame / DEFAULT_FPS).astype(np.float32))
    done = np.zeros(ends[-1], bool)
    done[ends - 1] = True
    assert np.array_equal(col("next.done"), done)
    assert col("next.terminated").sum() == 1  # episode 2 terminated, the others were truncated


def test_episode_and_task_tables(exported, arrays):
    import pandas as pd

    eps = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    ends = arrays["meta/episode_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    assert [r["episode_index"] for r in eps] == list(range(len(LENGTHS)))
    assert [r["length"] for r in eps] == LENGTHS
    assert [r["dataset_from_index"] for r in eps] == starts.tolist()
    assert [r["dataset_to_index"] for r in eps] == ends.tolist()
    assert all(r["tasks"] == ["synthetic:random-walk"] for r in eps)
    for cam in CAMERAS:
        key = f"videos/observation.images.{cam}"
        assert [r[f"{key}/from_timestamp"] for r in eps] == (starts / DEFAULT_FPS).tolist()
        assert [r[f"{key}/to_timestamp"] for r in eps] == (ends / DEFAULT_FPS).tolist()
    assert np.array_equal(np.array([r["final_observation.state"] for r in eps], np.float32), arrays["meta/final_obs"])
    assert [r["seed"] for r in eps] == arrays["meta/seed"].tolist()
    tasks = pd.read_parquet(exported / "meta/tasks.parquet")
    assert tasks.index.name == "task" and tasks.iloc[0].name == "synthetic:random-walk"
    assert tasks["task_index"].tolist() == [0]


def read_as_lerobot_does(exported: Path, cache: Path, arrays: dict[str, np.ndarray]) -> object:
    """The step file through Hugging Face ``datasets`` with the feature types LeRobot derives from
    info.json (shape [1]: a scalar Value, [n]: Sequence(length=n)); every array checked against the store."""
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets not installed (pip install datasets)")
    info = json.loads((exported / "meta/info.json").read_text())
    feats = {}
    for key, ft in info["features"].items():
        if ft["dtype"] == "video":
            continue
        value = datasets.Value(ft["dtype"])
        feats[key] = value if ft["shape"] == [1] else datasets.Sequence(value, length=ft["shape"][0])
    hf = datasets.Dataset.from_parquet(str(exported / "data/chunk-000/file-000.parquet"),
                                       features=datasets.Features(feats), cache_dir=str(cache))
    assert hf.num_rows == len(arrays["data/obs"])
    assert hf.features == datasets.Features(feats)
    as_arrow = hf.with_format("arrow")
    for name, key in [("observation.state", "data/obs"), ("action", "data/action"),
                      ("physics_state", "data/physics_state"), ("next.reward", "data/reward")]:
        c = as_arrow[name].combine_chunks()
        a = c.flatten().to_numpy() if pa.types.is_fixed_size_list(c.type) else c.to_numpy()
        a = a.reshape(arrays[key].shape)
        assert a.dtype == arrays[key].dtype and np.array_equal(a, arrays[key]), name
    return hf


def test_hf_datasets_reads_lerobot_features(exported, arrays, tmp_path):
    hf = read_as_lerobot_does(exported, tmp_path / "hf", arrays)
    # the numpy formatter hands float32 columns over unchanged (it would downcast float64 ones)
    assert np.array_equal(np.asarray(hf.with_format("numpy")["observation.state"]), arrays["data/obs"])
    row = hf[15]  # episode 2, step 1
    assert row["episode_index"] == 2 and row["frame_index"] == 1 and row["index"] == 15


def test_width_one_vectors_are_scalar_features(tmp_path):
    """A 1-d action (Pendulum's) is a feature of shape [1], which LeRobot reads as a scalar column."""
    src, _ = write_random_dataset(tmp_path / "p.zarr", [5, 8], obs_dim=3, action_dim=1, state_dim=1,
                                  task="gym:Pendulum-v1")
    out = export_lerobot(src, tmp_path / "lr", fps=20)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["action"]["shape"] == [1] and info["features"]["physics_state"]["shape"] == [1]
    assert info["fps"] == 20 and info["video_path"] is None and not (out / "videos").exists()
    arrays = zarr_arrays(zarr.open_group(str(src), mode="r"))
    read_as_lerobot_does(out, tmp_path / "hf", arrays)


def video_error(out: Path, cam: str, src: np.ndarray) -> np.ndarray:
    """|decoded - stored| per pixel of a camera's video (imageio's ffmpeg decodes it), shapes checked."""
    import imageio.v3 as iio

    frames = iio.imread(out / f"videos/observation.images.{cam}/chunk-000/file-000.mp4", plugin="FFMPEG")
    assert frames.shape == src.shape and frames.dtype == np.uint8
    return np.abs(frames.astype(np.int16) - src.astype(np.int16))


def test_videos_decode_frame_for_frame(exported, arrays):
    """Default videos are lossless in YUV: every decoded pixel within the RGB <-> YUV rounding of the stored one."""
    for cam, (h, w) in CAMERAS.items():
        src = arrays[f"data/rgb/{cam}"]
        assert src.shape == (len(arrays["data/obs"]), h, w, 3)
        assert video_error(exported, cam, src).max() <= 3, cam


def test_compact_videos(src, arrays, tmp_path):
    out = export_lerobot(src, tmp_path / "compact", compact_video=True)
    feats = json.loads((out / "meta/info.json").read_text())["features"]
    assert feats["observation.images.front"]["info"]["video.pix_fmt"] == "yuv420p"
    assert feats["observation.images.side"]["info"]["video.pix_fmt"] == "yuv444p"  # odd sizes keep full chroma
    for cam in CAMERAS:
        assert video_error(out, cam, arrays[f"data/rgb/{cam}"]).mean() < 3.0, cam


@pytest.mark.slow
def test_real_rendered_collection(tmp_path):
    """A scripted mw:reach collection rendered by render-visual (real frames, a real task): the step table
    equals the store and the video of its camera decodes within a few levels of every stored frame."""
    from cli_helpers import run_cli

    res = run_cli(tmp_path, "collect-experts", "mw:reach", "--policy", "scripted", "--episodes", "2",
                  "--random-episodes", "1", "--episode-length", "30")
    assert res.returncode == 0, res.stderr
    res = run_cli(tmp_path, "render-visual", next((tmp_path / "demos").glob("*/demos.zarr")).as_posix(), "--size", "32")
    assert res.returncode == 0, res.stderr
    src = next((tmp_path / "render-visual").glob("*/demos.zarr"))
    out = export_lerobot(src, tmp_path / "lerobot")
    arrays = zarr_arrays(zarr.open_group(str(src), mode="r"))
    info = json.loads((out / "meta/info.json").read_text())
    assert info["total_frames"] == 60 and info["robot_type"] == "mw"
    (cam,) = [k.removeprefix("data/rgb/") for k in arrays if k.startswith("data/rgb/")]
    assert info["features"][f"observation.images.{cam}"]["shape"] == [32, 32, 3]
    t = pq.read_table(out / "data/chunk-000/file-000.parquet")
    state = t.column("observation.state").combine_chunks()
    assert np.array_equal(state.flatten().to_numpy().reshape(60, 39), arrays["data/obs"])
    assert video_error(out, cam, arrays[f"data/rgb/{cam}"]).max() <= 3


def test_errors_leave_no_output(src, exported, tmp_path):
    before = sorted(p.name for p in exported.rglob("*"))
    with pytest.raises(DatasetError, match="already exists"):
        export_lerobot(src, exported)
    assert sorted(p.name for p in exported.rglob("*")) == before
    with pytest.raises(UsageError, match="fps"):
        export_lerobot(src, tmp_path / "x", fps=0)
    with pytest.raises(UsageError, match="input"):
        export_lerobot(src, src / "inside")
    with pytest.raises(DatasetError):
        export_lerobot(tmp_path / "missing.zarr", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unreadable_chunk_mid_export_leaves_nothing(src, tmp_path):
    """A store whose frame chunk does not decode fails part way through: no output, no temporary folder."""
    bad = tmp_path / "bad.zarr"
    shutil.copytree(src, bad)
    chunk = next((bad / "data/rgb/front/c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    raw = bytearray(chunk.read_bytes())
    raw[16:] = bytes(len(raw) - 16)  # keep the Blosc header, zero the payload
    chunk.write_bytes(bytes(raw))
    with pytest.raises(DatasetError):
        export_lerobot(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_lerobot_loads_the_export(exported, arrays, monkeypatch, tmp_path):
    """LeRobot's own ``LeRobotDataset`` reads the export (where lerobot is installed beside this torch)."""
    mod = pytest.importorskip("lerobot.datasets.lerobot_dataset",
                              reason="lerobot is not installed (it pins torch<2.11; install it in its own environment)")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ds = mod.LeRobotDataset("cdred/export", root=exported)
    assert ds.num_episodes == len(LENGTHS) and ds.num_frames == len(arrays["data/obs"])
    item = ds[15]
    np.testing.assert_array_equal(item["observation.state"].numpy(), arrays["data/obs"][15])
    np.testing.assert_array_equal(item["action"].numpy(), arrays["data/action"][15])
    assert tuple(item["observation.images.front"].shape) == (3, *CAMERAS["front"])


def test_cli_export(src, arrays, tmp_path):
    """``cdred package export --format lerobot --fps N`` through the real console script."""
    from cli_helpers import one_line_error, run_cli
    from cdred_pipeline.stages.package import EXPORT_FORMATS

    if "lerobot" not in EXPORT_FORMATS:
        pytest.skip("cdred package export --format lerobot is not wired into the CLI")
    res = run_cli(tmp_path, "package", "export", str(src), "--format", "lerobot", "-o", str(tmp_path / "lr"),
                  "--fps", "20")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["fps"] == 20 and info["total_frames"] == len(arrays["data/obs"])
    res = run_cli(tmp_path, "package", "export", str(src), "--format", "lerobot", "-o", str(tmp_path / "lr"))
    assert res.returncode == 4 and "already exists" in one_line_error(res)
