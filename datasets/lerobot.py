"""Export of an episode store as a LeRobot dataset, layout ``codebase_version`` "v3.0" (docs/formats.md).

The output folder holds::

    meta/info.json                              features (dtype, shape, names), fps, totals, path templates
    meta/stats.json                             mean/std/min/max/count per feature (images: per channel, in [0, 1])
    meta/tasks.parquet                          task string (the index, as pandas reads it) -> task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode: length, tasks, row range, video time range
    data/chunk-000/file-000.parquet             one row per step
    videos/observation.images.<camera>/chunk-000/file-000.mp4   every episode's frames, back to back

Step columns: ``observation.state`` (data/obs), ``action``, ``physics_state`` (when the store has
simulator states), ``timestamp`` (frame_index / fps), ``frame_index``, ``episode_index``, ``index``,
``task_index``, ``next.reward`` (data/reward), ``next.done`` (True on the last step of every episode,
LeRobot's convention) and ``next.terminated`` (data/terminated). Vectors are fixed-size lists, so
Hugging Face ``datasets`` reads them as the ``Sequence(length=n)`` features LeRobot declares (a vector
of width 1 is a plain column: LeRobot reads shape [1] as a scalar). The
episode table also carries ``seed``, ``success``, ``return`` and the final observation
(``final_observation.state``), which LeRobot's per-step layout has no row for. The task string is the
cdred task id. Frames are H.264 at ``fps`` (yuv444p at crf 0: decoded frames within a few levels of
the stored ones; ``compact_video``: yuv420p at crf 18), one frame per step, episode i spanning
``[dataset_from_index / fps, dataset_to_index / fps)`` of its camera's file.

All episodes go to one data file and one video file per camera, written a block of episodes at a time.
The export is written into a temporary folder next to ``out_dir`` and renamed when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.errors import DatasetError, MissingDependencyError, UsageError

from . import layout as L
from .convert import EpisodeBar, check_disjoint, episode_blocks, write_output
from .reader import Dataset, open_dataset

__all__ = ["export_lerobot", "CODEBASE_VERSION", "DEFAULT_FPS", "video_key"]

CODEBASE_VERSION = "v3.0"
#: Frame rate written when neither the caller nor ``attrs.env.fps`` gives one.
DEFAULT_FPS = 30
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
_INDEX_FEATURES = ("frame_index", "episode_index", "index", "task_index")


def video_key(camera: str) -> str:
    """The LeRobot feature name of a camera's frames."""
    return f"observation.images.{camera}"


# ------------------------------------------------------------------------------------ features
def _vector(dtype: str, width: int, prefix: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [width], "names": [f"{prefix}_{i}" for i in range(width)]}


def _scalar(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def _pix_fmt(h: int, w: int, compact: bool) -> str:
    """yuv444p (full chroma) by default; compact: yuv420p, which every player decodes but which needs even sizes."""
    return "yuv420p" if compact and h % 2 == 0 and w % 2 == 0 else "yuv444p"


def _crf(compact: bool) -> str:
    """x264's constant rate factor: 0 (lossless in YUV: decoded frames within a few levels of the stored
    RGB ones) by default, 18 (visually lossless, about 3x smaller) for compact videos."""
    return "18" if compact else "0"


def _video_feature(shape: tuple[int, int, int], fps: int, compact: bool) -> dict[str, Any]:
    h, w, c = shape
    return {"dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "h264",
                     "video.pix_fmt": _pix_fmt(h, w, compact), "video.is_depth_map": False, "video.fps": fps,
                     "video.channels": c, "has_audio": False}}


def _features(ds: Dataset, fps: int, compact: bool) -> dict[str, dict[str, Any]]:
    """The ``features`` block of info.json, in column order (videos last: they have no column)."""
    feats: dict[str, dict[str, Any]] = {
        "observation.state": _vector("float32", ds.obs_dim, "state"),
        "action": _vector("float32", ds.action_dim, "action"),
    }
    if ds.physics_state_dim:
        feats["physics_state"] = _vector("float64", ds.physics_state_dim, "qstate")
    feats["timestamp"] = _scalar("float32")
    feats.update({k: _scalar("int64") for k in _INDEX_FEATURES})
    feats.update({"next.reward": _scalar("float32"), "next.done": _scalar("bool"), "next.terminated": _scalar("bool")})
    for cam in ds.cameras:
        feats[video_key(cam)] = _video_feature(ds.image_shape(cam), fps, compact)
    return feats


def _info(ds: Dataset, features: dict[str, Any], fps: int) -> dict[str, Any]:
    return {
        "codebase_version": CODEBASE_VERSION, "robot_type": ds.task.split(":", 1)[0],
        "total_episodes": ds.num_episodes, "total_frames": ds.num_steps, "total_tasks": 1,
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
        "fps": fps, "splits": {"train": f"0:{ds.num_episodes}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if ds.cameras else None, "features": features,
        "cdred": {"task": ds.task, "cdred_dataset_version": ds.version, "source": ds.attrs.get("source", {}),
                  "scores": ds.attrs.get("scores", {}), "env": ds.env},
    }


def _fps(ds: Dataset, fps: int | None) -> int:
    """The frame rate: ``fps``, else ``attrs.env.fps``, else :data:`DEFAULT_FPS` (a positive int)."""
    value = fps if fps is not None else ds.env.get("fps", DEFAULT_FPS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or int(value) != value:
        raise UsageError(f"fps {value!r}: give a positive whole number of frames per second")
    return int(value)


# ---------------------------------------------------------------------------------------- arrow
def _fixed_list(a: np.ndarray) -> Any:
    """(n, w) array -> Arrow fixed_size_list<w> (Hugging Face ``Sequence(length=w)``); a width of 1 is a
    plain column, as LeRobot reads a feature of shape [1] (a 1-d action, e.g.) as a scalar ``Value``."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(a).reshape(-1))
    return flat if a.shape[1] == 1 else pa.FixedSizeListArray.from_arrays(flat, int(a.shape[1]))


def _block_table(ds: Dataset, block: dict[str, np.ndarray], lo: int, hi: int, fps: int) -> Any:
    """The step rows of episodes [lo, hi) as an Arrow table in :func:`_features` column order."""
    import pyarrow as pa

    starts, ends = ds.episode_starts[lo:hi], ds.episode_ends[lo:hi]
    lengths = (ends - starts).astype(np.int64)
    episode = np.repeat(np.arange(lo, hi, dtype=np.int64), lengths)
    frame = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts - starts[0], lengths)
    done = np.zeros(len(frame), dtype=bool)
    done[np.cumsum(lengths) - 1] = True
    cols: dict[str, Any] = {"observation.state": _fixed_list(block["obs"]), "action": _fixed_list(block["action"])}
    if ds.physics_state_dim:
        cols["physics_state"] = _fixed_list(block["physics_state"])
    cols["timestamp"] = pa.array((frame / fps).astype(np.float32))
    cols["frame_index"] = pa.array(frame)
    cols["episode_index"] = pa.array(episode)
    cols["index"] = pa.array(np.arange(int(starts[0]), int(ends[-1]), dtype=np.int64))
    cols["task_index"] = pa.array(np.zeros(len(frame), dtype=np.int64))
    cols["next.reward"] = pa.array(block["reward"])
    cols["next.done"] = pa.array(done)
    cols["next.terminated"] = pa.array(block["terminated"])
    return pa.table(cols)


def _episode_table(ds: Dataset, fps: int) -> Any:
    """One row per episode: LeRobot's columns (row range, task, video time range) and cdred's extras."""
    import pyarrow as pa

    n = ds.num_episodes
    zeros = np.zeros(n, dtype=np.int64)
    cols: dict[str, Any] = {
        "episode_index": pa.array(np.arange(n, dtype=np.int64)),
        "tasks": pa.array([[ds.task]] * n, type=pa.list_(pa.string())),
        "length": pa.array(ds.lengths), "data/chunk_index": pa.array(zeros), "data/file_index": pa.array(zeros),
        "dataset_from_index": pa.array(ds.episode_starts), "dataset_to_index": pa.array(ds.episode_ends),
    }
    for cam in ds.cameras:
        key = video_key(cam)
        cols[f"videos/{key}/chunk_index"] = pa.array(zeros)
        cols[f"videos/{key}/file_index"] = pa.array(zeros)
        cols[f"videos/{key}/from_timestamp"] = pa.array(ds.episode_starts / fps)
        cols[f"videos/{key}/to_timestamp"] = pa.array(ds.episode_ends / fps)
    cols["meta/episodes/chunk_index"] = pa.array(zeros)
    cols["meta/episodes/file_index"] = pa.array(zeros)
    cols.update({"seed": pa.array(ds.seeds), "success": pa.array(ds.successes), "return": pa.array(ds.returns)})
    cols["final_observation.state"] = _fixed_list(ds.read("meta/final_obs"))
    if ds.physics_state_dim:
        cols["final_physics_state"] = _fixed_list(ds.read("meta/final_physics_state"))
    return pa.table(cols)


def _tasks_table(task: str) -> Any:
    """``meta/tasks.parquet``: column ``task_index``, the task string as the pandas index ``task``."""
    import pyarrow as pa

    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())],
                       metadata={"pandas": json.dumps(pandas_meta)})
    return pa.table({"task_index": [0], "task": [task]}, schema=schema)


# ---------------------------------------------------------------------------------------- stats
class _Moments:
    """Running count, sum, sum of squares, min and max over rows (or over pixels per channel)."""

    def __init__(self) -> None:
        self.n, self.s, self.ss, self.lo, self.hi = 0, 0.0, 0.0, None, None

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        self.n += len(x)
        self.s = self.s + x.sum(axis=0)
        self.ss = self.ss + (x * x).sum(axis=0)
        lo, hi = x.min(axis=0), x.max(axis=0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def result(self, shape: tuple[int, ...], count: int) -> dict[str, Any]:
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))
        return {"mean": np.reshape(mean, shape).tolist(), "std": np.reshape(std, shape).tolist(),
                "min": np.reshape(self.lo, shape).tolist(), "max": np.reshape(self.hi, shape).tolist(),
                "count": [count]}


class _PixelHistogram:
    """Per-channel counts of the 256 pixel values: exact frame statistics without a float copy of the frames."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)

    def add(self, frames: np.ndarray) -> None:
        for c in range(3):
            self.counts[c] += np.bincount(frames[..., c].reshape(-1), minlength=256)

    def result(self, count: int) -> dict[str, Any]:
        """Mean, std, min and max per channel of pixels scaled to [0, 1] (LeRobot's input), shape (3, 1, 1)."""
        v = np.arange(256) / 255.0
        n = self.counts.sum(axis=1)
        mean = (self.counts * v).sum(axis=1) / n
        std = np.sqrt(np.maximum((self.counts * v * v).sum(axis=1) / n - mean * mean, 0.0))
        seen = self.counts > 0
        lo = np.array([v[row].min() for row in seen])
        hi = np.array([v[row].max() for row in seen])
        return {k: x.reshape(3, 1, 1).tolist() for k, x in (("mean", mean), ("std", std), ("min", lo), ("max", hi))} \
            | {"count": [count]}


class _Stats:
    """``meta/stats.json``: LeRobot's normalisation statistics, accumulated block by block."""

    def __init__(self, ds: Dataset) -> None:
        self.keys = {"observation.state": "obs", "action": "action", "next.reward": "reward"}
        if ds.physics_state_dim:
            self.keys["physics_state"] = "physics_state"
        self.moments = {k: _Moments() for k in self.keys}
        self.pixels = {c: _PixelHistogram() for c in ds.cameras}
        self.steps = 0

    def add(self, block: dict[str, np.ndarray]) -> None:
        for name, key in self.keys.items():
            a = block[key]
            self.moments[name].add(a.reshape(len(a), -1))
        for cam, hist in self.pixels.items():
            hist.add(block[f"rgb/{cam}"])
        self.steps += len(block["obs"])

    def result(self) -> dict[str, Any]:
        if not self.steps:
            return {}
        out = {name: self.moments[name].result((-1,), self.steps) for name in self.keys}
        out.update({video_key(c): h.result(self.steps) for c, h in self.pixels.items()})
        return out


# ---------------------------------------------------------------------------------------- writing
def _read(ds: Dataset, lo: int, hi: int) -> dict[str, np.ndarray]:
    s, e = int(ds.episode_starts[lo]), int(ds.episode_ends[hi - 1])
    block = {k: ds.read(f"data/{k}", slice(s, e)) for k in L.DATA_KEYS}
    block.update({f"rgb/{c}": ds.read(f"{L.RGB_GROUP}/{c}", slice(s, e)) for c in ds.cameras})
    return block


def _video_writers(ds: Dataset, root: Path, fps: int, compact: bool) -> dict[str, Any]:
    """An open H.264 writer (imageio-ffmpeg) per camera at its ``VIDEO_PATH``."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise MissingDependencyError("LeRobot export of frames needs imageio: pip install imageio imageio-ffmpeg") from None
    writers = {}
    for cam in ds.cameras:
        path = root / VIDEO_PATH.format(video_key=video_key(cam), chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w, _ = ds.image_shape(cam)
        writers[cam] = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=None,
                                          pixelformat=_pix_fmt(h, w, compact), macro_block_size=1,
                                          ffmpeg_log_level="error", ffmpeg_params=["-crf", _crf(compact), "-g", "2"])
    return writers


def _write_steps(ds: Dataset, root: Path, fps: int, compact: bool, progress: bool) -> dict[str, Any]:
    """Write the data parquet and the videos a block at a time (``progress``: an EpisodeBar on stderr);
    returns the statistics."""
    import pyarrow.parquet as pq

    stats = _Stats(ds)
    path = root / DATA_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers = _video_writers(ds, root, fps, compact)
    sink = None
    bar = EpisodeBar(ds.num_episodes, "export lerobot", progress)
    try:
        for lo, hi in episode_blocks(ds):
            block = _read(ds, lo, hi)
            table = _block_table(ds, block, lo, hi, fps)
            sink = sink or pq.ParquetWriter(path, table.schema)
            sink.write_table(table)
            for cam, w in writers.items():
                for frame in block[f"rgb/{cam}"]:
                    w.append_data(frame)
            stats.add(block)
            bar.advance(hi - lo)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
        for w in writers.values():
            w.close()
    return stats.result()


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _write(ds: Dataset, root: Path, fps: int, compact: bool, progress: bool) -> None:
    """The whole LeRobot folder at ``root`` (a temporary name)."""
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    features = _features(ds, fps, compact)
    stats = _write_steps(ds, root, fps, compact, progress)
    (root / EPISODES_FILE).parent.mkdir(parents=True)
    pq.write_table(_episode_table(ds, fps), root / EPISODES_FILE)
    pq.write_table(_tasks_table(ds.task), root / "meta" / "tasks.parquet")
    (root / "meta" / "info.json").write_text(json.dumps(_info(ds, features, fps), indent=4))
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    _fsync_tree(root)


def export_lerobot(src_path: str | os.PathLike, out_dir: str | os.PathLike, *, fps: int | None = None,
                   compact_video: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the store at ``src_path`` as a LeRobot v3.0 dataset folder ``out_dir`` (module docstring);
    returns ``out_dir``. ``fps``: frames per second of timestamps and videos (default ``attrs.env.fps``,
    else :data:`DEFAULT_FPS`). Videos are H.264 yuv444p at crf 0, near-lossless because the frames are
    training inputs; ``compact_video``: yuv420p at crf 18 (what browsers play, about 3x smaller).
    ``progress``: a bar of episodes on stderr."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingDependencyError("LeRobot export needs pyarrow: pip install pyarrow") from None
    check_disjoint([src_path], out_dir)
    ds = open_dataset(src_path)
    if ds.num_episodes == 0:
        raise DatasetError(f"{ds.path}: no episodes to export")
    rate = _fps(ds, fps)
    return write_output(Path(out_dir), overwrite, lambda tmp: _write(ds, tmp, rate, compact_video, progress))
