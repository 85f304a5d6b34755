"""Shared helpers for tests that compare zarr stores on disk with plain ``zarr`` (not this package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def file_stamps(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``path`` (relative POSIX path) with its (inode, mtime_ns, size): a file written
    again, or replaced, gets a new stamp."""
    return {p.relative_to(path).as_posix(): (st.st_ino, st.st_mtime_ns, st.st_size)
            for p in path.rglob("*") if p.is_file() and (st := p.stat())}


def zarr_arrays(group, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array under a zarr group, by its path ("data/obs", "meta/episode_ends", ...)."""
    out = {}
    for name, item in group.members():
        if hasattr(item, "shape"):
            out[prefix + name] = np.asarray(item[:])
        else:
            out.update(zarr_arrays(item, f"{prefix}{name}/"))
    return out


def assert_same_zarr(a: Path, b: Path, *, ignore_sha: bool = False) -> dict[str, np.ndarray]:
    """Two stores hold the same arrays, bitwise (same dtype), and the same root attrs. ``ignore_sha``:
    leave out ``attrs.source.checkpoint_sha256`` (a trained checkpoint stores its wall time, so two
    trainings of the same expert never hash alike). Returns the arrays of ``a``."""
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    xa, xb = zarr_arrays(ga), zarr_arrays(gb)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and np.array_equal(xa[k], xb[k]), k
    attrs_a, attrs_b = dict(ga.attrs), dict(gb.attrs)
    if ignore_sha:
        sha = [x["source"].pop("checkpoint_sha256") for x in (attrs_a, attrs_b)]
        assert all(len(h) == 64 for h in sha)
    assert attrs_a == attrs_b
    return xa


def flushed_episodes(stage_dir: Path) -> int:
    """Episodes committed to the partial demos store of a running collection under ``stage_dir``
    (``WORKDIR/demos``): the non-zero rows of meta/episode_ends."""
    import zarr

    for store in stage_dir.glob(".*.partial/.demos.zarr.partial"):
        try:
            ends = np.asarray(zarr.open_array(store / "meta" / "episode_ends", mode="r")[:])
        except Exception:  # noqa: BLE001 - the array may not exist yet, or be mid-write
            return 0
        return int(np.count_nonzero(ends))
    return 0


def kill_collection_midway(workdir: Path, args: tuple[str, ...], at_least: int, total: int) -> int:
    """Run ``cdred --workdir WORKDIR ARGS`` (a collect-experts call), SIGKILL it once ``at_least``
    episodes are flushed, check that the collection was really cut short, and return how many
    episodes it had flushed."""
    import signal

    from cli_helpers import kill_cli_when

    stage_dir = workdir / "demos"
    code = kill_cli_when(workdir, args, lambda: flushed_episodes(stage_dir) >= at_least, timeout=120,
                         what="no episode flushed")
    assert code == -signal.SIGKILL
    done = flushed_episodes(stage_dir)
    assert at_least <= done < total, f"{done} episodes flushed before the kill (need a partial collection)"
    return done
