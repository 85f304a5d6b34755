"""Dataset I/O figures (issue 4): zarr episode store vs numpy.save/numpy.load on the same disk.

Prints:
  * write and read throughput (MB/s) of 1M steps x 39 float32 (156 MB) through the store's chunked
    writer vs ``numpy.save``/``numpy.load`` of the same bytes, both including ``fsync`` (bytes on
    disk, not only in the page cache), in the same folder: numpy.save, then fsync of the .npy file
    and of the folder holding it; the store's own durable path (the column's flush fsyncs every chunk
    file and chunk folder, then every other file and folder is fsynced as ``EpisodeWriter.close``
    does, then the folder holding the store);
  * the compression ratio of that array (Blosc lz4 under the default `auto` policy, byte shuffle);
  * the same for whole episodes through :class:`EpisodeWriter` (obs, action, reward, terminated,
    physics_state) and the per-array compression ratios;
  * append linearity: 1000 episodes appended one by one, time per episode over the first vs the last
    hundred episodes;
  * random sub-trajectory sampling (horizon 3, batch 256) from ``load_episodes`` into the agent's
    ReplayBuffer when ``cdred_pipeline/agent/buffer.py`` exists, else into
    :class:`~cdred_pipeline.datasets.EpisodeSampler`.

Data: random walks (``cumsum`` of small Gaussian steps), which compress like simulator states;
``--data noise`` uses i.i.d. Gaussian floats (near-incompressible; the worst case for the writer).

    /work/venv/bin/python benchmarks/dataset_io.py [--steps 1000000] [--dir /tmp] [--data walk|noise]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cdred_pipeline.datasets import EpisodeSampler, EpisodeWriter, load_episodes, open_dataset
from cdred_pipeline.datasets import layout as L
from cdred_pipeline.datasets.synthetic import default_attrs
from cdred_pipeline.datasets.writer import _Column, _fsync_tree


def fsync_path(path: Path) -> None:
    """fsync one file or folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync ``path`` (a file, or every file and folder under a folder) and the folder holding it."""
    if path.is_dir():
        _fsync_tree(path)
    else:
        fsync_path(path)
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


def bench_array(x: np.ndarray, root: Path, repeats: int, episode_len: int, compression: str) -> dict:
    mb = x.nbytes / 1e6
    npy = root / "x.npy"

    def np_write() -> float:
        npy.unlink(missing_ok=True)
        t = time.perf_counter()
        np.save(npy, x)
        fsync_tree(npy)
        return time.perf_counter() - t

    def np_read() -> float:
        t = time.perf_counter()
        y = np.load(npy)
        dt = time.perf_counter() - t
        assert y.shape == x.shape
        return dt

    store = root / "x.zarr"
    import zarr

    def z_write() -> float:
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        g = zarr.open_group(str(store), mode="w")
        col = _Column.create(g, "obs", (x.shape[1],), "float32", L.DEFAULT_CHUNK_BYTES, compression)
        for s in range(0, len(x), episode_len):  # appended episode by episode, as a collector does
            col.append(x[s:s + episode_len])
        col.flush()  # writes the tail chunk and fsyncs every chunk file and chunk folder (concurrently)
        _fsync_tree(store, skip=col.synced)  # the rest, as EpisodeWriter.close does: zarr.json files, folders
        fsync_path(root)  # the entry of x.zarr, like numpy's side fsyncs the entry of x.npy
        return time.perf_counter() - t

    def z_read() -> float:
        t = time.perf_counter()
        y = zarr.open_group(str(store), mode="r")["obs"][:]
        dt = time.perf_counter() - t
        assert y.shape == x.shape
        return dt

    out: dict = {"mb": mb}
    runs: dict[str, list[float]] = {"numpy_write_s": [], "zarr_write_s": [], "numpy_read_s": [], "zarr_read_s": []}
    for _ in range(repeats):  # interleaved, so both see the same machine load
        runs["numpy_write_s"].append(np_write())
        runs["zarr_write_s"].append(z_write())
        runs["numpy_read_s"].append(np_read())
        runs["zarr_read_s"].append(z_read())
    for k, v in runs.items():
        out[k] = min(v)
        out[k.replace("_s", "_median_s")] = float(np.median(v))
    y = zarr.open_group(str(store), mode="r")["obs"][:]
    assert np.array_equal(x, y), "zarr round trip is not exact"
    out["stored_mb"] = du(store) / 1e6
    out["ratio"] = x.nbytes / du(store)
    out["chunk_rows"] = L.chunk_rows((x.shape[1],), "float32")
    return out


def bench_writer(root: Path, n_eps: int, length: int, obs_dim: int, action_dim: int, state_dim: int,
                 kind: str, compression: str) -> dict:
    """1000 whole episodes through EpisodeWriter: throughput, per-episode time first vs last 100."""
    rng = np.random.default_rng(1)
    obs = make_data(n_eps * length + n_eps, obs_dim, kind, seed=2)
    state = make_data(n_eps * length + n_eps, state_dim, kind, seed=3).astype(np.float64)
    path = root / "episodes.zarr"
    shutil.rmtree(path, ignore_errors=True)
    attrs = default_attrs(obs_dim, action_dim, "mw:box-close", physics_state_dim=state_dim)
    per_ep = []
    nbytes = 0
    t0 = time.perf_counter()
    with EpisodeWriter(path, attrs, compression=compression) as w:
        for i in range(n_eps):
            s = i * (length + 1)
            ep = dict(obs=obs[s:s + length], final_obs=obs[s + length],
                      action=rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
                      reward=rng.standard_normal(length).astype(np.float32),
                      terminated=np.zeros(length, bool), physics_state=state[s:s + length],
                      final_physics_state=state[s + length], seed=i, success=bool(i % 2))
            nbytes += sum(v.nbytes for v in ep.values() if isinstance(v, np.ndarray))
            t = time.perf_counter()
            w.append_episode(**ep)
            per_ep.append(time.perf_counter() - t)
    fsync_tree(path)
    total = time.perf_counter() - t0
    ds = open_dataset(path)
    storage = ds.storage()
    first, last = np.array(per_ep[:100]), np.array(per_ep[-100:])
    return {
        "episodes": n_eps, "steps": n_eps * length, "mb": nbytes / 1e6, "write_s": total,
        "first100_mean_ms": 1e3 * first.mean(), "last100_mean_ms": 1e3 * last.mean(),
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
    agent's ReplayBuffer (cpu) when cdred_pipeline/agent/buffer.py exists."""
    out = []
    t = time.perf_counter()
    eps = load_episodes(path)
    load_s = time.perf_counter() - t
    smp = EpisodeSampler(eps, horizon, seed=0)

    def sample_np() -> None:
        b = smp.sample(batch)
        assert b["obs"].shape[:2] == (horizon + 1, batch)

    out.append({"sampler": "datasets.EpisodeSampler", "samples_per_s": _rate(sample_np, batch, seconds),
                "load_s": load_s, "bytes": smp.nbytes})
    buf_file = Path(__file__).resolve().parents[1] / "cdred_pipeline" / "agent" / "buffer.py"
    if buf_file.exists():
        try:
            import torch

            from cdred_pipeline.agent.buffer import ReplayBuffer
            from cdred_pipeline.datasets import fill_buffer

            steps = sum(len(e["action"]) for e in eps)
            buf = ReplayBuffer(steps + len(eps), eps[0]["obs"].shape[1:], eps[0]["action"].shape[1], "cpu",
                               torch.float32)
            t = time.perf_counter()
            nbytes = fill_buffer(buf, path)["bytes"]
            fill_s = time.perf_counter() - t
            out.append({"sampler": f"agent.ReplayBuffer (cpu, torch {torch.get_num_threads()} threads)",
                        "samples_per_s": _rate(lambda: buf.sample(batch, horizon), batch, seconds),
                        "load_s": fill_s, "bytes": nbytes})
        except Exception as exc:  # noqa: BLE001 - report: the buffer may be mid-development
            print(f"  (agent ReplayBuffer not usable: {type(exc).__name__}: {exc})")
    return out


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
        print(f"disk folder: {root}   cores: {os.cpu_count()}   data: {args.data}   compression: {args.compression}")
        x = make_data(args.steps, args.dim, args.data)
        load0 = os.getloadavg()[0]
        a = bench_array(x, root, args.repeats, episode_len=500, compression=args.compression)
        mb = a["mb"]
        w_np, w_z = mb / a["numpy_write_s"], mb / a["zarr_write_s"]
        r_np, r_z = mb / a["numpy_read_s"], mb / a["zarr_read_s"]
        mw_np, mw_z = mb / a["numpy_write_median_s"], mb / a["zarr_write_median_s"]
        mr_np, mr_z = mb / a["numpy_read_median_s"], mb / a["zarr_read_median_s"]
        print(f"\n[1] {args.steps:,} steps x {args.dim} float32 = {mb:.0f} MB ({args.repeats} interleaved runs, "
              f"write includes fsync; 1-min load average {load0:.2f} on {os.cpu_count()} cores)")
        print(f"    write best   numpy.save {w_np:6.0f} MB/s   zarr store {w_z:6.0f} MB/s   ratio {w_z / w_np:6.1%}  (target >= 70%)")
        print(f"    write median numpy.save {mw_np:6.0f} MB/s   zarr store {mw_z:6.0f} MB/s   ratio {mw_z / mw_np:6.1%}")
        print(f"    read  best   numpy.load {r_np:6.0f} MB/s   zarr store {r_z:6.0f} MB/s   ratio {r_z / r_np:6.1%}")
        print(f"    read  median numpy.load {mr_np:6.0f} MB/s   zarr store {mr_z:6.0f} MB/s   ratio {mr_z / mr_np:6.1%}")
        cname = L.codec_name("float32", args.compression)
        print(f"    compression ratio {a['ratio']:.2f}x  ({a['stored_mb']:.0f} MB on disk; chunks of {a['chunk_rows']} rows, "
              f"Blosc {cname} clevel {L.CLEVEL[cname]}, byte shuffle)")

        wr = bench_writer(root, args.episodes, args.episode_length, args.dim, 4, 39, args.data, args.compression)
        print(f"\n[2] EpisodeWriter: {wr['episodes']} episodes x {args.episode_length} steps "
              f"(obs {args.dim} f32, action 4, reward, terminated, physics_state 39 f64) = {wr['mb']:.0f} MB")
        print(f"    write {wr['mb'] / wr['write_s']:.0f} MB/s incl. fsync and close ({wr['write_s']:.2f} s)")
        print(f"    per-episode append: first 100 mean {wr['first100_mean_ms']:.3f} ms (median {wr['first100_median_ms']:.3f}), "
              f"last 100 mean {wr['last100_mean_ms']:.3f} ms (median {wr['last100_median_ms']:.3f})  "
              f"-> last/first {wr['last100_mean_ms'] / wr['first100_mean_ms']:.2f}x mean, "
              f"{wr['last100_median_ms'] / wr['first100_median_ms']:.2f}x median (target within 2x)")
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
