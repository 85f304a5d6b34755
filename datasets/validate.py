"""Checking an episode store against the layout (ARCHITECTURE §6): :func:`validate` lists every problem.

Each problem is one line ``<store path>: <key>: <what is wrong>``. The structural pass (cheap: only
metadata, ``meta/*`` and chunk file names are read) is what :func:`open_dataset` runs and refuses on;
the deep pass also decodes every chunk: NaN/inf rows, actions outside [-1, 1], unreadable chunks,
per-episode returns that do not match the rewards.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import layout as L

__all__ = ["validate"]

_NDIM = {"obs": 2, "action": 2, "reward": 1, "terminated": 1, "physics_state": 2,
         "episode_ends": 1, "seed": 1, "length": 1, "return": 1, "success": 1,
         "final_obs": 2, "final_physics_state": 2}


def _read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _missing_chunks(store: Path, key: str, arr: Any) -> list[str]:
    """Chunk files an array's shape requires that are not on disk (chunked along axis 0 only)."""
    shape, chunks = arr.shape, arr.chunks
    if any(s == 0 for s in shape):
        return []
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    missing = []
    folder = store / key
    for i in range(grid[0]):
        for rest in np.ndindex(*grid[1:]) if len(grid) > 1 else [()]:
            name = arr.metadata.encode_chunk_key((i, *rest))
            if not (folder / name).is_file():
                missing.append(name)
    return missing


def _fmt_steps(rows: np.ndarray, ends: np.ndarray | None) -> str:
    first = int(rows[0])
    where = f"step {first}"
    if ends is not None and len(ends) and first < ends[-1]:
        ep = int(np.searchsorted(ends, first, side="right"))
        where += f", episode {ep}"
    return f"{len(rows)} row(s), first at {where}"


def validate(path: str | os.PathLike, *, deep: bool = True, finished: bool = True) -> list[str]:
    """Every problem found in the store at ``path`` (an empty list means valid).

    ``deep`` decodes every chunk (content checks); ``finished=False`` skips the consolidation check
    (used by writers on their temporary store before they consolidate it).
    """
    path = Path(path)
    problems: list[str] = []

    def bad(key: str | None, msg: str) -> None:
        problems.append(f"{path}: {key}: {msg}" if key else f"{path}: {msg}")

    # ---------------------------------------------------------------- is it a v3 store at all?
    if not path.exists():
        bad(None, "no such file or directory")
        return problems
    if not path.is_dir():
        bad(None, "not a zarr store (a file, not a directory); `cdred package import` converts HDF5/parquet/pickle")
        return problems
    root_json = path / "zarr.json"
    if not root_json.is_file():
        if (path / ".zgroup").is_file():
            bad(".zgroup", "a zarr format 2 store; cdred datasets are zarr format 3 (re-import it)")
        else:
            bad(None, "not a zarr store (no zarr.json)")
        return problems
    try:
        root = _read_json(root_json)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        bad("zarr.json", f"unreadable ({exc})")
        return problems
    if not isinstance(root, dict) or root.get("zarr_format") != 3 or root.get("node_type") != "group":
        bad("zarr.json", "not a zarr format 3 group")
        return problems

    # ------------------------------------------------------------------------------- attrs
    attrs = root.get("attributes") or {}
    version = attrs.get("cdred_dataset_version")
    if version is None:
        bad("attrs.cdred_dataset_version", "missing: not a cdred dataset")
        return problems
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        bad("attrs.cdred_dataset_version", f"{version!r} is not a layout version")
        return problems
    if version > L.LAYOUT_VERSION:
        bad("attrs.cdred_dataset_version", f"layout version {version} is newer than this cdred reads "
            f"({L.LAYOUT_VERSION}); upgrade cdred")
        return problems
    env = attrs.get("env")
    if not isinstance(env, dict):
        bad("attrs.env", "missing or not a dict")
        env = {}
    for k in L.REQUIRED_ENV_KEYS:
        if k not in env:
            bad(f"attrs.env.{k}", "missing")
    for k in ("obs_dim", "action_dim", "physics_state_dim", "image_size"):
        if k in env and env[k] is not None and (not isinstance(env[k], int) or isinstance(env[k], bool) or env[k] < 0):
            bad(f"attrs.env.{k}", f"{env[k]!r} is not a non-negative int")
    for section in ("sim", "source", "scores"):
        if section in attrs and not isinstance(attrs[section], dict):
            bad(f"attrs.{section}", "not a dict")

    # --------------------------------------------------------------------------- open arrays
    try:
        g = L.open_group(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - any zarr failure is a damaged store, reported as such
        bad("zarr.json", f"cannot open as a zarr group ({type(exc).__name__}: {exc})")
        return problems
    arrays: dict[str, Any] = {}
    for group_name, spec in (("data", L.DATA_KEYS), ("meta", L.META_KEYS)):
        for name, dtype in spec.items():
            key = f"{group_name}/{name}"
            try:
                node = g[key]
            except (KeyError, FileNotFoundError):
                bad(key, "missing")
                continue
            except Exception as exc:  # noqa: BLE001
                bad(key, f"unreadable metadata ({type(exc).__name__}: {exc})")
                continue
            if not hasattr(node, "shape"):
                bad(key, "is a group, expected an array")
                continue
            if np.dtype(node.dtype) != np.dtype(dtype):
                bad(key, f"dtype {node.dtype}, expected {dtype}")
            if node.ndim != _NDIM[name]:
                bad(key, f"{node.ndim}-d array of shape {node.shape}, expected {_NDIM[name]}-d")
                continue
            arrays[key] = node
    cams: dict[str, Any] = {}
    final_cams: dict[str, Any] = {}
    for grp_key, target in ((L.RGB_GROUP, cams), (L.FINAL_RGB_GROUP, final_cams)):
        if grp_key in g:
            for name, node in g[grp_key].members():
                if hasattr(node, "shape"):
                    target[name] = node
                else:
                    bad(f"{grp_key}/{name}", "is a group, expected an array")

    # ------------------------------------------------------------------------ lengths, ends
    def length(key: str) -> int | None:
        return int(arrays[key].shape[0]) if key in arrays else None

    n = length("data/obs")
    for k in L.DATA_KEYS:
        nk = length(f"data/{k}")
        if nk is not None and n is not None and nk != n:
            bad(f"data/{k}", f"{nk} rows, data/obs has {n}")
    e = length("meta/episode_ends")
    for k in L.META_KEYS:
        ek = length(f"meta/{k}")
        if ek is not None and e is not None and ek != e:
            bad(f"meta/{k}", f"{ek} rows, meta/episode_ends has {e} episodes")
    ends: np.ndarray | None = None
    if "meta/episode_ends" in arrays:
        try:
            ends = np.asarray(arrays["meta/episode_ends"][:], dtype=np.int64)
        except Exception as exc:  # noqa: BLE001
            bad("meta/episode_ends", f"unreadable ({type(exc).__name__}: {exc})")
    if ends is not None:
        steps = np.diff(np.concatenate([[0], ends]))
        if len(ends) and (steps <= 0).any():
            i = int(np.argmax(steps <= 0))
            bad("meta/episode_ends", f"not strictly increasing from 0 (episode {i} ends at {int(ends[i])}, "
                f"the previous at {int(ends[i - 1]) if i else 0})")
        total = int(ends[-1]) if len(ends) else 0
        if n is not None and total != n:
            bad("meta/episode_ends", f"last end is {total} but the data arrays have {n} rows")
        if "meta/length" in arrays and length("meta/length") == len(ends):
            try:
                lens = np.asarray(arrays["meta/length"][:], dtype=np.int64)
                if not np.array_equal(lens, steps):
                    i = int(np.argmax(lens != steps))
                    bad("meta/length", f"episode {i} has length {int(lens[i])} but episode_ends gives {int(steps[i])}")
            except Exception as exc:  # noqa: BLE001
                bad("meta/length", f"unreadable ({type(exc).__name__}: {exc})")

    # ------------------------------------------------------------------------------- dims
    def width(key: str) -> int | None:
        return int(arrays[key].shape[1]) if key in arrays and arrays[key].ndim == 2 else None

    for key, env_key in (("data/obs", "obs_dim"), ("data/action", "action_dim"),
                         ("data/physics_state", "physics_state_dim")):
        w = width(key)
        if w is not None and isinstance(env.get(env_key), int) and w != env[env_key]:
            bad(key, f"width {w}, attrs.env.{env_key} is {env[env_key]}")
    for key, ref in (("meta/final_obs", "data/obs"), ("meta/final_physics_state", "data/physics_state")):
        w, wr = width(key), width(ref)
        if w is not None and wr is not None and w != wr:
            bad(key, f"width {w}, {ref} has width {wr}")

    # -------------------------------------------------------------------------------- rgb
    size = env.get("image_size")
    for cam, arr in cams.items():
        key = f"{L.RGB_GROUP}/{cam}"
        if np.dtype(arr.dtype) != np.uint8:
            bad(key, f"dtype {arr.dtype}, expected uint8")
        if arr.ndim != 4 or arr.shape[-1] != 3:
            bad(key, f"shape {arr.shape}, expected (N, H, W, 3)")
            continue
        if n is not None and arr.shape[0] != n:
            bad(key, f"{arr.shape[0]} frames, data/obs has {n} rows")
        if isinstance(size, int) and tuple(arr.shape[1:3]) != (size, size):
            bad(key, f"frames are {arr.shape[1]}x{arr.shape[2]}, attrs.env.image_size is {size}")
        fin = final_cams.get(cam)
        if fin is None:
            bad(f"{L.FINAL_RGB_GROUP}/{cam}", "missing (the frame of each episode's final_obs)")
        elif np.dtype(fin.dtype) != np.uint8 or tuple(fin.shape[1:]) != tuple(arr.shape[1:]) \
                or (e is not None and fin.shape[0] != e):
            bad(f"{L.FINAL_RGB_GROUP}/{cam}", f"{fin.dtype} {fin.shape}, expected uint8 ({e}, {', '.join(map(str, arr.shape[1:]))})")
    for cam in sorted(set(final_cams) - set(cams)):
        bad(f"{L.FINAL_RGB_GROUP}/{cam}", f"has no {L.RGB_GROUP}/{cam}")
    all_arrays = dict(arrays)
    all_arrays.update({f"{L.RGB_GROUP}/{c}": a for c, a in cams.items()})
    all_arrays.update({f"{L.FINAL_RGB_GROUP}/{c}": a for c, a in final_cams.items()})

    # ------------------------------------------------------------------------ chunk files
    for key, arr in sorted(all_arrays.items()):
        try:
            missing = _missing_chunks(path, key, arr)
        except Exception as exc:  # noqa: BLE001
            bad(key, f"cannot list chunks ({type(exc).__name__}: {exc})")
            continue
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            bad(key, f"{len(missing)} chunk file(s) missing ({shown}): the store is truncated")

    # ---------------------------------------------------------------------- consolidation
    if finished:
        cons = root.get("consolidated_metadata")
        if not isinstance(cons, dict) or "metadata" not in cons:
            bad("zarr.json", "no consolidated metadata: the store was not finished by a writer "
                "(an interrupted run? resume it, or rerun the stage)")
        else:
            meta = cons["metadata"]
            for key, arr in sorted(all_arrays.items()):
                m = meta.get(key)
                if m is None:
                    bad(key, "not in the consolidated metadata (added after the store was finished)")
                elif list(m.get("shape", [])) != list(arr.shape):
                    bad(key, f"consolidated metadata says shape {tuple(m.get('shape', []))}, the array is {arr.shape}")

    if deep:
        problems.extend(_deep(path, all_arrays, ends))
    return problems


def _deep(path: Path, arrays: dict[str, Any], ends: np.ndarray | None) -> list[str]:
    """Decode every chunk: unreadable chunks, NaN/inf, action range, returns against rewards."""
    problems: list[str] = []
    floats = {"data/obs", "data/action", "data/reward", "data/physics_state", "meta/final_obs",
              "meta/final_physics_state", "meta/return"}
    rewards: list[np.ndarray] = []
    reward_ok = True
    for key, arr in sorted(arrays.items()):
        rows = int(arr.chunks[0])
        nonfinite: list[np.ndarray] = []
        out_of_range: list[np.ndarray] = []
        max_abs = 0.0
        for start in range(0, int(arr.shape[0]), rows):
            stop = min(start + rows, int(arr.shape[0]))
            try:
                block = np.asarray(arr[start:stop])
            except Exception as exc:  # noqa: BLE001 - a corrupt chunk raises codec-specific errors
                name = arr.metadata.encode_chunk_key((start // rows,) + (0,) * (arr.ndim - 1))
                problems.append(f"{path}: {key}: chunk {name} (rows {start}-{stop - 1}) unreadable "
                                f"({type(exc).__name__}): the store is truncated or corrupt")
                if key == "data/reward":
                    reward_ok = False
                continue
            if key in floats and block.size:
                flat = block.reshape(len(block), -1)
                bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
                if len(bad_rows):
                    nonfinite.append(bad_rows + start)
                if key == "data/action":
                    amax = np.abs(np.where(np.isfinite(flat), flat, 0)).max(axis=1)
                    oor = np.flatnonzero(amax > 1.0 + L.ACTION_TOL)
                    if len(oor):
                        out_of_range.append(oor + start)
                        max_abs = max(max_abs, float(amax.max()))
            if key == "data/reward":
                rewards.append(block)
        is_step = key.startswith("data/")
        if nonfinite:
            r = np.concatenate(nonfinite)
            where = _fmt_steps(r, ends if is_step else None) if is_step else f"{len(r)} episode(s), first episode {int(r[0])}"
            problems.append(f"{path}: {key}: NaN/inf values in {where}")
        if out_of_range:
            r = np.concatenate(out_of_range)
            problems.append(f"{path}: {key}: values outside [-1, 1] (max |a| = {max_abs:.4g}) in {_fmt_steps(r, ends)}")
    if reward_ok and ends is not None and "meta/return" in arrays and "data/reward" in arrays \
            and arrays["meta/return"].shape[0] == len(ends):
        rew = np.concatenate(rewards).astype(np.float64) if rewards else np.zeros(0)
        if len(ends) and len(rew) == int(ends[-1]) and (np.diff(np.concatenate([[0], ends])) > 0).all():
            try:
                ret = np.asarray(arrays["meta/return"][:], dtype=np.float64)
            except Exception:  # noqa: BLE001 - already reported as unreadable above
                ret = None
            if ret is not None:
                sums = np.add.reduceat(rew, np.concatenate([[0], ends[:-1]]))
                tol = 1e-4 * np.maximum(1.0, np.abs(sums))
                off = np.flatnonzero(~(np.abs(sums - ret) <= tol))
                if len(off):
                    i = int(off[0])
                    problems.append(f"{path}: meta/return: {len(off)} episode(s) differ from the sum of data/reward "
                                    f"(episode {i}: {ret[i]:.6g} vs {sums[i]:.6g})")
    return problems
