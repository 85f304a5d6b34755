"""Reading episode stores: :func:`open_dataset` (random access by episode and step) and
:func:`load_episodes` (whole episodes in memory for training, with pixel frame stacking)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.envs.spec import OBS_KINDS
from cdred_pipeline.errors import DatasetError

from . import layout as L

__all__ = ["Dataset", "DatasetReadError", "CheckedArray", "open_dataset", "load_episodes", "check_readable",
           "stack_frames", "dir_size", "FRAME_STACK"]

#: Frames per pixel observation, as TD-MPC2's pixel wrapper (and ``make_env(obs="rgb")``).
FRAME_STACK = 3


class DatasetReadError(DatasetError):
    """A chunk of a dataset's array does not decode (a truncated or corrupt store): one line naming the
    array and the chunk that says to run ``cdred package validate``."""


def _first_bad_chunk(arr: Any, lo: int, hi: int) -> tuple[str, int, int, Exception | None]:
    """(chunk key, first row, last row, its error) of the first chunk of rows [lo, hi) that fails to decode."""
    rows = int(arr.chunks[0])
    for c in range(lo // rows, max(lo // rows, (hi - 1) // rows) + 1):
        a, b = c * rows, min((c + 1) * rows, int(arr.shape[0]))
        try:
            arr[a:b]
        except Exception as exc:  # noqa: BLE001 - codecs raise their own types for damaged bytes
            return arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1)), a, b - 1, exc
    return "?", lo, hi - 1, None


def read_error(path: Path, key: str, arr: Any, rows: tuple[int, int], exc: Exception) -> DatasetReadError:
    """The one-line error for a failed read of rows ``rows`` of array ``key``, naming the chunk that fails."""
    chunk, a, b, err = _first_bad_chunk(arr, *rows)
    err = err or exc
    why = " ".join(f"{type(err).__name__}: {err}".split())[:160]
    return DatasetReadError(f"{path}: {key}: chunk {chunk} (rows {a}-{b}) cannot be read ({why}): the store is "
                            f"truncated or corrupt; `cdred package validate {path}` lists every problem")


def _row_span(sel: Any, n: int) -> tuple[int, int]:
    """Rows [lo, hi) that a selection along axis 0 touches (the whole array when it cannot tell)."""
    first = sel[0] if isinstance(sel, tuple) and sel else sel
    if isinstance(first, slice):
        lo, hi, _ = first.indices(n)
        return lo, max(lo + 1, hi)
    if isinstance(first, (int, np.integer)):
        i = int(first) + (n if int(first) < 0 else 0)
        return i, i + 1
    idx = np.asarray(first).reshape(-1) if first is not None else np.zeros(0)
    if idx.size and idx.dtype.kind in "iu":
        return int(idx.min()), int(idx.max()) + 1
    return 0, n


class CheckedArray:
    """A read-only zarr array of a dataset whose reads raise :class:`DatasetReadError` (one line naming
    the array and the chunk) instead of a codec's own error; every other attribute is the array's."""

    def __init__(self, path: Path, key: str, array: Any) -> None:
        self.path, self.key, self.zarr_array = path, key, array

    def __getattr__(self, name: str) -> Any:
        return getattr(self.zarr_array, name)

    def _read(self, sel: Any, how: Any) -> Any:
        try:
            return how(sel)
        except (IndexError, TypeError, DatasetError):
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise their own types for damaged bytes
            raise read_error(self.path, self.key, self.zarr_array,
                             _row_span(sel, int(self.zarr_array.shape[0])), exc) from None

    def __getitem__(self, sel: Any) -> Any:
        return self._read(sel, self.zarr_array.__getitem__)

    def get_orthogonal_selection(self, sel: Any) -> Any:
        """``zarr.Array.get_orthogonal_selection`` with one-line read errors."""
        return self._read(sel, self.zarr_array.get_orthogonal_selection)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return int(self.zarr_array.shape[0])


class Dataset:
    """A finished episode store opened read-only. Use :func:`open_dataset` to get one.

    Per-episode metadata (``episode_ends``, ``lengths``, ``seeds``, ``returns``, ``successes``) is
    loaded eagerly; step data is read lazily from zarr, one chunk range per call.
    """

    def __init__(self, path: Path, group: Any) -> None:
        self.path = path
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs.asdict())
        self.env: dict[str, Any] = dict(self.attrs.get("env", {}))
        self.version: int = int(self.attrs["cdred_dataset_version"])
        self.episode_ends = self.read("meta/episode_ends").astype(np.int64)
        self.episode_starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        self.lengths = self.read("meta/length").astype(np.int64)
        self.seeds = self.read("meta/seed").astype(np.int64)
        self.returns = self.read("meta/return").astype(np.float64)
        self.successes = self.read("meta/success").astype(bool)
        self.cameras: list[str] = sorted(group[L.RGB_GROUP].array_keys()) if L.RGB_GROUP in group else []

    # ----------------------------------------------------------------------------- shape facts
    @property
    def num_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def num_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def obs_dim(self) -> int:
        return int(self.group["data/obs"].shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.group["data/action"].shape[1])

    @property
    def physics_state_dim(self) -> int:
        return int(self.group["data/physics_state"].shape[1])

    @property
    def task(self) -> str:
        return str(self.env.get("task"))

    def image_shape(self, camera: str) -> tuple[int, int, int]:
        """(H, W, 3) of a camera's frames."""
        return tuple(self.group[f"{L.RGB_GROUP}/{self._camera(camera)}"].shape[1:])  # type: ignore[return-value]

    def array(self, key: str) -> CheckedArray:
        """The array at ``key`` (e.g. ``"data/obs"``, ``"data/rgb/corner"``) as a :class:`CheckedArray`:
        a damaged chunk is a one-line :class:`DatasetReadError`, never a codec traceback."""
        if key not in self.group:
            raise DatasetError(f"{self.path}: {key}: no such array")
        return CheckedArray(self.path, key, self.group[key])

    def read(self, key: str, sel: Any = slice(None)) -> np.ndarray:
        """``array(key)[sel]`` as a numpy array (one-line :class:`DatasetReadError` on a damaged chunk)."""
        return np.asarray(self.array(key)[sel])

    def keys(self) -> list[str]:
        """Every array key in the store, sorted."""
        out: list[str] = []

        def walk(g: Any, prefix: str) -> None:
            for name, node in sorted(g.members()):
                key = f"{prefix}{name}"
                if hasattr(node, "members"):
                    walk(node, key + "/")
                else:
                    out.append(key)

        walk(self.group, "")
        return out

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, task={self.task!r}, episodes={self.num_episodes}, "
                f"steps={self.num_steps}, obs_dim={self.obs_dim}, action_dim={self.action_dim}, cameras={self.cameras})")

    # --------------------------------------------------------------------------- random access
    def _camera(self, camera: str | None) -> str:
        if camera is None:
            if len(self.cameras) == 1:
                return self.cameras[0]
            raise DatasetError(f"{self.path}: data/rgb: " + (
                "no rendered frames; run `cdred render-visual` first" if not self.cameras
                else f"several cameras {self.cameras}; pick one with camera="))
        if camera not in self.cameras:
            raise DatasetError(f"{self.path}: data/rgb/{camera}: no such camera (have {self.cameras or 'none'})")
        return camera

    def _check_episode(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.num_episodes
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range [0, {self.num_episodes})")
        return i

    def episode(self, i: int, *, rgb: bool | str | Sequence[str] = False) -> dict[str, Any]:
        """Episode ``i``: every per-step array sliced to its T steps plus its metadata.

        Keys: obs, action, reward, terminated, physics_state, final_obs, final_physics_state, seed,
        length, return, success; with ``rgb`` (True = every camera, or camera names) also
        ``rgb`` {camera: (T, H, W, 3)} and ``final_rgb`` {camera: (H, W, 3)}.
        """
        i = self._check_episode(i)
        s, e = int(self.episode_starts[i]), int(self.episode_ends[i])
        out: dict[str, Any] = {k: self.read(f"data/{k}", slice(s, e)) for k in L.DATA_KEYS}
        out["final_obs"] = self.read("meta/final_obs", i)
        out["final_physics_state"] = self.read("meta/final_physics_state", i)
        out.update(seed=int(self.seeds[i]), length=int(self.lengths[i]), success=bool(self.successes[i]))
        out["return"] = float(self.returns[i])
        if rgb:
            cams = self.cameras if rgb is True else ([rgb] if isinstance(rgb, str) else list(rgb))
            out["rgb"], out["final_rgb"] = {}, {}
            for cam in cams:
                cam = self._camera(cam)
                out["rgb"][cam] = self.read(f"{L.RGB_GROUP}/{cam}", slice(s, e))
                out["final_rgb"][cam] = self.read(f"{L.FINAL_RGB_GROUP}/{cam}", i)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.episode(i)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.num_episodes):
            yield self.episode(i)

    def locate(self, steps: Any) -> tuple[np.ndarray, np.ndarray]:
        """Global step indices -> (episode index, step within episode)."""
        steps = np.asarray(steps, dtype=np.int64)
        if steps.size and (steps.min() < 0 or steps.max() >= self.num_steps):
            raise IndexError(f"step out of range [0, {self.num_steps})")
        ep = np.searchsorted(self.episode_ends, steps, side="right")
        return ep, steps - self.episode_starts[ep]

    def steps(self, indices: Any, keys: Sequence[str] = ("obs", "action", "reward")) -> dict[str, np.ndarray]:
        """Rows at global step ``indices`` (any order, repeats allowed) for ``keys`` under ``data/``
        (``"rgb/<camera>"`` too), plus ``episode`` and ``t`` (the step within its episode)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        ep, t = self.locate(idx)
        uniq, inv = np.unique(idx, return_inverse=True)
        out: dict[str, np.ndarray] = {"episode": ep, "t": t}
        for k in keys:
            arr = self.array(f"data/{k}")
            if len(uniq) == 0:
                out[k] = np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
                continue
            lo, hi = int(uniq[0]), int(uniq[-1]) + 1
            if hi - lo <= 4 * len(uniq) + arr.chunks[0]:  # dense enough: one contiguous read
                block = np.asarray(arr[lo:hi])
                out[k] = block[uniq - lo][inv]
            else:
                out[k] = np.asarray(arr.get_orthogonal_selection((uniq,) + (slice(None),) * (arr.ndim - 1)))[inv]
        return out

    # ------------------------------------------------------------------------------ sizes
    def storage(self) -> dict[str, dict[str, Any]]:
        """Per array: shape, dtype, chunks, uncompressed bytes and bytes stored on disk."""
        out = {}
        for key in self.keys():
            arr = self.group[key]
            out[key] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
                        "nbytes": int(arr.nbytes), "stored": dir_size(self.path / key)}
        return out


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path`` (files removed meanwhile are skipped): a store's size on disk."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a finished store read-only after its structural checks (version, keys, dtypes, dims,
    episode_ends against data lengths, chunk files present and as long as their Blosc headers say)
    and the checks of a finished store (``attrs.env.task`` is the task of the probe frames, its dims
    are the task's in the static task table).

    Raises DatasetError with one line naming the file, the key and the problem when the store is
    not a dataset, from a newer layout, truncated, inconsistent or labelled with another task. A
    store of 0 episodes opens. Content checks (NaN rows, action range, chunks that do not decode) are
    :func:`~cdred_pipeline.datasets.validate`'s ``deep`` pass; a read that meets a chunk that does not
    decode raises :class:`DatasetReadError`.
    """
    from .validate import validate

    path = Path(path)
    problems = validate(path, deep=False, empty_ok=True)
    if problems:
        more = f"+{len(problems) - 1} more; " if len(problems) > 1 else ""
        hint = f" ({more}run `cdred package validate {path}`)" if more or (path / "zarr.json").is_file() else ""
        raise DatasetError(problems[0] + hint)
    return Dataset(path, L.open_group(path, mode="r"))


# ------------------------------------------------------------------------------ training reader
def stack_frames(frames: np.ndarray, k: int = FRAME_STACK) -> np.ndarray:
    """(T+1, H, W, 3) frames of one episode -> (T+1, 3k, H, W) stacked observations.

    Observation t is frames t-k+1 .. t (oldest first) moved to channels-first and concatenated along
    channels; before the episode start the first frame is repeated, exactly as a frame-stacking env
    fills its deque with the reset frame (TD-MPC2's PixelWrapper).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    chw = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    n = len(chw)
    idx = np.arange(n)[:, None] + np.arange(-k + 1, 1)[None, :]  # (n, k), oldest first
    np.clip(idx, 0, None, out=idx)
    return chw[idx].reshape(n, 3 * k, *chw.shape[2:])


def _episode_keys(ds: Dataset, obs: str, camera: str | None) -> list[str]:
    """The arrays :func:`load_episodes` reads for ``obs`` (per-step first, then per-episode)."""
    if obs == "state":
        return ["data/action", "data/reward", "data/obs", "meta/final_obs"]
    cam = ds._camera(camera)
    return ["data/action", "data/reward", f"{L.RGB_GROUP}/{cam}", f"{L.FINAL_RGB_GROUP}/{cam}"]


def check_readable(path: str | os.PathLike, num_demos: int | None = None, obs: str = "state",
                   camera: str | None = None, *, keys: Sequence[str] | None = None) -> None:
    """Decode every chunk that :func:`load_episodes` with the same arguments reads (or, with ``keys``,
    every chunk of those arrays, e.g. ``("data/physics_state", "meta/final_physics_state")`` for
    render-visual), one chunk at a time (memory: one chunk), and raise the one-line
    :class:`DatasetReadError` of the first that does not decode: a stage calls this before it opens
    its artifact, so a damaged store leaves nothing behind."""
    ds = open_dataset(path)
    n = ds.num_episodes if num_demos is None else min(max(int(num_demos), 0), ds.num_episodes)
    rows = {"data": int(ds.episode_ends[n - 1]) if n else 0, "meta": n}
    for key in keys if keys is not None else _episode_keys(ds, obs, camera):
        arr = ds.array(key)
        stop = int(arr.shape[0]) if keys is not None else rows[key.split("/", 1)[0]]
        step = int(arr.chunks[0])
        for start in range(0, stop, step):
            arr[start:min(start + step, stop)]


def load_episodes(path: str | os.PathLike, num_demos: int | None = None, obs: str = "state",
                  camera: str | None = None) -> list[dict[str, np.ndarray]]:
    """The first ``num_demos`` episodes (all when None) as dicts for a replay buffer.

    Each dict has obs (T+1, D) float32 (state: final_obs appended as the last row) or (T+1, 9, H, W)
    uint8 (rgb: 3 stacked frames, channels-first, see :func:`stack_frames`), action (T, A) float32
    and reward (T,) float32. Each array is read with one contiguous zarr read.
    """
    if obs not in OBS_KINDS:
        raise DatasetError(f"load_episodes: obs={obs!r}; use one of {', '.join(OBS_KINDS)}")
    ds = open_dataset(path)
    n = ds.num_episodes if num_demos is None else int(num_demos)
    if n < 0 or n > ds.num_episodes:
        raise DatasetError(f"{ds.path}: meta/episode_ends: asked for {n} demos, the dataset has {ds.num_episodes}")
    if n == 0:
        return []
    steps = int(ds.episode_ends[n - 1])
    action = ds.read("data/action", slice(0, steps))
    reward = ds.read("data/reward", slice(0, steps))
    if obs == "state":
        data = ds.read("data/obs", slice(0, steps))
        final = ds.read("meta/final_obs", slice(0, n))
    else:
        cam = ds._camera(camera)
        data = ds.read(f"{L.RGB_GROUP}/{cam}", slice(0, steps))
        final = ds.read(f"{L.FINAL_RGB_GROUP}/{cam}", slice(0, n))
    for key, a in (("data/action", action), ("data/reward", reward),
                   ("data/obs" if obs == "state" else "", data), ("meta/final_obs" if obs == "state" else "", final)):
        if key and not np.isfinite(a).all():
            row = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0][0])
            raise DatasetError(f"{ds.path}: {key}: NaN/inf at row {row}; `cdred package validate {ds.path}` lists all problems")
    if action.size and np.abs(action).max() > 1.0 + L.ACTION_TOL:
        raise DatasetError(f"{ds.path}: data/action: values outside [-1, 1] (max |a| = {float(np.abs(action).max()):.4g})")
    out = []
    for i in range(n):
        s, e = int(ds.episode_starts[i]), int(ds.episode_ends[i])
        o = np.concatenate([data[s:e], final[i:i + 1]])
        if obs == "rgb":
            o = stack_frames(o)
        out.append({"obs": o, "action": action[s:e], "reward": reward[s:e]})
    return out
