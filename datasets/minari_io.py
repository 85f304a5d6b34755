"""Export to and import from Minari datasets (Farama's offline-RL format, ``pip install minari``; docs/formats.md).

Export writes one Minari dataset ``<out_root>/<dataset_id>/data`` through ``minari.create_dataset_from_buffers``
(HDF5 storage, no JPEG encoding, so every array is stored as is). Per episode of T steps:

* ``observations`` (T + 1, D) float32: ``data/obs`` rows then ``meta/final_obs``; with rendered frames the
  observation space is a Dict of ``state`` and ``rgb_<camera>`` (T + 1, H, W, 3) uint8 (``data/rgb`` then
  ``meta/final_rgb``);
* ``actions`` (T, A) float32 in [-1, 1] (action space Box(-1, 1)), ``rewards`` (T,) float32;
* ``terminations`` = ``data/terminated``; ``truncations``: True on the last step of an episode that did not
  terminate (the store ends an episode either way; a step before the last is neither);
* ``infos["physics_state"]`` (T + 1, S) float64: ``data/physics_state`` then ``meta/final_physics_state``
  (when the store has simulator states); episode metadata ``seed`` and ``success``.

A ``gym:<id>`` task records the gymnasium EnvSpec (``dataset.recover_environment()``; its actions are the
cdred [-1, 1] scaling of the env's bounds); every task, ``dmc:``/``mw:`` included, is in the dataset
metadata as ``cdred_task``, with the root attributes (``cdred_attrs``) that make the round trip exact.

Import reads a Minari dataset (by id under a data root, or by path) into a new zarr store. A foreign
dataset needs ``task``: Box observations are flattened to float32 (a Dict's low-dimensional Box keys are
concatenated in sorted key order, uint8 (H, W, 3) keys become cameras), actions of a Box with other finite
bounds are mapped linearly onto [-1, 1], and ``attrs.source.notes`` says what had to be assumed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.errors import DatasetError, MissingDependencyError, UsageError
from cdred_pipeline.os_errors import ensure_free

from . import layout as L
from .convert import EpisodeBar, check_disjoint, write_output
from .reader import Dataset, open_dataset
from .validate import task_mismatch
from .writer import EpisodeWriter

__all__ = ["export_minari", "import_minari", "default_dataset_id", "is_minari_dataset", "MINARI_FORMAT"]

MINARI_FORMAT = "cdred-minari"
_INSTALL = "pip install 'minari>=0.5' h5py (or pip install 'cdred[formats]')"


def _minari() -> Any:
    try:
        import minari
    except ImportError:
        raise MissingDependencyError(f"Minari export/import needs the minari package: {_INSTALL}") from None
    return minari


@contextlib.contextmanager
def _data_root(root: Path) -> Iterator[None]:
    """Point Minari's data root (``MINARI_DATASETS_PATH``) at ``root`` for the duration of the block."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _check_id(dataset_id: str) -> None:
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        raise UsageError(f"dataset id {dataset_id!r}: expected (namespace/)name-v<version>, "
                         "e.g. cdred/mw-reach-expert-v0") from None


def default_dataset_id(task: str) -> str:
    """The dataset id an export of ``task`` gets when none is given: ``cdred/<suite>-<name>-v0``."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", task.replace(":", "-")).strip("-") or "dataset"
    return f"cdred/{name}-v0"


def is_minari_dataset(path: str | os.PathLike) -> bool:
    """True when ``path`` is a Minari dataset folder (``data/metadata.json``) or its ``data`` folder."""
    p = Path(path)
    return (p / "data" / "metadata.json").is_file() or ((p / "metadata.json").is_file() and p.name == "data")


# ------------------------------------------------------------------------------------------ export
def _cam_key(camera: str) -> str:
    return f"rgb_{camera}"


def _spaces(ds: Dataset) -> tuple[Any, Any]:
    """(observation space, action space) of the export: Box(D) or Dict(state, rgb_<camera>), Box(-1, 1)."""
    import gymnasium as gym

    state = gym.spaces.Box(-np.inf, np.inf, (ds.obs_dim,), np.float32)
    action = gym.spaces.Box(-1.0, 1.0, (ds.action_dim,), np.float32)
    if not ds.cameras:
        return state, action
    cams = {_cam_key(c): gym.spaces.Box(0, 255, ds.image_shape(c), np.uint8) for c in ds.cameras}
    return gym.spaces.Dict({"state": state, **cams}), action


def _buffer(ds: Dataset, i: int) -> Any:
    """Episode ``i`` as a Minari EpisodeBuffer (see the module docstring)."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    ep = ds.episode(i, rgb=bool(ds.cameras))
    obs: Any = np.concatenate([ep["obs"], ep["final_obs"][None]])
    if ds.cameras:
        obs = {"state": obs, **{_cam_key(c): np.concatenate([ep["rgb"][c], ep["final_rgb"][c][None]])
                                for c in ds.cameras}}
    terminated = ep["terminated"]
    truncated = np.zeros_like(terminated)
    truncated[-1] = not terminated[-1]
    infos = None
    if ds.physics_state_dim:
        infos = {"physics_state": np.concatenate([ep["physics_state"], ep["final_physics_state"][None]])}
    return EpisodeBuffer(id=i, seed=int(ep["seed"]), observations=obs, actions=ep["action"], rewards=ep["reward"],
                         terminations=terminated, truncations=truncated, infos=infos)


def _buffers(ds: Dataset, bar: EpisodeBar) -> Iterator[Any]:
    """Every episode as an EpisodeBuffer, advancing ``bar`` as Minari takes the next one (the last one written)."""
    for i in range(ds.num_episodes):
        yield _buffer(ds, i)
        bar.advance()


def _env_of(task: str) -> Any:
    """The gymnasium EnvSpec of a ``gym:<id>`` task; None for other suites and for an id that is not
    registered or cannot be made here (Minari makes the env it records; the task id stays in the metadata)."""
    if not task.startswith("gym:"):
        return None
    import gymnasium as gym

    try:
        spec = gym.spec(task.split(":", 1)[1])
        gym.make(spec, disable_env_checker=True).close()
    except (gym.error.Error, ImportError, OSError):
        return None
    return spec


def _cdred_metadata(ds: Dataset) -> dict[str, Any]:
    arr_attrs = {k: dict(ds.array(k).attrs) for k in ds.keys() if dict(ds.array(k).attrs)}
    return {"cdred_format": MINARI_FORMAT, "cdred_task": ds.task, "cdred_attrs": ds.attrs,
            "cdred_array_attrs": arr_attrs, "cdred_cameras": list(ds.cameras)}


def _create(ds: Dataset, dataset_id: str, stage: Path, progress: bool) -> None:
    """Create the Minari dataset ``dataset_id`` under the data root ``stage``."""
    minari = _minari()
    obs_space, act_space = _spaces(ds)
    env = _env_of(ds.task)
    with _data_root(stage), warnings.catch_warnings(), EpisodeBar(ds.num_episodes, "export minari", progress) as bar:
        warnings.simplefilter("ignore")  # minari warns about every optional field left empty
        mds = minari.create_dataset_from_buffers(
            dataset_id, _buffers(ds, bar), env=env,
            algorithm_name=str(ds.attrs.get("source", {}).get("kind", "cdred")), author="cdred",
            action_space=act_space, observation_space=obs_space, data_format="hdf5", jpeg_encoding=False,
            description=f"cdred demonstrations of {ds.task} ({ds.num_episodes} episodes)")
        mds.storage.update_episode_metadata([{"success": bool(s)} for s in ds.successes],
                                            episode_indices=range(ds.num_episodes))
        mds.storage.update_metadata(_cdred_metadata(ds))


def _write_export(ds: Dataset, dataset_id: str, tmp: Path, progress: bool) -> None:
    """Create the dataset under a staging data root next to ``tmp``, then move its folder to ``tmp``."""
    stage = tmp.with_name(tmp.name + ".root")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        _create(ds, dataset_id, stage, progress)
        os.replace(stage / dataset_id, tmp)
        ns = stage / dataset_id.split("/")[0] / "namespace_metadata.json"
        final_ns = tmp.parent / "namespace_metadata.json"
        if "/" in dataset_id and ns.is_file() and not final_ns.exists():
            shutil.copyfile(ns, final_ns)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_minari(src_path: str | os.PathLike, dataset_id: str, out_root: str | os.PathLike, *,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Write the store at ``src_path`` as the Minari dataset ``dataset_id`` under the data root
    ``out_root`` (``minari.load_dataset(dataset_id)`` with ``MINARI_DATASETS_PATH=out_root``); returns
    the dataset's folder ``out_root/dataset_id``. ``progress``: a bar of episodes on stderr."""
    _minari()
    _check_id(dataset_id)
    final = Path(out_root).absolute() / dataset_id  # minari joins a relative root onto itself
    check_disjoint([src_path], final)
    ds = open_dataset(src_path)
    if ds.num_episodes == 0:
        raise DatasetError(f"{ds.path}: no episodes to export")
    # Minari writes HDF5 without compression, and HDF5's C library crashes on a full disk: check first
    need = sum(int(ds.array(k).nbytes) for k in ds.keys())
    ensure_free(final.absolute().parent, int(need * 1.2) + (1 << 16), f"the Minari export of {src_path}")
    return write_output(final, overwrite, lambda tmp: _write_export(ds, dataset_id, tmp, progress))


# ------------------------------------------------------------------------------------------ import
def _open(source: str | os.PathLike, root: str | os.PathLike | None) -> tuple[Any, str]:
    """(MinariDataset, name for messages) from a dataset folder (or its ``data`` folder) or an id."""
    minari = _minari()
    p = Path(source)
    for data in (p / "data", p):
        if (data / "metadata.json").is_file():
            try:
                return minari.MinariDataset(data), str(p)
            except (OSError, ValueError, KeyError) as exc:
                raise DatasetError(f"{p}: not a readable Minari dataset ({type(exc).__name__}: {exc})") from None
    if p.exists():
        raise DatasetError(f"{p}: not a Minari dataset (no data/metadata.json)")
    _check_id(str(source))
    where = Path(root) if root is not None else Path(os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets"))
    data = where.expanduser() / str(source) / "data"
    if not (data / "metadata.json").is_file():
        raise DatasetError(f"{source}: no such Minari dataset under {where} (give its folder, or the data root)")
    return minari.MinariDataset(data), str(source)


def _obs_layout(space: Any, name: str) -> tuple[list[str], list[str]]:
    """(low-dimensional keys, camera keys) of an observation space; [""] for a plain Box."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return [""], []
    if not isinstance(space, gym.spaces.Dict):
        raise DatasetError(f"{name}: observation space {type(space).__name__}: import reads Box or Dict of Box")
    low, cams = [], []
    for key, sub in sorted(space.spaces.items()):
        if not isinstance(sub, gym.spaces.Box):
            raise DatasetError(f"{name}: observation space key {key!r} is {type(sub).__name__}, not a Box")
        is_frame = sub.dtype == np.uint8 and len(sub.shape) == 3 and sub.shape[-1] == 3
        (cams if is_frame else low).append(key)
    if not low:
        raise DatasetError(f"{name}: observation space has no low-dimensional key")
    return (["state"] if "state" in low else low), cams


def _action_map(space: Any, name: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high) to map actions linearly onto [-1, 1], or None when they already are in [-1, 1]."""
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(f"{name}: action space {type(space).__name__}: import reads a Box")
    low, high = space.low.astype(np.float64).reshape(-1), space.high.astype(np.float64).reshape(-1)
    if np.all(low == -1.0) and np.all(high == 1.0):
        return None
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        notes.append("actions kept as stored (unbounded action space)")
        return None
    notes.append("actions mapped linearly from the action space bounds onto [-1, 1]")
    return low, high


def _attrs_for(meta: Mapping[str, Any], name: str, task: str | None, notes: list[str]) -> tuple[dict[str, Any], bool]:
    """(root attrs for the new store, whether the dataset is a cdred export)."""
    if meta.get("cdred_format") == MINARI_FORMAT:
        attrs = dict(meta["cdred_attrs"])
        version = attrs.get("cdred_dataset_version")
        if isinstance(version, int) and version > L.LAYOUT_VERSION:
            raise DatasetError(f"{name}: cdred_attrs: layout version {version} is newer than this cdred reads "
                               f"({L.LAYOUT_VERSION}); upgrade cdred")
        if task is not None and task != meta["cdred_task"]:
            raise UsageError(f"{name}: the dataset holds task {meta['cdred_task']!r}, not --task {task!r}")
        attrs["import"] = {"format": "minari", "file": str(meta.get("dataset_id", name))}
        return attrs, True
    if task is None:
        raise UsageError(f"{name}: not a cdred export: give --task TASK (e.g. gym:Hopper-v5)")
    source = {"kind": "import", "format": "minari", "file": str(meta.get("dataset_id", name)), "notes": notes}
    if meta.get("env_spec"):
        source["env_spec"] = str(meta["env_spec"])
    return {"env": {"task": task}, "source": source}, False


def _flat_obs(obs: Any, low: list[str]) -> np.ndarray:
    if low == [""]:
        return np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    parts = [np.asarray(obs[k], dtype=np.float32) for k in low]
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)


def _episode_args(ep: Any, meta: Mapping[str, Any], layout: tuple[list[str], list[str]],
                  amap: tuple[np.ndarray, np.ndarray] | None, name: str) -> dict[str, Any]:
    """One Minari episode as :meth:`EpisodeWriter.append_episode` keyword arguments."""
    low, cams = layout
    obs = _flat_obs(ep.observations, low)
    t = len(ep.rewards)
    term, trunc = np.asarray(ep.terminations, bool), np.asarray(ep.truncations, bool)
    if len(obs) != t + 1 or (term[:-1] | trunc[:-1]).any():
        raise DatasetError(f"{name}: episode {ep.id}: {len(obs)} observations for {t} steps, or an episode end "
                           "before the last step; expected T + 1 observations and one end")
    action = np.asarray(ep.actions, dtype=np.float64).reshape(t, -1)
    if amap is not None:
        action = 2.0 * (action - amap[0]) / (amap[1] - amap[0]) - 1.0
    state = np.asarray(ep.infos.get("physics_state", np.zeros((t + 1, 0))), dtype=np.float64).reshape(t + 1, -1)
    success = meta.get("success")
    if success is None:
        flags = ep.infos.get("success", ep.infos.get("is_success"))
        success = bool(np.asarray(flags).reshape(-1)[-1]) if flags is not None and len(flags) else False
    frames = {c.removeprefix("rgb_"): np.asarray(ep.observations[c], np.uint8) for c in cams}
    return {"obs": obs[:-1], "action": action.astype(np.float32), "reward": np.asarray(ep.rewards, np.float32),
            "terminated": term, "physics_state": state[:-1], "final_obs": obs[-1], "final_physics_state": state[-1],
            "seed": int(meta.get("seed", ep.id)), "success": bool(success),
            "rgb": {c: f[:-1] for c, f in frames.items()} or None, "final_rgb": {c: f[-1] for c, f in frames.items()} or None}


def _complete_env(attrs: dict[str, Any], args: Mapping[str, Any], name: str, given: str | None) -> None:
    """Fill a foreign import's dims from its first episode and check them against the task."""
    env = attrs["env"]
    env.setdefault("obs_dim", int(args["obs"].shape[1]))
    env.setdefault("action_dim", int(args["action"].shape[1]))
    env.setdefault("physics_state_dim", int(args["physics_state"].shape[1]))
    notes = attrs["source"].get("notes")
    if env["physics_state_dim"] == 0 and isinstance(notes, list) and "no simulator states: cannot re-render" not in notes:
        notes.append("no simulator states: cannot re-render")
    why = task_mismatch(str(env["task"]), env["obs_dim"], env["action_dim"])
    if why is not None:
        cls = UsageError if given is not None else DatasetError
        raise cls(f"{name}: --task {env['task']}: the dataset holds {why}; give the task it was recorded on")


def _write_import(mds: Any, name: str, out: Path, attrs: dict[str, Any], ours: bool, task: str | None,
                  notes: list[str], overwrite: bool, bar: EpisodeBar) -> Path:
    """Append every episode of ``mds`` to a new store at ``out`` (advancing ``bar``) and publish it."""
    meta = mds.storage.metadata
    layout = _obs_layout(mds.observation_space, name)
    amap = _action_map(mds.action_space, name, notes)
    episodes_meta = list(mds.storage.get_episode_metadata(range(mds.total_episodes)))
    w: EpisodeWriter | None = None
    try:
        for ep, emeta in zip(mds.iterate_episodes(), episodes_meta):
            args = _episode_args(ep, emeta, layout, amap, name)
            if w is None:
                _complete_env(attrs, args, name, task)
                w = EpisodeWriter(out, attrs, overwrite=overwrite, wait=True)
            try:
                w.append_episode(**args)
            except DatasetError as exc:
                raise DatasetError(f"{name}: episode {ep.id}: {str(exc).removeprefix('append_episode: ')}") from None
            bar.advance()
        bar.close()
        if w is None:
            raise DatasetError(f"{name}: the dataset has no episodes")
        for key, a in (meta.get("cdred_array_attrs") or {}).items():
            w.set_array_attrs(key, a)
        return w.close()
    except BaseException:
        if w is not None:
            w.abort(discard=True)
        raise


def import_minari(dataset_id_or_path: str | os.PathLike, out_path: str | os.PathLike, task: str | None = None, *,
                  root: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Import a Minari dataset (a folder, or an id under the data root ``root``, default
    ``MINARI_DATASETS_PATH``) into a new zarr store ``out_path``; ``task`` is required unless the dataset
    is a cdred export (then the round trip is exact). ``progress``: a bar of episodes on stderr. Returns
    ``out_path``."""
    mds, name = _open(dataset_id_or_path, root)
    if Path(dataset_id_or_path).exists():
        check_disjoint([dataset_id_or_path], out_path)
    notes: list[str] = []
    meta = mds.storage.metadata
    attrs, ours = _attrs_for(meta, name, task, notes)
    with EpisodeBar(mds.total_episodes, "import minari", progress) as bar:
        return _write_import(mds, name, Path(out_path), attrs, ours, task, notes, overwrite, bar)
