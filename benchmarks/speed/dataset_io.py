"""Dataset I/O figures: the episode store's writer against plain zarr whole-array writes on the same disk.

Prints:
  * [1] one array of 1M steps x 39 float32 (156 MB): :func:`write_array` fed episode by episode (as a
    collector appends) against a plain zarr whole-array write (``zarr.create_array(...)[:] = data``,
    same codec and chunks), side by side with the ratio writer speed / plain speed (target >= 1.0x);
    both durable: every file and folder of the array, and the folder holding it, fsynced. Also the
    store's read speed and the compression ratio (Blosc lz4 under the default ``auto`` policy);
  * [2] the same for whole episodes: :class:`EpisodeWriter` (append, check, flush, validate,
    consolidate, fsync, atomic publish) against plain zarr whole-array writes of the same twelve
    arrays (the episodes joined into whole arrays, then written and fsynced), with the per-episode
    append time over the first vs the last hundred episodes (append linearity);
  * [3] random sub-trajectory sampling (horizon 3, batch 256) from ``load_episodes`` into
    :class:`~cdred_pipeline.datasets.EpisodeSampler` and the agent's ReplayBuffer.

The writer is the one in :mod:`cdred_pipeline.datasets.writer`: whole-chunk batches through zarr's
public API, with the per-episode checks, validation, consolidation and atomic publish that a plain
zarr write does not do (see docs/dataset-layout.md).

Data: random walks (``cumsum`` of small Gaussian steps), which compress like simulator states;
``--data noise`` uses i.i.d. Gaussian floats (near-incompressible; the worst case for the writer).
About a minute with the defaults:

    .venv/bin/python benchmarks/speed/dataset_io.py [--steps 1000000] [--dir /tmp] [--data walk|noise]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from cdred_pipeline.datasets import EpisodeSampler, EpisodeWriter, load_episodes, open_dataset, write_array
from cdred_pipeline.datasets import layout as L
from cdred_pipeline.datasets.synthetic import default_attrs


def fsync_path(path: Path | str) -> None:
    """fsync one file or folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (concurrently on 8 threads, as the writer does), then
    the folder holding it."""
    paths = [os.path.join(r, n) for r, _, names in os.walk(path) for n in names] + [r for r, _, _ in os.walk(path)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fsync_path, paths))
    fsync_path(path.parent)


def du(path: Path) -> int:
    return sum(os.path.getsize(Path(r) / f) for r, _, fs in os.walk(path) for f in fs)


def make_data(n: int, d: int, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.standard_normal((n, d), dtype=np.float32)
    steps = rng.standard_normal((n, d), dtype=np.float32)
    steps *= np.float32(0.01)
    return np.cumsum(steps, axis=0, dtype=np.float32)


def plain_zarr_write(store: Path, arrays: dict[str, np.ndarray], compression: str) -> None:
    """Plain zarr: one ``create_array(...)[:] = data`` per array, the writer's codec and chunks, then
    every file and folder fsynced."""
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    for key, x in arrays.items():
        row = tuple(x.shape[1:])
        arr = root.create_array(key, shape=x.shape, dtype=x.dtype,
                                chunks=(L.chunk_rows(row, x.dtype), *(max(1, d) for d in row)),
                                compressors=L.compressors(x.dtype, compression), fill_value=np.zeros((), x.dtype).item(),
                                chunk_key_encoding=L.CHUNK_KEY_ENCODING, config=L.array_config())
        if x.size:
            arr[:] = x
    fsync_tree(store)


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, ``repeats`` times, interleaved so that all see the same machine load."""
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            out[k].append(fn())
    return out


def bench_array(x: np.ndarray, root: Path, repeats: int, episode_len: int, compression: str) -> dict:
    """One array: write_array fed episode by episode vs a plain zarr whole-array write."""
    mine, plain = root / "writer.zarr", root / "plain.zarr"

    def writer_write() -> float:
        shutil.rmtree(mine, ignore_errors=True)
        t = time.perf_counter()
        zarr.open_group(str(mine), mode="w", zarr_format=3)
        write_array(mine, "obs", (x[s:s + episode_len] for s in range(0, len(x), episode_len)),
                    compression=compression)  # fsyncs the array's files and the root zarr.json
        fsync_path(root)
        return time.perf_counter() - t

    def plain_write() -> float:
        shutil.rmtree(plain, ignore_errors=True)
        t = time.perf_counter()
        plain_zarr_write(plain, {"obs": x}, compression)
        return time.perf_counter() - t

    runs = interleaved({"writer_s": writer_write, "plain_s": plain_write}, repeats)
    t = time.perf_counter()
    y = zarr.open_group(str(mine), mode="r")["obs"][:]
    read_s = time.perf_counter() - t
    assert np.array_equal(x, y), "zarr round trip is not exact"
    return {"mb": x.nbytes / 1e6, **{k: min(v) for k, v in runs.items()},
            **{k.replace("_s", "_median_s"): float(np.median(v)) for k, v in runs.items()},
            "read_s": read_s, "stored_mb": du(mine / "obs") / 1e6, "ratio": x.nbytes / du(mine / "obs"),
            "chunk_rows": L.chunk_rows((x.shape[1],), "float32")}


def make_episodes(n_eps: int, length: int, obs_dim: int, action_dim: int, state_dim: int, kind: str) -> list[dict]:
    rng = np.random.default_rng(1)
    obs = make_data(n_eps * (length + 1), obs_dim, kind, seed=2)
    state = make_data(n_eps * (length + 1), state_dim, kind, seed=3).astype(np.float64)
    eps = []
    for i in range(n_eps):
        s = i * (length + 1)
        eps.append(dict(obs=obs[s:s + length], final_obs=obs[s + length],
                        action=rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
                        reward=rng.standard_normal(length).astype(np.float32),
                        terminated=np.zeros(length, bool), physics_state=state[s:s + length],
                        final_physics_state=state[s + length], seed=i, success=bool(i % 2)))
    return eps


def store_arrays(eps: list[dict]) -> dict[str, np.ndarray]:
    """The twelve arrays a store of ``eps`` holds, as whole arrays."""
    cat = {k: np.concatenate([e[k] for e in eps]) for k in ("obs", "action", "reward", "terminated", "physics_state")}
    lengths = np.array([len(e["obs"]) for e in eps], dtype=np.int64)
    meta = {"episode_ends": np.cumsum(lengths), "seed": np.array([e["seed"] for e in eps], np.int64),
            "length": lengths, "return": np.array([e["reward"].sum(dtype=np.float64) for e in eps]),
            "success": np.array([e["success"] for e in eps]),
            "final_obs": np.stack([e["final_obs"] for e in eps]),
            "final_physics_state": np.stack([e["final_physics_state"] for e in eps])}
    return {**{f"data/{k}": v for k, v in cat.items()}, **{f"meta/{k}": v for k, v in meta.items()}}


def bench_writer(root: Path, n_eps: int, length: int, obs_dim: int, action_dim: int, state_dim: int,
                 kind: str, compression: str, repeats: int) -> dict:
    """Whole episodes through EpisodeWriter vs plain zarr whole-array writes of the same arrays."""
    eps = make_episodes(n_eps, length, obs_dim, action_dim, state_dim, kind)
    mb = sum(a.nbytes for a in store_arrays(eps).values()) / 1e6
    path, plain = root / "episodes.zarr", root / "plain-episodes.zarr"
    attrs = default_attrs(obs_dim, action_dim, "mw:box-close", physics_state_dim=state_dim)
    per_ep: list[float] = []

    def writer_write() -> float:
        shutil.rmtree(path, ignore_errors=True)
        per_ep.clear()
        t0 = time.perf_counter()
        with EpisodeWriter(path, attrs, compression=compression) as w:  # close: fsync + atomic publish
            for ep in eps:
                t = time.perf_counter()
                w.append_episode(**ep)
                per_ep.append(time.perf_counter() - t)
        return time.perf_counter() - t0

    def plain_write() -> float:
        shutil.rmtree(plain, ignore_errors=True)
        t = time.perf_counter()
        plain_zarr_write(plain, store_arrays(eps), compression)  # the episodes joined into whole arrays first
        return time.perf_counter() - t

    runs = interleaved({"writer_s": writer_write, "plain_s": plain_write}, repeats)
    first, last = np.array(per_ep[:100]), np.array(per_ep[-100:])
    storage = open_dataset(path).storage()
    return {
        "episodes": n_eps, "steps": n_eps * length, "mb": mb,
        **{k: min(v) for k, v in runs.items()},
        **{k.replace("_s", "_median_s"): float(np.median(v)) for k, v in runs.items()},
        "first100_median_ms": 1e3 * np.median(first), "last100_median_ms": 1e3 * np.median(last),
        "ratios": {k: v["nbytes"] / v["stored"] for k, v in storage.items() if k.startswith("data/")},
        "path": path,
    }


def _rate(sample, batch: int, seconds: float) -> float:
    for _ in range(10):
        sample()
    n = 0
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        sample()
        n += 1
    return n * batch / (time.perf_counter() - t)


def bench_sampling(path: Path, horizon: int, batch: int, seconds: float) -> list[dict]:
    """Samples/s of windows of horizon ``horizon`` from ``load_episodes`` data: EpisodeSampler, and the
    agent's ReplayBuffer (cpu) filled by ``fill_buffer``."""
    import torch

    from cdred_pipeline.agent.buffer import ReplayBuffer
    from cdred_pipeline.datasets import fill_buffer

    t = time.perf_counter()
    eps = load_episodes(path)
    load_s = time.perf_counter() - t
    smp = EpisodeSampler(eps, horizon, seed=0)

    def sample_np() -> None:
        b = smp.sample(batch)
        assert b["obs"].shape[:2] == (horizon + 1, batch)

    out = [{"sampler": "datasets.EpisodeSampler", "samples_per_s": _rate(sample_np, batch, seconds),
            "load_s": load_s, "bytes": smp.nbytes}]
    steps = sum(len(e["action"]) for e in eps)
    buf = ReplayBuffer(steps + len(eps), eps[0]["obs"].shape[1:], eps[0]["action"].shape[1], "cpu", torch.float32)
    t = time.perf_counter()
    nbytes = fill_buffer(buf, path)["bytes"]
    fill_s = time.perf_counter() - t
    out.append({"sampler": f"agent.ReplayBuffer (cpu, torch {torch.get_num_threads()} threads)",
                "samples_per_s": _rate(lambda: buf.sample(batch, horizon), batch, seconds),
                "load_s": fill_s, "bytes": nbytes})
    return out


def side_by_side(label: str, mb: float, r: dict) -> None:
    """One line per statistic: writer and plain zarr MB/s and the ratio writer / plain."""
    for stat, suffix in (("best", "_s"), ("median", "_median_s")):
        w, p = mb / r["writer" + suffix], mb / r["plain" + suffix]
        print(f"    {label} {stat:<6}  writer {w:6.0f} MB/s   plain zarr {p:6.0f} MB/s   writer/plain {w / p:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=39)
    ap.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure (default: a temp folder)")
    ap.add_argument("--data", choices=["walk", "noise"], default="walk")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compression", choices=list(L.COMPRESSIONS), default=L.DEFAULT_COMPRESSION,
                    help="Blosc codec policy (auto: lz4 for numeric arrays, zstd for uint8 frames)")
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--episode-length", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cdred-bench-", dir=args.dir))
    try:
        print(f"disk folder: {root}   cores: {os.cpu_count()}   data: {args.data}   compression: {args.compression}"
              f"   zarr {zarr.__version__}")
        x = make_data(args.steps, args.dim, args.data)
        load0 = os.getloadavg()[0]
        a = bench_array(x, root, args.repeats, episode_len=500, compression=args.compression)
        print(f"\n[1] {args.steps:,} steps x {args.dim} float32 = {a['mb']:.0f} MB ({args.repeats} interleaved runs, "
              f"every write fsynced; 1-min load average {load0:.2f} on {os.cpu_count()} cores)")
        side_by_side("write", a["mb"], a)
        print(f"    read          {a['mb'] / a['read_s']:6.0f} MB/s")
        cname = L.codec_name("float32", args.compression)
        print(f"    compression ratio {a['ratio']:.2f}x  ({a['stored_mb']:.0f} MB on disk; chunks of {a['chunk_rows']} rows, "
              f"Blosc {cname} clevel {L.CLEVEL[cname]}, byte shuffle)")

        wr = bench_writer(root, args.episodes, args.episode_length, args.dim, 4, 39, args.data, args.compression,
                          args.repeats)
        print(f"\n[2] EpisodeWriter: {wr['episodes']} episodes x {args.episode_length} steps "
              f"(obs {args.dim} f32, action 4, reward, terminated, physics_state 39 f64, meta) = {wr['mb']:.0f} MB")
        side_by_side("write", wr["mb"], wr)
        print(f"    per-episode append: median over the first 100 {wr['first100_median_ms']:.3f} ms, the last 100 "
              f"{wr['last100_median_ms']:.3f} ms -> {wr['last100_median_ms'] / wr['first100_median_ms']:.2f}x "
              "(target within 2x)")
        print("    compression ratio per array: " + ", ".join(f"{k.split('/', 1)[1]} {v:.2f}x" for k, v in wr["ratios"].items()))

        sms = bench_sampling(wr["path"], horizon=3, batch=256, seconds=3.0)
        print("\n[3] random sub-trajectories from load_episodes, horizon 3, batch 256 (target >= 100,000 samples/s)")
        for sm in sms:
            print(f"    {sm['sampler']:<44} {sm['samples_per_s']:>12,.0f} samples/s   "
                  f"(loading {sm['load_s']:.2f} s, {sm['bytes'] / 1e6:.0f} MB in memory)")
        if args.json:
            args.json.write_text(json.dumps({"array": a, "writer": {k: v for k, v in wr.items() if k != "path"},
                                             "sampling": sms, "data": args.data, "cores": os.cpu_count()},
                                            indent=2, default=str))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
