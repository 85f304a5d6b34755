"""Checking an episode store against the layout (docs/design.md §6): :func:`validate` lists every problem.

Each problem is one line ``<store path>: <key>: <what is wrong>``. The structural pass (cheap: only
metadata, ``meta/*``, chunk file names and each chunk file's 16-byte Blosc header are read) and the
checks of a finished store (consolidated; ``attrs.env.task`` is the task of the probe frames and its
dims are the task's in the static task table) are what :func:`open_dataset` runs and refuses on;
:func:`validate` also refuses a store of 0 episodes. The deep pass decodes every chunk: NaN/inf rows,
actions outside [-1, 1], unreadable chunks, per-episode returns that do not match the rewards.

:func:`validate` composes small checkers, one per invariant: each takes the opened store
(:class:`_Store`) and returns its problems (:data:`STRUCTURE`, :data:`FINISHED`, then :data:`CONTENT`
for the deep pass). A path that is not a zarr 3 group of a layout version this cdred reads stops at that check.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cdred_pipeline.errors import CdredError

from . import layout as L

__all__ = ["validate", "task_dims", "task_mismatch"]

_NDIM = {"obs": 2, "action": 2, "reward": 1, "terminated": 1, "physics_state": 2,
         "episode_ends": 1, "seed": 1, "length": 1, "return": 1, "success": 1,
         "final_obs": 2, "final_physics_state": 2}
_FLOATS = {"data/obs", "data/action", "data/reward", "data/physics_state", "meta/final_obs",
           "meta/final_physics_state", "meta/return"}


def _line(path: Path, key: str | None, msg: str) -> str:
    """One problem line: ``<store path>: <key>: <msg>``."""
    return f"{path}: {key}: {msg}" if key else f"{path}: {msg}"


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------- gates
def _read_root(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The root ``zarr.json`` of a zarr format 3 group at ``path``, or None with the reason."""
    if not path.exists():
        return None, [_line(path, None, "no such file or directory")]
    if not path.is_dir():
        return None, [_line(path, None, "not a zarr store (a file, not a directory); `cdred package import` "
                                        "converts HDF5/parquet/pickle")]
    root_json = path / "zarr.json"
    if not root_json.is_file():
        if (path / ".zgroup").is_file():
            return None, [_line(path, ".zgroup", "a zarr format 2 store; cdred datasets are zarr format 3 (re-import it)")]
        return None, [_line(path, None, "not a zarr store (no zarr.json)")]
    try:
        with open(root_json) as fh:
            root = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        return None, [_line(path, "zarr.json", f"unreadable ({exc})")]
    if not isinstance(root, dict) or root.get("zarr_format") != 3 or root.get("node_type") != "group":
        return None, [_line(path, "zarr.json", "not a zarr format 3 group")]
    return root, []


def _check_version(path: Path, attrs: dict[str, Any]) -> list[str]:
    """``attrs.cdred_dataset_version`` is a layout version this cdred reads."""
    version = attrs.get("cdred_dataset_version")
    key = "attrs.cdred_dataset_version"
    if version is None:
        return [_line(path, key, "missing: not a cdred dataset")]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return [_line(path, key, f"{version!r} is not a layout version")]
    if version > L.LAYOUT_VERSION:
        return [_line(path, key, f"layout version {version} is newer than this cdred reads "
                                 f"({L.LAYOUT_VERSION}); upgrade cdred")]
    return []


def _check_attrs(path: Path, attrs: dict[str, Any]) -> list[str]:
    """``attrs.env`` has the required keys and non-negative int dims; the other sections are dicts."""
    problems = []
    env = attrs.get("env")
    if not isinstance(env, dict):
        problems.append(_line(path, "attrs.env", "missing or not a dict"))
        env = {}
    problems += [_line(path, f"attrs.env.{k}", "missing") for k in L.REQUIRED_ENV_KEYS if k not in env]
    for k in ("obs_dim", "action_dim", "physics_state_dim", "image_size"):
        if k in env and env[k] is not None and (not isinstance(env[k], int) or isinstance(env[k], bool) or env[k] < 0):
            problems.append(_line(path, f"attrs.env.{k}", f"{env[k]!r} is not a non-negative int"))
    for section in ("sim", "source", "scores"):
        if section in attrs and not isinstance(attrs[section], dict):
            problems.append(_line(path, f"attrs.{section}", "not a dict"))
    return problems


# ------------------------------------------------------------------------------ opened store
@dataclasses.dataclass
class _Store:
    """An opened store: its root metadata and the layout's arrays that opened with the right rank."""

    path: Path
    root: dict[str, Any]
    env: dict[str, Any]
    arrays: dict[str, Any]  # data/* and meta/* arrays
    cams: dict[str, Any]  # camera -> data/rgb/<camera>
    final_cams: dict[str, Any]  # camera -> meta/final_rgb/<camera>
    ends: np.ndarray | None = None  # meta/episode_ends, None when missing or unreadable
    ends_error: str | None = None

    def bad(self, key: str | None, msg: str) -> str:
        return _line(self.path, key, msg)

    def length(self, key: str) -> int | None:
        return int(self.arrays[key].shape[0]) if key in self.arrays else None

    def width(self, key: str) -> int | None:
        a = self.arrays.get(key)
        return int(a.shape[1]) if a is not None and a.ndim == 2 else None

    @property
    def all_arrays(self) -> dict[str, Any]:
        """Every array of the store by key, frames included."""
        out = dict(self.arrays)
        out.update({f"{L.RGB_GROUP}/{c}": a for c, a in self.cams.items()})
        out.update({f"{L.FINAL_RGB_GROUP}/{c}": a for c, a in self.final_cams.items()})
        return out

    @functools.cached_property
    def scan(self) -> dict[str, "_Scan"]:
        """Every array decoded chunk by chunk (the deep pass), by key."""
        return {key: _scan(self.path, key, arr, self.ends) for key, arr in sorted(self.all_arrays.items())}


def _open_array(g: Any, path: Path, key: str, dtype: str) -> tuple[Any | None, list[str]]:
    """The layout array ``key`` if present, an array, of ``dtype`` and of the layout's rank."""
    try:
        node = g[key]
    except (KeyError, FileNotFoundError):
        return None, [_line(path, key, "missing")]
    except Exception as exc:  # noqa: BLE001 - any zarr failure is damaged metadata, reported as such
        return None, [_line(path, key, f"unreadable metadata ({_error(exc)})")]
    if not hasattr(node, "shape"):
        return None, [_line(path, key, "is a group, expected an array")]
    problems = [] if np.dtype(node.dtype) == np.dtype(dtype) else [_line(path, key, f"dtype {node.dtype}, expected {dtype}")]
    rank = _NDIM[key.split("/", 1)[1]]
    if node.ndim != rank:
        return None, problems + [_line(path, key, f"{node.ndim}-d array of shape {node.shape}, expected {rank}-d")]
    return node, problems


def _open_store(path: Path, root: dict[str, Any]) -> tuple[_Store | None, list[str]]:
    """Open the group and the layout's arrays; the problems found on the way (missing, wrong dtype or rank)."""
    try:
        g = L.open_group(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - any zarr failure is a damaged store, reported as such
        return None, [_line(path, "zarr.json", f"cannot open as a zarr group ({_error(exc)})")]
    problems: list[str] = []
    arrays: dict[str, Any] = {}
    for group_name, spec in (("data", L.DATA_KEYS), ("meta", L.META_KEYS)):
        for name, dtype in spec.items():
            node, found = _open_array(g, path, f"{group_name}/{name}", dtype)
            problems += found
            if node is not None:
                arrays[f"{group_name}/{name}"] = node
    cams: dict[str, dict[str, Any]] = {L.RGB_GROUP: {}, L.FINAL_RGB_GROUP: {}}
    for grp_key, target in cams.items():
        if grp_key in g:
            for name, node in g[grp_key].members():
                if hasattr(node, "shape"):
                    target[name] = node
                else:
                    problems.append(_line(path, f"{grp_key}/{name}", "is a group, expected an array"))
    env = (root.get("attributes") or {}).get("env")
    store = _Store(path, root, env if isinstance(env, dict) else {}, arrays, cams[L.RGB_GROUP], cams[L.FINAL_RGB_GROUP])
    _read_ends(store)
    return store, problems


def _read_ends(store: _Store) -> None:
    """Read ``meta/episode_ends`` into the store (or the reason it cannot be read)."""
    if "meta/episode_ends" not in store.arrays:
        return
    try:
        store.ends = np.asarray(store.arrays["meta/episode_ends"][:], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001
        store.ends_error = f"unreadable ({_error(exc)})"


# ----------------------------------------------------------------------- structural checkers
def _check_step_lengths(s: _Store) -> list[str]:
    """Every per-step array has as many rows as data/obs."""
    n = s.length("data/obs")
    return [s.bad(f"data/{k}", f"{nk} rows, data/obs has {n}") for k in L.DATA_KEYS
            if (nk := s.length(f"data/{k}")) is not None and n is not None and nk != n]


def _check_episode_lengths(s: _Store) -> list[str]:
    """Every per-episode array has as many rows as meta/episode_ends."""
    e = s.length("meta/episode_ends")
    return [s.bad(f"meta/{k}", f"{ek} rows, meta/episode_ends has {e} episodes") for k in L.META_KEYS
            if (ek := s.length(f"meta/{k}")) is not None and e is not None and ek != e]


def _check_episode_ends(s: _Store) -> list[str]:
    """meta/episode_ends is readable, strictly increasing from 0 and ends at the number of steps."""
    if s.ends_error:
        return [s.bad("meta/episode_ends", s.ends_error)]
    if s.ends is None:
        return []
    problems = []
    ends, n = s.ends, s.length("data/obs")
    steps = np.diff(np.concatenate([[0], ends]))
    if len(ends) and (steps <= 0).any():
        i = int(np.argmax(steps <= 0))
        problems.append(s.bad("meta/episode_ends", f"not strictly increasing from 0 (episode {i} ends at "
                                                   f"{int(ends[i])}, the previous at {int(ends[i - 1]) if i else 0})"))
    total = int(ends[-1]) if len(ends) else 0
    if n is not None and total != n:
        problems.append(s.bad("meta/episode_ends", f"last end is {total} but the data arrays have {n} rows"))
    return problems


def _check_length_column(s: _Store) -> list[str]:
    """meta/length agrees with the episode lengths that meta/episode_ends gives."""
    if s.ends is None or "meta/length" not in s.arrays or s.length("meta/length") != len(s.ends):
        return []
    steps = np.diff(np.concatenate([[0], s.ends]))
    try:
        lens = np.asarray(s.arrays["meta/length"][:], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001
        return [s.bad("meta/length", f"unreadable ({_error(exc)})")]
    if np.array_equal(lens, steps):
        return []
    i = int(np.argmax(lens != steps))
    return [s.bad("meta/length", f"episode {i} has length {int(lens[i])} but episode_ends gives {int(steps[i])}")]


def _check_widths(s: _Store) -> list[str]:
    """Array widths match attrs.env's dims, and final_* arrays match their per-step arrays."""
    problems = []
    for key, env_key in (("data/obs", "obs_dim"), ("data/action", "action_dim"),
                         ("data/physics_state", "physics_state_dim")):
        w = s.width(key)
        if w is not None and isinstance(s.env.get(env_key), int) and w != s.env[env_key]:
            problems.append(s.bad(key, f"width {w}, attrs.env.{env_key} is {s.env[env_key]}"))
    for key, ref in (("meta/final_obs", "data/obs"), ("meta/final_physics_state", "data/physics_state")):
        w, wr = s.width(key), s.width(ref)
        if w is not None and wr is not None and w != wr:
            problems.append(s.bad(key, f"width {w}, {ref} has width {wr}"))
    return problems


def _check_camera(s: _Store, cam: str, arr: Any) -> list[str]:
    """data/rgb/<cam> holds uint8 (N, H, W, 3) frames of attrs.env.image_size, with its final frames."""
    key, fkey = f"{L.RGB_GROUP}/{cam}", f"{L.FINAL_RGB_GROUP}/{cam}"
    n, e, size = s.length("data/obs"), s.length("meta/episode_ends"), s.env.get("image_size")
    problems = [] if np.dtype(arr.dtype) == np.uint8 else [s.bad(key, f"dtype {arr.dtype}, expected uint8")]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        return problems + [s.bad(key, f"shape {arr.shape}, expected (N, H, W, 3)")]
    if n is not None and arr.shape[0] != n:
        problems.append(s.bad(key, f"{arr.shape[0]} frames, data/obs has {n} rows"))
    if isinstance(size, int) and tuple(arr.shape[1:3]) != (size, size):
        problems.append(s.bad(key, f"frames are {arr.shape[1]}x{arr.shape[2]}, attrs.env.image_size is {size}"))
    fin = s.final_cams.get(cam)
    if fin is None:
        problems.append(s.bad(fkey, "missing (the frame of each episode's final_obs)"))
    elif np.dtype(fin.dtype) != np.uint8 or tuple(fin.shape[1:]) != tuple(arr.shape[1:]) \
            or (e is not None and fin.shape[0] != e):
        problems.append(s.bad(fkey, f"{fin.dtype} {fin.shape}, expected uint8 ({e}, {', '.join(map(str, arr.shape[1:]))})"))
    return problems


def _check_cameras(s: _Store) -> list[str]:
    """Every camera's frames are well formed and have final frames; no final frames without frames."""
    problems = [p for cam, arr in s.cams.items() for p in _check_camera(s, cam, arr)]
    return problems + [s.bad(f"{L.FINAL_RGB_GROUP}/{cam}", f"has no {L.RGB_GROUP}/{cam}")
                       for cam in sorted(set(s.final_cams) - set(s.cams))]


#: Bytes of the Blosc header that starts every chunk file of a Blosc-compressed array (it records
#: the chunk's uncompressed size at offset 4 and its whole compressed size at offset 12).
_BLOSC_HEADER = 16


def _blosc_only(arr: Any) -> bool:
    """The array's chunk files are plain Blosc frames (codecs: bytes then blosc), so their size is
    checkable against the Blosc header."""
    from zarr.codecs import BloscCodec, BytesCodec

    codecs = tuple(getattr(arr.metadata, "codecs", ()))
    return len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)


def _truncation(file: Path, chunk_bytes: int) -> str | None:
    """Why a Blosc chunk file is cut short or its header is foreign (None: sizes agree): the header's
    compressed size must be the file's size and its uncompressed size the chunk's."""
    size = file.stat().st_size
    if size < _BLOSC_HEADER:
        return f"{size} bytes, shorter than a Blosc header"
    with open(file, "rb") as fh:
        head = fh.read(_BLOSC_HEADER)
    nbytes, cbytes = struct.unpack_from("<I", head, 4)[0], struct.unpack_from("<I", head, 12)[0]
    if cbytes != size:
        return f"{size} bytes, its header says {cbytes}"
    if nbytes != chunk_bytes:
        return f"header says {nbytes} bytes uncompressed, a chunk holds {chunk_bytes}"
    return None


def _chunk_files(store: Path, key: str, arr: Any) -> tuple[list[str], list[str]]:
    """(missing, truncated) chunk files of an array chunked along axis 0 only: the files its shape
    requires that are not on disk, and those whose size disagrees with their Blosc header."""
    shape, chunks = arr.shape, arr.chunks
    if any(n == 0 for n in shape):
        return [], []
    grid = [math.ceil(n / c) for n, c in zip(shape, chunks)]
    check = _blosc_only(arr)
    chunk_bytes = math.prod(chunks) * np.dtype(arr.dtype).itemsize
    missing, truncated = [], []
    folder = store / key
    for i in range(grid[0]):
        for rest in np.ndindex(*grid[1:]) if len(grid) > 1 else [()]:
            name = arr.metadata.encode_chunk_key((i, *rest))
            if not (folder / name).is_file():
                missing.append(name)
            elif check and (why := _truncation(folder / name, chunk_bytes)):
                truncated.append(f"{name}: {why}")
    return missing, truncated


def _check_chunk_files(s: _Store) -> list[str]:
    """Every chunk file an array's shape requires is on disk and as long as its Blosc header says
    (a missing or short one means a truncated store); reads only each file's 16-byte header."""
    problems = []
    for key, arr in sorted(s.all_arrays.items()):
        try:
            missing, truncated = _chunk_files(s.path, key, arr)
        except Exception as exc:  # noqa: BLE001
            problems.append(s.bad(key, f"cannot list chunks ({_error(exc)})"))
            continue
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            problems.append(s.bad(key, f"{len(missing)} chunk file(s) missing ({shown}): the store is truncated"))
        if truncated:
            more = f" (+{len(truncated) - 1} more)" if len(truncated) > 1 else ""
            problems.append(s.bad(key, f"chunk {truncated[0]}{more}: the chunk file is truncated or corrupt"))
    return problems


def _check_consolidated(s: _Store) -> list[str]:
    """A finished store has consolidated metadata listing every array with its current shape."""
    cons = s.root.get("consolidated_metadata")
    if not isinstance(cons, dict) or "metadata" not in cons:
        return [s.bad("zarr.json", "no consolidated metadata: the store was not finished by a writer "
                                   "(an interrupted run? resume it, or rerun the stage)")]
    problems = []
    for key, arr in sorted(s.all_arrays.items()):
        m = cons["metadata"].get(key)
        if m is None:
            problems.append(s.bad(key, "not in the consolidated metadata (added after the store was finished)"))
        elif list(m.get("shape", [])) != list(arr.shape):
            problems.append(s.bad(key, f"consolidated metadata says shape {tuple(m.get('shape', []))}, "
                                       f"the array is {arr.shape}"))
    return problems


# ------------------------------------------------------------------------------ task checkers
def _canonical(task: str) -> str:
    """The canonical id of ``task`` (aliases resolved), or ``task`` itself when no suite knows it."""
    from cdred_pipeline.envs.spec import parse_task

    try:
        return parse_task(task).task
    except CdredError:
        return task


def task_dims(task: str) -> dict[str, int] | None:
    """``obs_dim`` and ``action_dim`` of ``task`` from the static task table (``envs/task_dims.json``;
    ManiSkill2's from ``envs.spec.MS2_TASKS``) without building an env: only the dims the table knows,
    None when it knows none (gym ids, unknown ids, simulator versions other than the recorded ones)."""
    from cdred_pipeline.envs import spec

    suite, _, name = task.partition(":")
    if suite in ("dmc", "mw"):
        table = spec.recorded_dims() or {}
        dims = table.get(task) or table.get(_canonical(task))
    elif suite == "ms2":
        dims = spec.MS2_TASKS.get(name) or spec.MS2_TASKS.get(_canonical(task).partition(":")[2])
    else:
        dims = None
    known = {k: int(v) for k, v in (dims or {}).items() if k in ("obs_dim", "action_dim") and isinstance(v, int)}
    return known or None


def task_mismatch(task: str, obs_dim: Any, action_dim: Any) -> str | None:
    """``"obs_dim 10, action_dim 7 but mw:reach has obs_dim 39, action_dim 4"`` when the dims do not
    fit ``task`` in the static task table, else None (also when the table does not know the task). The
    simulator state's width is render-visual's to check (imports may store none)."""
    dims = task_dims(task) or {}
    have = {"obs_dim": obs_dim, "action_dim": action_dim}
    off = [k for k, v in have.items() if isinstance(v, int) and k in dims and v != dims[k]]
    if not off:
        return None
    return (", ".join(f"{k} {have[k]}" for k in off) + f" but {task} has "
            + ", ".join(f"{k} {dims[k]}" for k in off))


def _probe_tasks(attrs: dict[str, Any]) -> list[str]:
    """The tasks named by the probe records (``attrs.sim.probe``: one dict or a list of them)."""
    sim = attrs.get("sim")
    probe = sim.get("probe") if isinstance(sim, dict) else None
    records = probe if isinstance(probe, list) else [probe]
    return [str(p["task"]) for p in records if isinstance(p, dict) and p.get("task")]


def _check_task_probe(s: _Store) -> list[str]:
    """``attrs.env.task`` is the task the probe frames were rendered from (a relabelled dataset is not)."""
    task = str(s.env.get("task"))
    others = sorted({t for t in _probe_tasks(s.root.get("attributes") or {})
                     if t != task and _canonical(t) != _canonical(task)})
    if not others:
        return []
    return [s.bad("attrs.env.task", f"{task!r} but the probe frames (attrs.sim.probe) were rendered from "
                                    f"{', '.join(map(repr, others))} states: the data belongs to another task; "
                                    "set attrs.env.task back or collect the task's own demos")]


def _check_task_dims(s: _Store) -> list[str]:
    """``attrs.env``'s dims are the task's in the static task table."""
    task = s.env.get("task")
    if not isinstance(task, str):
        return []
    why = task_mismatch(task, s.env.get("obs_dim"), s.env.get("action_dim"))
    return [s.bad("attrs.env", f"{why}: the data does not fit its task (labelled or imported with the wrong "
                               "task)")] if why else []


def _check_not_empty(s: _Store) -> list[str]:
    """A dataset holds at least one episode."""
    if s.ends is None or len(s.ends):
        return []
    return [s.bad("meta/episode_ends", "0 episodes: the dataset is empty; collect or import episodes into it")]


# ----------------------------------------------------------------------------- deep checkers
@dataclasses.dataclass
class _Scan:
    """What decoding one array chunk by chunk found."""

    unreadable: list[str]  # one problem line per chunk that does not decode
    nonfinite: list[np.ndarray]  # row indices with NaN/inf, per chunk
    out_of_range: list[np.ndarray]  # data/action rows with |a| > 1, per chunk
    max_abs: float  # the largest |a| among those
    blocks: list[np.ndarray]  # the decoded chunks of data/reward (empty for other arrays)


def _scan(path: Path, key: str, arr: Any, ends: np.ndarray | None) -> _Scan:
    """Decode ``arr`` chunk by chunk, noting unreadable chunks, non-finite rows and actions out of range."""
    out = _Scan([], [], [], 0.0, [])
    rows, total = int(arr.chunks[0]), int(arr.shape[0])
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        try:
            block = np.asarray(arr[start:stop])
        except Exception as exc:  # noqa: BLE001 - a corrupt chunk raises codec-specific errors
            name = arr.metadata.encode_chunk_key((start // rows,) + (0,) * (arr.ndim - 1))
            out.unreadable.append(f"{path}: {key}: chunk {name} (rows {start}-{stop - 1}) unreadable "
                                  f"({type(exc).__name__}): the store is truncated or corrupt")
            continue
        if key == "data/reward":
            out.blocks.append(block)
        if key not in _FLOATS or not block.size:
            continue
        flat = block.reshape(len(block), -1)
        bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        if len(bad_rows):
            out.nonfinite.append(bad_rows + start)
        if key == "data/action":
            amax = np.abs(np.where(np.isfinite(flat), flat, 0)).max(axis=1)
            oor = np.flatnonzero(amax > 1.0 + L.ACTION_TOL)
            if len(oor):
                out.out_of_range.append(oor + start)
                out.max_abs = max(out.max_abs, float(amax.max()))
    return out


def _fmt_steps(rows: np.ndarray, ends: np.ndarray | None) -> str:
    first = int(rows[0])
    where = f"step {first}"
    if ends is not None and len(ends) and first < ends[-1]:
        ep = int(np.searchsorted(ends, first, side="right"))
        where += f", episode {ep}"
    return f"{len(rows)} row(s), first at {where}"


def _check_decodable(s: _Store) -> list[str]:
    """Every chunk decodes."""
    return [p for scan in s.scan.values() for p in scan.unreadable]


def _check_finite(s: _Store) -> list[str]:
    """No NaN/inf in a float array (reported by step and episode, or by episode for meta arrays)."""
    problems = []
    for key, scan in s.scan.items():
        if scan.nonfinite:
            r = np.concatenate(scan.nonfinite)
            where = _fmt_steps(r, s.ends) if key.startswith("data/") else f"{len(r)} episode(s), first episode {int(r[0])}"
            problems.append(s.bad(key, f"NaN/inf values in {where}"))
    return problems


def _check_action_range(s: _Store) -> list[str]:
    """Every stored action is in [-1, 1] (the executed, clipped action)."""
    scan = s.scan.get("data/action")
    if scan is None or not scan.out_of_range:
        return []
    r = np.concatenate(scan.out_of_range)
    return [s.bad("data/action", f"values outside [-1, 1] (max |a| = {scan.max_abs:.4g}) in {_fmt_steps(r, s.ends)}")]


def _check_returns(s: _Store) -> list[str]:
    """meta/return is the sum of each episode's data/reward (when both are readable and consistent)."""
    reward, ends = s.scan.get("data/reward"), s.ends
    if reward is None or reward.unreadable or ends is None or "meta/return" not in s.arrays \
            or s.arrays["meta/return"].shape[0] != len(ends):
        return []
    rew = np.concatenate(reward.blocks).astype(np.float64) if reward.blocks else np.zeros(0)
    if not len(ends) or len(rew) != int(ends[-1]) or not (np.diff(np.concatenate([[0], ends])) > 0).all():
        return []
    try:
        ret = np.asarray(s.arrays["meta/return"][:], dtype=np.float64)
    except Exception:  # noqa: BLE001 - already reported as unreadable by _check_decodable
        return []
    sums = np.add.reduceat(rew, np.concatenate([[0], ends[:-1]]))
    off = np.flatnonzero(~(np.abs(sums - ret) <= 1e-4 * np.maximum(1.0, np.abs(sums))))
    if not len(off):
        return []
    i = int(off[0])
    return [s.bad("meta/return", f"{len(off)} episode(s) differ from the sum of data/reward "
                                 f"(episode {i}: {ret[i]:.6g} vs {sums[i]:.6g})")]


Checker = Callable[[_Store], list[str]]


def _array_by_array(*checkers: Checker) -> Checker:
    """One checker running ``checkers`` whose problems are listed array by array (sorted by key, in
    checker order within an array), as one decoding pass over the arrays meets them."""
    def check(s: _Store) -> list[str]:
        found = [(key, i, p) for i, c in enumerate(checkers) for p in c(s)
                 for key in [p[len(str(s.path)) + 2:].split(": ", 1)[0]]]
        return [p for _, _, p in sorted(found, key=lambda f: (f[0], f[1]))]
    return check


#: The structural invariants, in the order their problems are listed.
STRUCTURE: tuple[Checker, ...] = (_check_step_lengths, _check_episode_lengths, _check_episode_ends,
                                  _check_length_column, _check_widths, _check_cameras, _check_chunk_files)
#: The invariants of a finished store: consolidated, and its data fits its task (probe and task table).
FINISHED: tuple[Checker, ...] = (_check_consolidated, _check_task_probe, _check_task_dims)
#: The content invariants of the deep pass (every chunk decoded once).
CONTENT: tuple[Checker, ...] = (_array_by_array(_check_decodable, _check_finite, _check_action_range), _check_returns)


def validate(path: str | os.PathLike, *, deep: bool = True, finished: bool = True, empty_ok: bool = False) -> list[str]:
    """Every problem found in the store at ``path`` (an empty list means valid).

    ``deep`` decodes every chunk (content checks); ``finished=False`` skips the checks of a finished
    store (consolidation, task against probe and task table, not empty; used by writers on their
    temporary store before they consolidate it); ``empty_ok`` accepts a store of 0 episodes (what
    :func:`~cdred_pipeline.datasets.open_dataset` opens, e.g. to inspect it).
    """
    path = Path(path)
    root, problems = _read_root(path)
    if root is None:
        return problems
    attrs = root.get("attributes") or {}
    problems = _check_version(path, attrs)
    if problems:
        return problems
    problems = _check_attrs(path, attrs)
    store, found = _open_store(path, root)
    problems += found
    if store is None:
        return problems
    checkers = STRUCTURE + (FINISHED if finished else ()) + ((_check_not_empty,) if finished and not empty_ok else ()) \
        + (CONTENT if deep else ())
    for check in checkers:
        problems += check(store)
    return problems
