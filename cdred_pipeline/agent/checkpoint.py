"""Checkpoint file helpers: atomic writes, ``weights_only`` loads, RNG state as plain tensors.

Checkpoints hold only tensors and plain Python types, so ``torch.load(weights_only=True)`` reads them
and no class is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdred_pipeline.errors import CheckpointError


def atomic_torch_save(obj: Any, path: "str | Path") -> None:
    """``torch.save`` to ``path.tmp-<pid>`` then ``os.replace``: a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def safe_torch_load(path: "str | Path", *, what: str = "checkpoint", map_location: Any = "cpu") -> dict:
    """``torch.load(weights_only=True)``; a missing, truncated or foreign file is a one-line CheckpointError (exit 4)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError,
            IndexError, KeyError, TypeError, UnicodeDecodeError) as exc:  # what torch.load raises on foreign bytes
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0])
        raise CheckpointError(f"{path} is not a readable cdred {what} ({first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a cdred {what} (holds a {type(obj).__name__})")
    return obj


def get_rng_state(device: torch.device) -> dict[str, Any]:
    """Global torch (CPU and, on CUDA, the device), numpy and Python ``random`` RNG states as
    tensors/plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state.get("python")
    if p is not None:
        random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"].cpu(), device)


__all__ = ["atomic_torch_save", "safe_torch_load", "get_rng_state", "set_rng_state"]
