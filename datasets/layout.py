"""The on-disk layout of a cdred episode store (docs/design.md §6) in one place: keys, dtypes, chunking, codecs.

A store is a zarr format 3 group (a directory on the local file system)::

    demos.zarr
      attrs   cdred_dataset_version, env{...}, sim{...}, source{...}, scores{random, expert}
      data/obs               (N, D)       float32  observation before action t
      data/action            (N, A)       float32  executed action, in [-1, 1]
      data/reward            (N,)         float32
      data/terminated        (N,)         bool
      data/physics_state     (N, S)       float64  simulator state before action t (S may be 0 for imports)
      data/rgb/<camera>      (N, H, W, 3) uint8    frame of obs t (render-visual)
      meta/episode_ends      (E,)         int64    cumulative, as Diffusion Policy's ReplayBuffer
      meta/seed              (E,)         int64
      meta/length            (E,)         int64
      meta/return            (E,)         float64  sum of data/reward over the episode
      meta/success           (E,)         bool
      meta/final_obs         (E, D)       float32  observation after the last action
      meta/final_physics_state (E, S)     float64
      meta/final_rgb/<camera> (E, H, W, 3) uint8   frame of final_obs (render-visual)

Everything here is plain data: :mod:`docs/dataset-layout.md` documents the same for users of plain zarr.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Layout version written into ``attrs["cdred_dataset_version"]``; readers refuse newer stores.
LAYOUT_VERSION = 1

#: Per-step arrays: key -> (dtype, trailing shape kind).
DATA_KEYS: dict[str, str] = {
    "obs": "float32",
    "action": "float32",
    "reward": "float32",
    "terminated": "bool",
    "physics_state": "float64",
}
#: Per-episode arrays.
META_KEYS: dict[str, str] = {
    "episode_ends": "int64",
    "seed": "int64",
    "length": "int64",
    "return": "float64",
    "success": "bool",
    "final_obs": "float32",
    "final_physics_state": "float64",
}
RGB_GROUP = "data/rgb"
FINAL_RGB_GROUP = "meta/final_rgb"
RGB_DTYPE = "uint8"

#: Keys required in ``attrs["env"]``; others (physics_state_dim, image_size, camera, ...) are optional.
REQUIRED_ENV_KEYS = ("task", "obs_dim", "action_dim")
#: Top-level attribute sections every store carries (missing ones are written as empty dicts).
ATTR_SECTIONS = ("env", "sim", "source", "scores")

#: Target uncompressed chunk size (docs/design.md §6: about 1-4 MB, chunked along time only).
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024

#: Blosc compressor per array kind under ``compression="auto"``: byte-shuffled lz4 for the numeric
#: per-step arrays (on simulator floats it reaches zstd's ratio, 1.28x vs 1.28-1.33x, at 4-7x the
#: encode speed) and zstd for uint8 frames (rendered images compress far better with zstd and are
#: bound by rendering, not by writing). ``compression="zstd"`` gives docs/design.md §6's zstd everywhere.
COMPRESSIONS = ("auto", "zstd", "lz4")
DEFAULT_COMPRESSION = "auto"
CLEVEL = {"zstd": 3, "lz4": 5}
#: Kept for callers that pass a level explicitly (None = the per-codec default above).
DEFAULT_CLEVEL: int | None = None

#: zarr v3's default chunk key encoding, stated explicitly: chunk ``i`` of an array chunked along
#: axis 0 only is the file ``<array>/c/<i>/0/...`` (see :func:`chunk_key`).
CHUNK_KEY_ENCODING: dict[str, str] = {"name": "default", "separator": "/"}

#: Tolerance for actions stored as float32 after clipping to [-1, 1].
ACTION_TOL = 1e-6


def chunk_rows(row_shape: tuple[int, ...], dtype: Any, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk holds about ``chunk_bytes`` uncompressed bytes (at least 1 row)."""
    row_bytes = int(np.dtype(dtype).itemsize) * max(1, math.prod(row_shape))
    return max(1, int(chunk_bytes) // row_bytes)


def chunk_key(index: int, ndim: int) -> str:
    """The file, relative to its array's folder, of chunk ``index`` of an ``ndim``-d array chunked along
    axis 0 only (:data:`CHUNK_KEY_ENCODING`): ``c/<index>`` followed by a ``/0`` per further axis."""
    return "/".join(["c", str(int(index))] + ["0"] * (ndim - 1))


def codec_name(dtype: Any, compression: str = DEFAULT_COMPRESSION) -> str:
    """The Blosc compressor (``zstd`` or ``lz4``) an array of ``dtype`` gets under ``compression``."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if compression != "auto":
        return compression
    return "zstd" if np.dtype(dtype) == np.uint8 else "lz4"


def compressors(dtype: Any = "float32", compression: str = DEFAULT_COMPRESSION, clevel: int | None = None) -> Any:
    """The codec of an array: Blosc (zstd or lz4 per :func:`codec_name`) with byte shuffle; Blosc's
    typesize follows the dtype."""
    from zarr.codecs import BloscCodec

    cname = codec_name(dtype, compression)
    return BloscCodec(cname=cname, clevel=int(CLEVEL[cname] if clevel is None else clevel), shuffle="shuffle")


def plain(value: Any, where: str = "attrs") -> Any:
    """Turn ``value`` into plain JSON types (dict/list/str/int/float/bool/None) or raise ValueError.

    numpy scalars and arrays become Python numbers and lists; tuples become lists; Paths become strings.
    Non-finite floats are refused: they are not JSON and would not survive a round trip.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), where)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"{where}: non-finite float {f!r} is not allowed in attrs")
        return f
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{where}: {type(value).__name__} is not a plain Python type (dict, list, str, int, float, bool, None)")


def normalise_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Check and complete root attrs: plain types, required env keys, sections present, version set."""
    out = plain(dict(attrs))
    for section in ATTR_SECTIONS:
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ValueError(f"attrs.{section} must be a dict, got {type(out[section]).__name__}")
    env = out["env"]
    missing = [k for k in REQUIRED_ENV_KEYS if k not in env]
    if missing:
        raise ValueError(f"attrs.env is missing {', '.join(missing)} (needs {', '.join(REQUIRED_ENV_KEYS)})")
    for k in ("obs_dim", "action_dim", "physics_state_dim"):
        if k in env and (not isinstance(env[k], int) or isinstance(env[k], bool) or env[k] < 0):
            raise ValueError(f"attrs.env.{k} must be a non-negative int, got {env[k]!r}")
    out["scores"].setdefault("random", None)
    out["scores"].setdefault("expert", None)
    out["cdred_dataset_version"] = LAYOUT_VERSION
    json.dumps(out)  # final guarantee: serialisable
    return out


def partial_path(path: Path) -> Path:
    """The temporary name a store is written under before its atomic rename."""
    return path.with_name(f".{path.name}.partial")


def lock_path(path: Path) -> Path:
    """The lock file that makes one writer per store."""
    return path.with_name(f".{path.name}.lock")


def consolidate(path: Path) -> None:
    """Consolidate a store's metadata into its root ``zarr.json`` (silencing zarr's v3-spec warning)."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def open_group(path: Path, mode: str = "r"):
    """Open a store's root group without consolidated metadata (always the true on-disk state)."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)


def array_config() -> dict[str, Any]:
    """Runtime array config for writers: write every chunk, even all-fill ones, so a missing chunk file
    always means a truncated store (zarr 3 skips all-fill chunks by default)."""
    return {"write_empty_chunks": True}
