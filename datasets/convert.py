"""Converters between the zarr episode store and other formats, plus merging stores.

* HDF5, robomimic layout (robomimic's ``SequenceDataset`` reads it):
  ``data/demo_<i>/{obs, next_obs, actions, rewards, dones, states}`` and ``mask/{train, valid}``.
  Export writes ``obs/state`` (T, D), ``obs/<camera>_image`` (T, H, W, 3), the same under
  ``next_obs`` (its last row is the episode's final observation), ``states`` = physics_state,
  ``dones`` as robomimic sets them (1 on the last step of every demo), ``terminated`` (=
  data/terminated, uint8; not in robomimic), ``final_state`` (the final physics state; not in
  robomimic); ``data`` attrs ``total``, ``env_args`` (JSON: ``type`` 2 = robomimic's
  ``EnvType.GYM_TYPE``, ``env_name`` = ``cdred_task`` = the task id, ``env_kwargs`` {}) and
  ``cdred_attrs`` (the root attributes, JSON); demo attrs ``num_samples``, ``seed``, ``success``,
  ``return``. The filter keys ``mask/train`` and ``mask/valid`` (demo names as byte strings, as
  robomimic's ``split_train_val`` writes them) hold the last ``ceil(valid_fraction * E)`` demos
  as ``valid`` (at most E - 1) and the rest as ``train``.
* Parquet, a folder of plain parquet tables for pyarrow / pandas / Hugging Face ``datasets`` (not
  LeRobot's format: that is :mod:`.lerobot`): ``steps.parquet`` (one row per step: ``index``,
  ``episode_index``, ``frame_index``, ``observation.state``, ``action``, ``next.reward``,
  ``next.done``, ``observation.physics_state`` as list columns and ``observation.images.<camera>``
  as Hugging Face ``datasets`` Image structs ``{bytes: PNG, path: null}``), ``episodes.parquet`` (one
  row per episode with the final observation) and ``meta.json`` (attrs, shapes, dtypes).
* Pickle: a list of episodes ``(obs, action, reward, next_obs)`` as the CDRED / IQ-MPC reference
  code loads (``pickle.load`` then ``dataset[i][0..3]``; dicts with ``observations``/``actions``/
  ``rewards``/``next_observations`` also work). Unpickling runs arbitrary code from the file, so
  it needs ``trust_pickle=True``.

Every output is written under its lock (``.<name>.lock`` next to it: a second writer of the same output
waits, then replaces the finished output only with ``overwrite``), to a temporary name in the same
folder, and renamed when complete; an output that is, contains or lies inside an input is refused.
Imports check the file's dims against the task (the static task table) before writing anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.errors import DatasetError, UsageError
from cdred_pipeline.os_errors import as_user_error, ensure_free

from . import layout as L
from .reader import Dataset, open_dataset
from .validate import task_mismatch
from .writer import EpisodeWriter, output_lock, publish

__all__ = ["export_hdf5", "export_parquet", "train_valid_split", "check_valid_fraction", "robomimic_env_args",
           "DEFAULT_VALID_FRACTION", "ROBOMIMIC_GYM_TYPE", "import_hdf5", "import_parquet", "import_pickle",
           "import_file", "merge_datasets", "detect_format", "canonical_task", "check_disjoint", "write_output",
           "pickle_notice", "TASK_RE", "EpisodeBar", "episode_blocks"]

#: What a task id looks like (suite:name), e.g. ``dmc:cheetah-run``, ``mw:box-close``.
TASK_RE = re.compile(r"^[a-z0-9_]+:[A-Za-z0-9_.\-]+$")
PARQUET_FORMAT = "cdred-parquet"
#: robomimic's ``EnvType.GYM_TYPE`` (robomimic/envs/env_base.py: ROBOSUITE_TYPE 1, GYM_TYPE 2, IG_MOMART_TYPE 3).
ROBOMIMIC_GYM_TYPE = 2
#: Share of the demos an HDF5 export puts under ``mask/valid`` (robomimic's ``split_train_val`` default).
DEFAULT_VALID_FRACTION = 0.1
#: meta.json ``encoding`` of frame columns: PNG in Hugging Face ``datasets`` Image structs; the import
#: also reads ``RAW_ENCODING`` columns (fixed-size binary, row-major HWC).
PNG_ENCODING, RAW_ENCODING = "png image struct", "raw HWC bytes"
#: zlib level of those PNGs (lossless at every level; 1 is the fastest).
PNG_LEVEL = 1
_BLOCK_BYTES = 64 * 1024 * 1024


class EpisodeBar:
    """A tqdm bar of episodes done (``unit="ep"``) on stderr, so that a command's stdout stays its result.

    It first draws once the first episode (or block) is done, so that input refused at its first episode
    stays a one-line error; ``leave=False`` clears it when closed. With ``progress`` False it draws nothing.
    """

    def __init__(self, total: int, desc: str, progress: bool = True) -> None:
        self.total, self.desc, self.progress = total, desc, progress
        self.bar: Any = None

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more episodes done (drawing the bar the first time)."""
        if not self.progress:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=n, desc=self.desc, unit="ep", leave=False)
        else:
            self.bar.update(n)

    def close(self) -> None:
        """Clear the bar (nothing when it never drew)."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> EpisodeBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tmp_for(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise DatasetError(f"{out}: already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(out)
    _remove(tmp)
    return tmp


def write_output(out: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Write a user-named output (file or folder) as stage artifacts are: under the output's lock
    (``.<name>.lock`` next to it; a second writer of the same output waits for the first), into a
    temporary name in the same folder (``write(tmp)``), then one atomic rename onto ``out``. Once it
    holds the lock, a writer finds the output of the one before it: replaced only with ``overwrite``,
    else a one-line DatasetError. ``out`` is never partial and nothing temporary is left on failure."""
    with output_lock(out):
        tmp = _prepare_out(out, overwrite)
        try:
            write(tmp)
            publish(tmp, out, overwrite)
        except BaseException as exc:
            _remove(tmp)
            full = as_user_error(exc, Path(out).absolute().parent, "free some space or write the output elsewhere")
            if full is not None:
                raise full from exc
            raise
    return out


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_disjoint(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs (``--force`` would replace
    or write into an input): a one-line UsageError. Paths are compared resolved (links followed)."""
    target = Path(out).resolve()
    for given in inputs:
        src = Path(given).resolve()
        if _overlap(src, target):
            how = "is" if src == target else ("contains" if src in target.parents else "lies inside")
            raise UsageError(f"{out}: the output {how} the input {given}; write the output somewhere else")


def _spans(starts: np.ndarray, ends: np.ndarray, row: int, block_bytes: int = _BLOCK_BYTES) -> Iterator[tuple[int, int]]:
    """Ranges of whole episodes [lo, hi) (episode i: steps ``starts[i]:ends[i]`` of ``row`` bytes each)
    whose step data is about ``block_bytes`` (at least one episode)."""
    lo = 0
    while lo < len(ends):
        hi = lo + 1
        start = int(starts[lo])
        while hi < len(ends) and (int(ends[hi]) - start) * row <= block_bytes:
            hi += 1
        yield lo, hi
        lo = hi


def episode_blocks(ds: Dataset, block_bytes: int = _BLOCK_BYTES) -> Iterator[tuple[int, int]]:
    """Ranges of whole episodes [lo, hi) of ``ds`` whose step data is about ``block_bytes`` (at least one)."""
    row = 4 * (ds.obs_dim + ds.action_dim + 2) + 8 * ds.physics_state_dim
    row += sum(int(np.prod(ds.image_shape(c))) for c in ds.cameras)
    yield from _spans(ds.episode_starts, ds.episode_ends, row, block_bytes)


def _read_block(ds: Dataset, lo: int, hi: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Step arrays (keys ``data/...``) and episode arrays (``meta/...``) of episodes [lo, hi)."""
    s, e = int(ds.episode_starts[lo]), int(ds.episode_ends[hi - 1])
    data = {f"data/{k}": ds.read(f"data/{k}", slice(s, e)) for k in L.DATA_KEYS}
    meta = {f"meta/{k}": ds.read(f"meta/{k}", slice(lo, hi)) for k in L.META_KEYS if k != "episode_ends"}
    for cam in ds.cameras:
        data[f"{L.RGB_GROUP}/{cam}"] = ds.read(f"{L.RGB_GROUP}/{cam}", slice(s, e))
        meta[f"{L.FINAL_RGB_GROUP}/{cam}"] = ds.read(f"{L.FINAL_RGB_GROUP}/{cam}", slice(lo, hi))
    return data, meta


# ----------------------------------------------------------------------------------------- merge
def merge_datasets(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False,
                   progress: bool = True) -> Path:
    """Concatenate stores of the same task and dims (and cameras) into ``out``, in the given order
    (``progress``: an :class:`EpisodeBar` on stderr)."""
    if len(inputs) < 1:
        raise UsageError("merge: give at least one input dataset")
    check_disjoint(inputs, out)
    dss = [open_dataset(p) for p in inputs]
    first = dss[0]
    ref = {"task": first.task, "obs_dim": first.obs_dim, "action_dim": first.action_dim,
           "physics_state_dim": first.physics_state_dim}
    for ds in dss[1:]:
        have = {"task": ds.task, "obs_dim": ds.obs_dim, "action_dim": ds.action_dim,
                "physics_state_dim": ds.physics_state_dim}
        for k in ref:
            if have[k] != ref[k]:
                raise DatasetError(f"{ds.path}: attrs.env.{k}: {have[k]!r} differs from {first.path}'s {ref[k]!r}; "
                                   "merge only datasets of the same task and dims")
        if ds.cameras != first.cameras:
            raise DatasetError(f"{ds.path}: data/rgb: cameras {ds.cameras} differ from {first.path}'s {first.cameras}")
        for cam in ds.cameras:
            a, b = ds.array(f"{L.RGB_GROUP}/{cam}"), first.array(f"{L.RGB_GROUP}/{cam}")
            if a.shape[1:] != b.shape[1:] or dict(a.attrs) != dict(b.attrs):
                raise DatasetError(f"{ds.path}: {L.RGB_GROUP}/{cam}: frame shape or render attrs differ from "
                                   f"{first.path}'s; re-render both with the same profile")
    attrs = dict(first.attrs)
    attrs["source"] = {"kind": "merge", "parts": [
        {"path": str(ds.path), "episodes": ds.num_episodes, "source": ds.attrs.get("source", {}),
         "scores": ds.attrs.get("scores", {})} for ds in dss]}
    out = Path(out)
    if out.exists() and not overwrite:
        raise DatasetError(f"{out}: already exists; pass --force to replace it")
    w = EpisodeWriter(out, attrs, overwrite=overwrite, wait=True)
    try:
        with EpisodeBar(sum(ds.num_episodes for ds in dss), "merge", progress) as bar:
            for ds in dss:
                for lo, hi in episode_blocks(ds):
                    data, meta = _read_block(ds, lo, hi)
                    w.append_block(data, meta)
                    bar.advance(hi - lo)
        for cam in first.cameras:  # carry the render attrs of each camera
            w.set_array_attrs(f"{L.RGB_GROUP}/{cam}", dict(first.array(f"{L.RGB_GROUP}/{cam}").attrs))
        return w.close()
    except BaseException:
        w.abort(discard=True)
        raise


# ------------------------------------------------------------------------------------------ HDF5
def _hdf5_demo(grp: Any, ds: Dataset, i: int, j: int, rows: tuple[int, int], data: Mapping[str, np.ndarray],
               meta: Mapping[str, np.ndarray], image_compression: str | None) -> None:
    """Write episode ``i`` (row ``j`` of the block's ``meta``, rows ``rows`` of its ``data``) as ``demo_<i>``."""
    s, e = rows
    d = grp.create_group(f"demo_{i}")
    d.attrs["num_samples"] = e - s
    d.attrs["seed"] = int(meta["meta/seed"][j])
    d.attrs["success"] = bool(meta["meta/success"][j])
    d.attrs["return"] = float(meta["meta/return"][j])
    obs = data["data/obs"][s:e]
    d.create_dataset("obs/state", data=obs)
    d.create_dataset("next_obs/state", data=np.concatenate([obs[1:], meta["meta/final_obs"][j:j + 1]]))
    for cam in ds.cameras:
        fr = data[f"{L.RGB_GROUP}/{cam}"][s:e]
        nxt = np.concatenate([fr[1:], meta[f"{L.FINAL_RGB_GROUP}/{cam}"][j:j + 1]])
        kw = {"compression": image_compression} if image_compression else {}
        d.create_dataset(f"obs/{cam}_image", data=fr, **kw)
        d.create_dataset(f"next_obs/{cam}_image", data=nxt, **kw)
    d.create_dataset("actions", data=data["data/action"][s:e])
    d.create_dataset("rewards", data=data["data/reward"][s:e])
    dones = np.zeros(e - s, np.uint8)
    dones[-1] = 1  # robomimic: done on the last step of every demo
    d.create_dataset("dones", data=dones)
    d.create_dataset("terminated", data=data["data/terminated"][s:e].astype(np.uint8))
    d.create_dataset("states", data=data["data/physics_state"][s:e])
    d.create_dataset("final_state", data=meta["meta/final_physics_state"][j])


def train_valid_split(num_episodes: int, valid_fraction: float = DEFAULT_VALID_FRACTION) -> tuple[list[int], list[int]]:
    """(train, valid) episode indices: the last ``ceil(valid_fraction * E)`` episodes are valid, at most
    E - 1 of them (train is never empty), so the split is deterministic and needs no seed."""
    check_valid_fraction(valid_fraction)
    n_valid = math.ceil(round(valid_fraction * num_episodes, 9))
    n_valid = min(n_valid, max(num_episodes - 1, 0))
    cut = num_episodes - n_valid
    return list(range(cut)), list(range(cut, num_episodes))


def check_valid_fraction(valid_fraction: float) -> None:
    """Refuse a validation share outside [0, 1): a one-line UsageError."""
    if not isinstance(valid_fraction, (int, float)) or not 0.0 <= float(valid_fraction) < 1.0:
        raise UsageError(f"--valid-fraction {valid_fraction!r}: give a share in [0, 1), e.g. 0.1")


def robomimic_env_args(task: str) -> dict[str, Any]:
    """The ``data`` attr ``env_args`` robomimic reads (``type`` is its integer ``EnvType``): a gym-type env
    named by the cdred task id, no constructor kwargs (the env is made by cdred, not ``gym.make``)."""
    return {"env_name": task, "type": ROBOMIMIC_GYM_TYPE, "env_kwargs": {}, "cdred_task": task}


def _write_mask(f: Any, num_episodes: int, valid_fraction: float) -> None:
    """robomimic's filter keys ``mask/train`` and ``mask/valid``: demo names as byte strings."""
    for key, idx in zip(("train", "valid"), train_valid_split(num_episodes, valid_fraction)):
        f.create_dataset(f"mask/{key}", data=np.array([f"demo_{i}" for i in idx], dtype="S"))


def _write_hdf5(ds: Dataset, tmp: Path, image_compression: str | None, valid_fraction: float,
                progress: bool) -> None:
    """Write the whole store ``ds`` as a robomimic-style HDF5 file at ``tmp``, a block of episodes at a time."""
    import h5py

    with h5py.File(tmp, "w") as f:
        grp = f.create_group("data")
        grp.attrs["total"] = ds.num_steps
        grp.attrs["env_args"] = json.dumps(robomimic_env_args(ds.task))
        grp.attrs["cdred_attrs"] = json.dumps(ds.attrs)
        arr_attrs = {k: dict(ds.array(k).attrs) for k in ds.keys() if dict(ds.array(k).attrs)}
        if arr_attrs:
            grp.attrs["cdred_array_attrs"] = json.dumps(arr_attrs)
        grp.attrs["cdred_dataset_version"] = ds.version
        with EpisodeBar(ds.num_episodes, "export hdf5", progress) as bar:
            for lo, hi in episode_blocks(ds):
                data, meta = _read_block(ds, lo, hi)
                base = int(ds.episode_starts[lo])
                for i in range(lo, hi):
                    rows = (int(ds.episode_starts[i]) - base, int(ds.episode_ends[i]) - base)
                    _hdf5_demo(grp, ds, i, i - lo, rows, data, meta, image_compression)
                    bar.advance()
        _write_mask(f, ds.num_episodes, valid_fraction)
        f.flush()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())


def hdf5_bytes(ds: Dataset) -> int:
    """About the size of :func:`export_hdf5`'s file: the step arrays uncompressed (observations twice, as
    obs and next_obs), camera frames at their compressed size in the store (twice), plus 5%."""
    need = 0
    for key in ds.keys():
        arr = ds.array(key)
        if key.startswith((L.RGB_GROUP, L.FINAL_RGB_GROUP)):
            need += 2 * int(arr.nbytes_stored())
        elif key.startswith("data/"):
            need += int(arr.nbytes) * (2 if key == "data/obs" else 1)
    return int(need * 1.05) + (1 << 16)


def export_hdf5(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                image_compression: str | None = "gzip", valid_fraction: float = DEFAULT_VALID_FRACTION,
                progress: bool = True) -> Path:
    """Write a store as a robomimic HDF5 file (see the module docstring; ``valid_fraction``: the share of
    demos, the last ones, under ``mask/valid``; ``progress``: an :class:`EpisodeBar` on stderr); returns
    ``out``. The free space is checked first: HDF5's C library crashes the process on a full disk."""
    check_valid_fraction(valid_fraction)
    check_disjoint([path], out)
    ds = open_dataset(path)
    ensure_free(Path(out).absolute().parent, hdf5_bytes(ds), f"the HDF5 export of {path}")
    return write_output(Path(out), overwrite,
                        lambda tmp: _write_hdf5(ds, tmp, image_compression, valid_fraction, progress))


def _demo_index(name: str) -> int | None:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else None


def _h5_obs(file: Path, demo: str, node: Any, what: str) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """A robomimic obs group (or a flat dataset) -> (low-dim obs (T, D), {camera: frames}, key order)."""
    if not hasattr(node, "keys"):
        a = np.asarray(node[()])
        return (a.reshape(len(a), -1) if a.ndim != 2 else a), {}, [what]
    if "state" in node:
        keys = ["state"]
    else:
        keys = sorted(k for k in node.keys() if not (node[k].ndim == 4 and node[k].dtype == np.uint8))
    cams = {k[:-len("_image")] if k.endswith("_image") else k: np.asarray(node[k][()])
            for k in sorted(node.keys()) if node[k].ndim == 4 and node[k].dtype == np.uint8}
    if not keys:
        raise DatasetError(f"{file}: data/{demo}/{what}: no low-dimensional observation keys")
    parts = []
    for k in keys:
        a = np.asarray(node[k][()])
        parts.append(a.reshape(len(a), -1))
    lens = {len(p) for p in parts}
    if len(lens) != 1:
        raise DatasetError(f"{file}: data/{demo}/{what}: keys {keys} have different lengths {sorted(lens)}")
    return np.concatenate(parts, axis=1), cams, [f"{what}/{k}" for k in keys]


def _env_args_task(grp: Any) -> str | None:
    """The cdred task id a file's ``env_args`` records: ``cdred_task``, or ``env_name`` when ``type`` is
    ``"cdred"`` (cdred HDF5 files of the string type, which keep terminated in ``dones``); None otherwise."""
    try:
        args = json.loads(grp.attrs.get("env_args", "{}"))
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(args, dict):
        return None
    task = args.get("cdred_task") or (args.get("env_name") if args.get("type") == "cdred" else None)
    return task if isinstance(task, str) and TASK_RE.match(task) else None


def _h5_mask(file: Path, f: Any, demos: Sequence[tuple[int, str]]) -> dict[str, list[int]]:
    """The file's robomimic filter keys (``mask/<key>``: demo names) as episode indices of the new store
    (demos in numeric order); a name that is no demo of the file is a one-line DatasetError."""
    if "mask" not in f:
        return {}
    index = {name: i for i, (_, name) in enumerate(demos)}
    out: dict[str, list[int]] = {}
    for key in sorted(k for k in f["mask"].keys() if hasattr(f[f"mask/{k}"], "shape")):
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in np.asarray(f[f"mask/{key}"][()]).reshape(-1)]
        missing = [n for n in names if n not in index]
        if missing:
            raise DatasetError(f"{file}: mask/{key}: {missing[0]!r} is not a demo in data/")
        out[key] = sorted(index[n] for n in names)
    return out


def _h5_attrs(file: Path, grp: Any, task: str | None) -> tuple[dict[str, Any], bool]:
    """(root attrs for the new store, whether the file is a cdred export) from the file's ``data`` group."""
    if "cdred_attrs" in grp.attrs:
        attrs = json.loads(grp.attrs["cdred_attrs"])
        version = attrs.get("cdred_dataset_version")
        if isinstance(version, int) and version > L.LAYOUT_VERSION:
            raise DatasetError(f"{file}: data.attrs.cdred_attrs: layout version {version} is newer than this cdred "
                               f"reads ({L.LAYOUT_VERSION}); upgrade cdred")
        if task is not None and task != attrs.get("env", {}).get("task"):
            raise UsageError(f"{file}: data.attrs.cdred_attrs: the file holds task {attrs['env'].get('task')!r}, "
                             f"not --task {task!r}")
        return attrs, True
    recorded = None if task is not None else _env_args_task(grp)
    task = task or recorded
    if task is None:
        raise UsageError(f"{file}: not a cdred export: give --task TASK (e.g. mw:box-close)")
    env_args = grp.attrs.get("env_args")
    attrs = {"env": {"task": task}, "source": {"kind": "import", "format": "robomimic", "file": file.name}}
    if recorded is not None:
        attrs["source"]["task_from"] = "env_args"
    if env_args is not None:
        attrs["source"]["env_args"] = env_args if isinstance(env_args, str) else str(env_args)
    return attrs, False


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _h5_final(file: Path, name: str, d: Any, obs: np.ndarray, cams: dict[str, np.ndarray],
              notes: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The final observation and frames of a demo: the last ``next_obs`` row, else the last ``obs`` row."""
    if "next_obs" not in d:
        _note(notes, "final_obs copied from the last obs row (no next_obs)")
        return obs[-1], {c: v[-1] for c, v in cams.items()}
    nobs, ncams, _ = _h5_obs(file, name, d["next_obs"], "next_obs")
    if nobs.shape != obs.shape or set(ncams) != set(cams):
        raise DatasetError(f"{file}: data/{name}/next_obs: shape {nobs.shape} does not match obs {obs.shape}")
    return nobs[-1], {c: v[-1] for c, v in ncams.items()}


def _h5_states(d: Any, t: int, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A demo's simulator states and final state ((T, 0) and (0,) when the file has none)."""
    if "states" not in d:
        _note(notes, "no simulator states (states missing): cannot re-render")
        return np.zeros((t, 0)), np.zeros(0)
    states = np.asarray(d["states"][()], dtype=np.float64).reshape(t, -1)
    if "final_state" in d:
        return states, np.asarray(d["final_state"][()], dtype=np.float64).reshape(-1)
    _note(notes, "final_physics_state copied from the last state (no final_state)")
    return states, states[-1]


def _h5_episode(file: Path, name: str, d: Any, notes: list[str]) -> dict[str, Any]:
    """One demo group as :meth:`EpisodeWriter.append_episode` arguments (plus ``obs_keys``)."""
    for req in ("obs", "actions", "rewards"):
        if req not in d:
            raise DatasetError(f"{file}: data/{name}/{req}: missing key")
    if len(d["actions"]) == 0:
        raise DatasetError(f"{file}: data/{name} has no steps (an episode needs at least one); remove that demo "
                           "from the file and import again")
    obs, cams, obs_keys = _h5_obs(file, name, d["obs"], "obs")
    t = len(obs)
    final_obs, final_rgb = _h5_final(file, name, d, obs, cams, notes)
    action = np.asarray(d["actions"][()])
    reward = np.asarray(d["rewards"][()]).reshape(-1)
    if action.ndim != 2 or len(action) != t or len(reward) != t:
        raise DatasetError(f"{file}: data/{name}/actions: shape {action.shape} and rewards {reward.shape} "
                           f"do not match obs ({t} steps)")
    term = "terminated" if "terminated" in d else "dones"  # dones: foreign files, string-type cdred files
    dones = np.asarray(d[term][()]).reshape(-1).astype(bool) if term in d else np.zeros(t, bool)
    states, final_state = _h5_states(d, t, notes)
    return {"obs": obs, "action": action, "reward": reward, "terminated": dones, "physics_state": states,
            "final_obs": final_obs, "final_physics_state": final_state, "rgb": cams or None,
            "final_rgb": final_rgb or None, "obs_keys": obs_keys}


def _h5_env_dims(attrs: dict[str, Any], ep: Mapping[str, Any]) -> None:
    """Complete a foreign file's attrs from its first demo: dims, obs keys, square image size."""
    attrs["env"].update(obs_dim=int(ep["obs"].shape[1]), action_dim=int(ep["action"].shape[1]),
                        physics_state_dim=int(ep["physics_state"].shape[1]))
    attrs["source"]["obs_keys"] = ep["obs_keys"]
    shapes = {v.shape[1:3] for v in (ep["rgb"] or {}).values()}
    if len(shapes) == 1 and (hw := shapes.pop())[0] == hw[1]:
        attrs["env"]["image_size"] = int(hw[0])


def _h5_write(file: Path, out: Path, grp: Any, demos: list[tuple[int, str]], attrs: dict[str, Any], ours: bool,
              overwrite: bool, mask: Mapping[str, list[int]], bar: EpisodeBar) -> Path:
    """Append every demo to a new store at ``out`` (advancing ``bar``) and publish it."""
    notes: list[str] = []
    w: EpisodeWriter | None = None
    try:
        for idx, name in demos:
            d = grp[name]
            ep = _h5_episode(file, name, d, notes)
            if w is None:
                if not ours:
                    _h5_env_dims(attrs, ep)
                given = None if ours or attrs["source"].get("task_from") else attrs["env"]["task"]
                _check_fits_task(file, attrs["env"], given)
                try:
                    w = EpisodeWriter(out, attrs, overwrite=overwrite, wait=True)
                except DatasetError as exc:
                    raise DatasetError(f"{file}: {exc}") from None
            del ep["obs_keys"]
            try:
                w.append_episode(**ep, seed=int(d.attrs.get("seed", idx)), success=bool(d.attrs.get("success", False)))
            except DatasetError as exc:
                raise DatasetError(f"{file}: data/{name}: {str(exc).removeprefix('append_episode: ')}") from None
            bar.advance()
        bar.close()
        w.attrs["import"] = {"format": "hdf5", "file": file.name, **({"mask": dict(mask)} if mask else {})}
        if ours:
            for key, a in json.loads(grp.attrs.get("cdred_array_attrs", "{}")).items():
                w.set_array_attrs(key, a)
        if notes:
            src = dict(w.attrs.get("source", {}))
            src["notes"] = list(src.get("notes", [])) + notes
            w.attrs["source"] = src
        w.group.attrs.update(L.plain(w.attrs))
        return w.close()
    except BaseException:
        if w is not None:
            w.abort(discard=True)
        raise


def import_hdf5(file: str | os.PathLike, out: str | os.PathLike, *, task: str | None = None,
                overwrite: bool = False, progress: bool = True) -> Path:
    """Import a robomimic-style HDF5 file (ours or robomimic's) into a zarr store at ``out``.

    Low-dim observation keys are concatenated in sorted key order (``obs/state`` alone when present);
    ``uint8`` (T, H, W, 3) keys named ``<camera>_image`` become ``data/rgb/<camera>``. The final
    observation is the last row of ``next_obs``; without ``next_obs`` the last ``obs`` row is
    repeated and ``attrs.source.notes`` says so. ``data/terminated`` is the demo's ``terminated``
    (cdred exports), else its ``dones``. The filter keys under ``mask/`` are kept as episode indices
    in ``attrs.import.mask`` (e.g. ``{"train": [0, 1, ...], "valid": [...]}``). ``progress``: an
    :class:`EpisodeBar` on stderr.
    """
    import h5py

    file = Path(file)
    try:
        f = h5py.File(file, "r")
    except OSError as exc:
        raise DatasetError(f"{file}: not an HDF5 file ({exc})") from None
    with f:
        if "data" not in f:
            raise DatasetError(f"{file}: data: missing key; expected a robomimic-style file data/demo_<i>/{{obs,actions,rewards}}")
        grp = f["data"]
        demos = sorted((i, k) for k in grp.keys() if (i := _demo_index(k)) is not None)
        if not demos:
            raise DatasetError(f"{file}: data: no demo_<i> groups")
        attrs, ours = _h5_attrs(file, grp, task)
        mask = _h5_mask(file, f, demos)
        with EpisodeBar(len(demos), "import hdf5", progress) as bar:
            return _h5_write(file, Path(out), grp, demos, attrs, ours, overwrite, mask, bar)


# --------------------------------------------------------------------------------------- parquet
def _list_array(a: np.ndarray) -> Any:
    import pyarrow as pa

    n = len(a)
    width = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32) if width else np.zeros(n + 1, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(a).reshape(-1)))


def _png(frame: np.ndarray) -> bytes:
    """One (H, W, 3) uint8 frame as PNG bytes (lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def _image_array(a: np.ndarray) -> Any:
    """Frames (n, H, W, 3) as Hugging Face ``datasets`` Image structs ``{bytes: PNG, path: null}``."""
    import pyarrow as pa

    pngs = pa.array([_png(f) for f in a], type=pa.binary())
    return pa.StructArray.from_arrays([pngs, pa.nulls(len(a), pa.string())], names=["bytes", "path"])


def _hf_metadata(columns: Mapping[str, Mapping[str, Any]]) -> dict[bytes, bytes]:
    """Parquet schema metadata that makes Hugging Face ``datasets`` decode the PNG columns as images
    (features it does not name it infers from the arrow types)."""
    feats = {name: {"_type": "Image"} for name, spec in columns.items() if spec.get("encoding") == PNG_ENCODING}
    return {b"huggingface": json.dumps({"info": {"features": feats}}).encode()}


def _arrow_columns(columns: Mapping[str, Mapping[str, Any]], arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Arrow columns for the specs that map to a zarr array: uint8 frames as bytes, vectors as lists."""
    import pyarrow as pa

    out: dict[str, Any] = {}
    for name, spec in columns.items():
        if "zarr" not in spec:
            continue
        a = arrays[spec["zarr"]]
        if spec["dtype"] == "uint8":
            out[name] = _image_array(a)
        elif spec["shape"]:
            out[name] = _list_array(a)
        else:
            out[name] = pa.array(a)
    return out


def _parquet_columns(ds: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(step columns, episode columns) of a store's parquet export: dtype, shape, zarr key, attrs."""
    columns = {
        "index": {"dtype": "int64", "shape": []},
        "episode_index": {"dtype": "int64", "shape": []},
        "frame_index": {"dtype": "int64", "shape": []},
        "observation.state": {"dtype": "float32", "shape": [ds.obs_dim], "zarr": "data/obs"},
        "action": {"dtype": "float32", "shape": [ds.action_dim], "zarr": "data/action"},
        "next.reward": {"dtype": "float32", "shape": [], "zarr": "data/reward"},
        "next.done": {"dtype": "bool", "shape": [], "zarr": "data/terminated"},
        "observation.physics_state": {"dtype": "float64", "shape": [ds.physics_state_dim], "zarr": "data/physics_state"},
    }
    ep_columns = {
        "episode_index": {"dtype": "int64", "shape": []},
        "length": {"dtype": "int64", "shape": [], "zarr": "meta/length"},
        "seed": {"dtype": "int64", "shape": [], "zarr": "meta/seed"},
        "success": {"dtype": "bool", "shape": [], "zarr": "meta/success"},
        "return": {"dtype": "float64", "shape": [], "zarr": "meta/return"},
        "final_observation.state": {"dtype": "float32", "shape": [ds.obs_dim], "zarr": "meta/final_obs"},
        "final_observation.physics_state": {"dtype": "float64", "shape": [ds.physics_state_dim],
                                            "zarr": "meta/final_physics_state"},
    }
    for cam in ds.cameras:
        shape = list(ds.image_shape(cam))
        columns[f"observation.images.{cam}"] = {"dtype": "uint8", "shape": shape, "encoding": PNG_ENCODING,
                                                "zarr": f"{L.RGB_GROUP}/{cam}",
                                                "attrs": dict(ds.array(f"{L.RGB_GROUP}/{cam}").attrs)}
        ep_columns[f"final_observation.images.{cam}"] = {"dtype": "uint8", "shape": shape, "encoding": PNG_ENCODING,
                                                         "zarr": f"{L.FINAL_RGB_GROUP}/{cam}"}
    return columns, ep_columns


def _parquet_tables(ds: Any, lo: int, hi: int, columns: Mapping[str, Any], ep_columns: Mapping[str, Any]) -> tuple[Any, Any]:
    """The step table and the episode table of episodes ``lo:hi``."""
    import pyarrow as pa

    data, meta = _read_block(ds, lo, hi)
    s0 = int(ds.episode_starts[lo])
    n = len(data["data/obs"])
    lens = ds.lengths[lo:hi]
    ep_idx = np.repeat(np.arange(lo, hi, dtype=np.int64), lens)
    frame = np.arange(n, dtype=np.int64) - np.repeat(ds.episode_starts[lo:hi] - s0, lens)
    cols: dict[str, Any] = {"index": pa.array(np.arange(s0, s0 + n, dtype=np.int64)),
                            "episode_index": pa.array(ep_idx), "frame_index": pa.array(frame)}
    cols.update(_arrow_columns(columns, data))
    ecols: dict[str, Any] = {"episode_index": pa.array(np.arange(lo, hi, dtype=np.int64))}
    ecols.update(_arrow_columns(ep_columns, meta))
    return (pa.table(cols).replace_schema_metadata(_hf_metadata(columns)),
            pa.table(ecols).replace_schema_metadata(_hf_metadata(ep_columns)))


def _write_parquet_files(ds: Any, tmp: Path, columns: Mapping[str, Any], ep_columns: Mapping[str, Any],
                         progress: bool) -> None:
    """Write ``steps.parquet`` and ``episodes.parquet`` into ``tmp``, a block of episodes at a time."""
    import pyarrow.parquet as pq

    writers: dict[str, Any] = {}
    with EpisodeBar(ds.num_episodes, "export parquet", progress) as bar:
        for lo, hi in episode_blocks(ds):
            for name, table in zip(("steps.parquet", "episodes.parquet"),
                                   _parquet_tables(ds, lo, hi, columns, ep_columns)):
                if name not in writers:
                    writers[name] = pq.ParquetWriter(tmp / name, table.schema, compression="zstd")
                writers[name].write_table(table)
            bar.advance(hi - lo)
    for wr in writers.values():
        wr.close()


def _write_parquet(ds: Dataset, tmp: Path, progress: bool) -> None:
    """Write the whole store ``ds`` as a parquet export folder at ``tmp``."""
    tmp.mkdir(parents=True)
    columns, ep_columns = _parquet_columns(ds)
    _write_parquet_files(ds, tmp, columns, ep_columns, progress)
    meta_json = {"format": PARQUET_FORMAT, "cdred_dataset_version": ds.version, "attrs": ds.attrs,
                 "num_episodes": ds.num_episodes, "num_steps": ds.num_steps, "cameras": ds.cameras,
                 "files": {"steps": "steps.parquet", "episodes": "episodes.parquet"},
                 "columns": columns, "episode_columns": ep_columns}
    (tmp / "meta.json").write_text(json.dumps(meta_json, indent=2, sort_keys=True))


def export_parquet(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                   progress: bool = True) -> Path:
    """Write a store as a folder of plain parquet tables for pyarrow / pandas / Hugging Face ``datasets``
    (``steps.parquet``, ``episodes.parquet``, ``meta.json``; frames as PNG Image structs; ``progress``: an
    :class:`EpisodeBar` on stderr)."""
    check_disjoint([path], out)
    ds = open_dataset(path)
    return write_output(Path(out), overwrite, lambda tmp: _write_parquet(ds, tmp, progress))


def _col_images(col: Any, name: str, shape: tuple[int, ...], file: Path) -> np.ndarray:
    """Decode an Image-struct column of PNGs to frames (n, *shape) uint8, each checked against ``shape``."""
    import pyarrow as pa
    from PIL import Image, UnidentifiedImageError

    if not pa.types.is_struct(col.type) or col.type.get_field_index("bytes") < 0:
        raise DatasetError(f"{file}: {name}: expected an image struct {{bytes, path}}, got {col.type}")
    out = np.empty((len(col), *shape), np.uint8)
    for row, png in enumerate(col.field("bytes").to_pylist()):
        try:
            frame = np.asarray(Image.open(io.BytesIO(png or b"")).convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DatasetError(f"{file}: {name}: row {row}: not a readable PNG ({exc})") from None
        if frame.shape != shape:
            raise DatasetError(f"{file}: {name}: row {row}: image of shape {frame.shape}, meta.json says {shape}")
        out[row] = frame
    return out


def _col_numpy(table: Any, name: str, spec: Mapping[str, Any], file: Path) -> np.ndarray:
    import pyarrow as pa

    if name not in table.column_names:
        raise DatasetError(f"{file}: {name}: missing column")
    col = table.column(name).combine_chunks()
    n = len(col)
    shape = tuple(spec["shape"])
    if spec["dtype"] == "uint8":
        if spec.get("encoding") == PNG_ENCODING:
            return _col_images(col, name, shape, file)
        if not pa.types.is_fixed_size_binary(col.type) and not pa.types.is_binary(col.type):
            raise DatasetError(f"{file}: {name}: expected binary image bytes, got {col.type}")
        raw = b"".join(col.to_pylist()) if not pa.types.is_fixed_size_binary(col.type) else col.buffers()[1].to_pybytes()
        size = int(np.prod(shape))
        offset = col.offset * size if pa.types.is_fixed_size_binary(col.type) else 0
        a = np.frombuffer(raw, dtype=np.uint8, count=n * size, offset=offset)
        return a.reshape(n, *shape).copy()
    if shape:
        if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type) \
                and not pa.types.is_fixed_size_list(col.type):
            raise DatasetError(f"{file}: {name}: expected a list column, got {col.type}")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if flat.size != n * int(np.prod(shape)):
            raise DatasetError(f"{file}: {name}: rows do not all have {shape} values")
        return flat.astype(spec["dtype"], copy=False).reshape(n, *shape)
    return col.to_numpy(zero_copy_only=False).astype(spec["dtype"], copy=False)


def _parquet_meta(folder: Path, task: str | None) -> tuple[dict[str, Any], Path]:
    """The ``meta.json`` of a parquet export (checked: format, version, task) and its path."""
    meta_file = folder / "meta.json" if folder.is_dir() else folder.with_name("meta.json")
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{meta_file}: missing; a cdred parquet export is a folder with meta.json, "
                           "steps.parquet and episodes.parquet") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta_file}: not JSON ({exc})") from None
    if meta.get("format") != PARQUET_FORMAT:
        raise DatasetError(f"{meta_file}: format: {meta.get('format')!r}, expected {PARQUET_FORMAT!r}")
    version = meta.get("cdred_dataset_version")
    if not isinstance(version, int) or version > L.LAYOUT_VERSION:
        raise DatasetError(f"{meta_file}: cdred_dataset_version: {version!r} is newer than this cdred reads "
                           f"({L.LAYOUT_VERSION}); upgrade cdred")
    attrs = meta["attrs"]
    if task is not None and task != attrs.get("env", {}).get("task"):
        raise UsageError(f"{meta_file}: attrs.env.task: the export holds {attrs['env'].get('task')!r}, not --task {task!r}")
    return meta, meta_file


def _parquet_read(folder: Path, meta: Mapping[str, Any]) -> tuple[Any, Path, Any, Path]:
    """(step table, its file, episode table, its file) of a parquet export."""
    import pyarrow.parquet as pq

    files = meta.get("files", {})
    steps_file = folder / files.get("steps", "steps.parquet")
    ep_file = folder / files.get("episodes", "episodes.parquet")
    for f in (steps_file, ep_file):
        if not f.is_file():
            raise DatasetError(f"{f}: missing file")
    try:
        return pq.read_table(steps_file), steps_file, pq.read_table(ep_file), ep_file
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise DatasetError(f"{folder}: unreadable parquet ({type(exc).__name__}: {exc})") from None


def _parquet_arrays(folder: Path, meta: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(per-step arrays, per-episode arrays) keyed like the store, in episode and frame order."""
    steps, steps_file, eps, ep_file = _parquet_read(folder, meta)
    index = {"dtype": "int64", "shape": []}
    cols = {name: _col_numpy(steps, name, spec, steps_file) for name, spec in meta["columns"].items() if "zarr" in spec}
    ecols = {name: _col_numpy(eps, name, spec, ep_file) for name, spec in meta["episode_columns"].items() if "zarr" in spec}
    ep_index = _col_numpy(steps, "episode_index", index, steps_file)
    frame = _col_numpy(steps, "frame_index", index, steps_file)
    order = np.lexsort((frame, ep_index))
    if not np.array_equal(order, np.arange(len(order))):
        cols = {k: v[order] for k, v in cols.items()}
        ep_index = ep_index[order]
    eorder = np.argsort(_col_numpy(eps, "episode_index", index, ep_file), kind="stable")
    ecols = {k: v[eorder] for k, v in ecols.items()}
    lengths = ecols["length"]
    counts = np.bincount(ep_index, minlength=len(lengths)) if len(ep_index) else np.zeros(len(lengths), np.int64)
    if len(counts) != len(lengths) or not np.array_equal(counts, lengths):
        raise DatasetError(f"{steps_file}: episode_index: step counts per episode do not match episodes.parquet lengths")
    data = {spec["zarr"]: cols[name] for name, spec in meta["columns"].items() if "zarr" in spec}
    emeta = {spec["zarr"]: ecols[name] for name, spec in meta["episode_columns"].items() if "zarr" in spec}
    return data, emeta


def _append_blocks(w: EpisodeWriter, data: Mapping[str, np.ndarray], emeta: Mapping[str, np.ndarray],
                   bar: EpisodeBar) -> None:
    """Append imported step and episode arrays a block of about ``_BLOCK_BYTES`` of whole episodes at a time
    (the same store as one append; all at once when there are no episodes), advancing ``bar``."""
    lengths = np.asarray(emeta["meta/length"], dtype=np.int64)
    if not len(lengths):
        w.append_block(data, emeta)
        return
    ends = np.cumsum(lengths)
    starts = ends - lengths
    row = sum(a.nbytes // max(len(a), 1) for a in data.values())
    for lo, hi in _spans(starts, ends, row):
        s, e = int(starts[lo]), int(ends[hi - 1])
        w.append_block({k: v[s:e] for k, v in data.items()}, {k: v[lo:hi] for k, v in emeta.items()})
        bar.advance(hi - lo)


def import_parquet(folder: str | os.PathLike, out: str | os.PathLike, *, task: str | None = None,
                   overwrite: bool = False, progress: bool = True) -> Path:
    """Import a parquet folder written by :func:`export_parquet` (meta.json names every column;
    ``progress``: an :class:`EpisodeBar` on stderr while the store is written)."""
    folder = Path(folder)
    meta, _ = _parquet_meta(folder, task)
    if folder.is_file():
        folder = folder.parent
    data, emeta = _parquet_arrays(folder, meta)
    attrs = dict(meta["attrs"])
    attrs["import"] = {"format": "parquet", "file": folder.name}
    _check_fits_task(folder, attrs.get("env", {}), task)
    _check_finite_range(folder, data, emeta)
    w = EpisodeWriter(out, attrs, overwrite=overwrite, wait=True)
    try:
        with EpisodeBar(len(emeta["meta/length"]), "import parquet", progress) as bar:
            _append_blocks(w, data, emeta, bar)
        for name, spec in meta["columns"].items():
            if spec.get("attrs"):
                w.set_array_attrs(spec["zarr"], spec["attrs"])
        return w.close()
    except BaseException:
        w.abort(discard=True)
        raise


def _check_finite_range(file: Path, data: Mapping[str, np.ndarray], meta: Mapping[str, np.ndarray]) -> None:
    for key, a in list(data.items()) + list(meta.items()):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            row = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0][0])
            raise DatasetError(f"{file}: {key}: NaN/inf at row {row}")
    act = data.get("data/action")
    if act is not None and act.size and np.abs(act).max() > 1.0 + L.ACTION_TOL:
        raise DatasetError(f"{file}: data/action: values outside [-1, 1] (max |a| = {float(np.abs(act).max()):.4g})")


# ---------------------------------------------------------------------------------------- pickle
def _episode_parts(ep: Any, i: int, file: Path) -> tuple[Any, Any, Any, Any]:
    if isinstance(ep, Mapping):
        def pick(*names: str) -> Any:
            for n in names:
                if n in ep:
                    return ep[n]
            raise DatasetError(f"{file}: episode {i}: missing key {names[0]!r} (or {', '.join(map(repr, names[1:]))})")

        return (pick("obs", "observations"), pick("action", "actions"), pick("reward", "rewards"),
                pick("next_obs", "next_observations"))
    if isinstance(ep, (list, tuple)) and len(ep) >= 4:
        return ep[0], ep[1], ep[2], ep[3]
    raise DatasetError(f"{file}: episode {i}: expected (obs, action, reward, next_obs), got "
                       f"{type(ep).__name__}{f' of length {len(ep)}' if hasattr(ep, '__len__') else ''}")


def _stack(x: Any, what: str, i: int, file: Path) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors
        x = x.detach().cpu().numpy()
    try:
        if isinstance(x, (list, tuple)):
            x = [np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for v in x]
            return np.stack(x) if x else np.zeros((0,))
        return np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{file}: episode {i}: {what}: cannot stack into an array ({exc})") from None


def pickle_notice(file: str | os.PathLike, sha256: str) -> str:
    """The line an import prints after unpickling ``file``: the file's code ran, and which file it was."""
    return (f"{file}: unpickling ran code from this file (sha256 {sha256}); --trust-pickle is only for files "
            "you trust")


def _unpickle(file: Path) -> tuple[Any, str]:
    """(the unpickled object, the sha256 of exactly the bytes unpickled). Runs code from the file."""
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{file}: no such file") from None
    try:
        return pickle.loads(raw), hashlib.sha256(raw).hexdigest()  # noqa: S301 - guarded by trust_pickle, documented
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as exc:
        raise DatasetError(f"{file}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _pickle_episode(ep: Any, i: int, file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs, action, reward, next_obs) of pickled episode ``i`` as arrays of shapes (T, D), (T, A), (T,), (T, D)."""
    o, a, r, no = (_stack(x, n, i, file) for x, n in
                   zip(_episode_parts(ep, i, file), ("obs", "action", "reward", "next_obs")))
    t = len(a)
    if o.ndim != 2 or no.shape != o.shape or len(o) != t or a.ndim != 2 or r.reshape(-1).shape != (t,) or t < 1:
        raise DatasetError(f"{file}: episode {i}: shapes obs {o.shape}, action {a.shape}, reward {r.shape}, "
                           f"next_obs {no.shape} do not fit (T, D), (T, A), (T,), (T, D) with T >= 1")
    return o, a, r.reshape(-1), no


def _pickle_writer(file: Path, out: str | os.PathLike, task: str, sha256: str, o: np.ndarray, a: np.ndarray,
                   overwrite: bool) -> EpisodeWriter:
    """The writer of a pickle import, its dims from episode 0 (checked against ``task`` first)."""
    attrs = {"env": {"task": task, "obs_dim": int(o.shape[1]), "action_dim": int(a.shape[1]), "physics_state_dim": 0},
             "source": {"kind": "import", "format": "pickle", "file": file.name, "sha256": sha256,
                        "notes": ["no simulator states: cannot re-render",
                                  "obs = [obs[0], next_obs[:-1]], final_obs = next_obs[-1] (reference loader)"]}}
    _check_fits_task(file, attrs["env"], task)
    return EpisodeWriter(out, attrs, overwrite=overwrite, wait=True)


def import_pickle(file: str | os.PathLike, out: str | os.PathLike, *, task: str, trust_pickle: bool = False,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Import a pickled list of episodes ``(obs, action, reward, next_obs)`` (CDRED / IQ-MPC demos).

    As the reference loader does, episode i's observation sequence is ``obs[0]`` followed by
    ``next_obs[0..T-1]``: ``data/obs`` = [obs[0], next_obs[:-1]] and ``final_obs`` = next_obs[-1].
    No simulator states are stored (physics_state width 0): such a dataset cannot be re-rendered.
    The sha256 of the file is recorded in ``attrs.source.sha256`` (:func:`pickle_notice` says so).

    ``trust_pickle`` must be True: unpickling executes code chosen by whoever wrote the file.
    ``progress``: an :class:`EpisodeBar` on stderr.
    """
    file = Path(file)
    if not trust_pickle:
        raise UsageError(f"{file}: loading a pickle runs arbitrary code from the file; "
                         "pass --trust-pickle only for files you trust")
    if task is None:
        raise UsageError(f"{file}: give --task TASK (e.g. dmc:cheetah-run) for a pickle import")
    episodes, sha256 = _unpickle(file)
    if isinstance(episodes, Mapping) and "observations" in episodes:
        episodes = [episodes]
    if not isinstance(episodes, (list, tuple)) or not episodes:
        raise DatasetError(f"{file}: expected a non-empty list of episodes (obs, action, reward, next_obs), "
                           f"got {type(episodes).__name__}")
    w: EpisodeWriter | None = None
    bar = EpisodeBar(len(episodes), "import pickle", progress)
    try:
        for i, ep in enumerate(episodes):
            o, a, r, no = _pickle_episode(ep, i, file)
            if w is None:
                w = _pickle_writer(file, out, task, sha256, o, a, overwrite)
            if o.shape[1] != w.attrs["env"]["obs_dim"] or a.shape[1] != w.attrs["env"]["action_dim"]:
                raise DatasetError(f"{file}: episode {i}: dims obs {o.shape[1]}, action {a.shape[1]} differ from "
                                   f"episode 0's {w.attrs['env']['obs_dim']}, {w.attrs['env']['action_dim']}")
            try:
                w.append_episode(np.concatenate([o[:1], no[:-1]]), a, r, np.zeros(len(a), bool), None, no[-1], None,
                                 seed=i, success=False)
            except DatasetError as exc:
                raise DatasetError(f"{file}: episode {i}: {str(exc).removeprefix('append_episode: ')}") from None
            bar.advance()
        bar.close()
        return w.close()
    except BaseException:
        bar.close()
        if w is not None:
            w.abort(discard=True)
        raise


def _check_fits_task(file: Path, env: Mapping[str, Any], given: str | None) -> None:
    """Refuse an import whose dims do not fit its task (``--task`` or the file's own) before anything is
    written: one line (UsageError for ``--task``, DatasetError for the file's own label)."""
    why = task_mismatch(str(env.get("task")), env.get("obs_dim"), env.get("action_dim"))
    if why is None:
        return
    if given is not None:
        raise UsageError(f"{file}: --task {given}: the file holds {why}; give the task the file was recorded on")
    raise DatasetError(f"{file}: attrs.env: {why}; the file is labelled with another task")


# ---------------------------------------------------------------------------------------- dispatch
def canonical_task(task: str) -> str:
    """The canonical id of ``task`` (``cdred_pipeline.envs.parse_task``); UsageError with the closest
    ids when unknown. Falls back to a syntax check when the env layer cannot be imported."""
    try:
        from cdred_pipeline.envs import parse_task
    except ImportError:
        if not TASK_RE.match(task):
            raise UsageError(f"--task {task!r}: expected suite:name, e.g. dmc:cheetah-run or mw:box-close") from None
        return task
    return parse_task(task).task


def detect_format(file: str | os.PathLike) -> str:
    """'hdf5', 'parquet' or 'pickle' from the file's content (magic bytes) or folder layout."""
    p = Path(file)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / "meta.json").is_file():
            return "parquet"
        if (p / "zarr.json").is_file():
            raise UsageError(f"{p}: already a zarr store; use `cdred package merge` or copy it")
        raise DatasetError(f"{p}: a folder that is neither a parquet export (meta.json) nor a zarr store")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head[:1] == b"\x80" or p.suffix in (".pkl", ".pickle"):
        return "pickle"
    raise DatasetError(f"{p}: unknown format (not HDF5, parquet or pickle)")


def import_file(file: str | os.PathLike, out: str | os.PathLike, *, task: str | None = None,
                fmt: str = "auto", trust_pickle: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Import HDF5 (robomimic or our export), our parquet export, or a trusted pickle into ``out``
    (``progress``: an :class:`EpisodeBar` on stderr)."""
    check_disjoint([file], out)
    if task is not None:
        task = canonical_task(task)
    fmt = detect_format(file) if fmt == "auto" else fmt
    if fmt in ("hdf5", "robomimic"):
        return import_hdf5(file, out, task=task, overwrite=overwrite, progress=progress)
    if fmt == "parquet":
        return import_parquet(file, out, task=task, overwrite=overwrite, progress=progress)
    if fmt == "pickle":
        return import_pickle(file, out, task=task, trust_pickle=trust_pickle, overwrite=overwrite, progress=progress)
    raise UsageError(f"--format {fmt!r}: use auto, hdf5, parquet or pickle")
