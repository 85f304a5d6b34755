"""Property-based tests (hypothesis) over episode lengths, dims and chunk sizes: the writer/reader
round trip, resume after a crash at any episode, and the HDF5 / parquet converters."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdred_pipeline.datasets import EpisodeWriter, load_episodes, open_dataset, validate
from cdred_pipeline.datasets.convert import export_hdf5, export_parquet, import_file
from cdred_pipeline.datasets.synthetic import default_attrs, random_episode

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.fixed_dictionaries({
    "lengths": st.lists(st.integers(1, 50), min_size=1, max_size=6),
    "obs_dim": st.integers(1, 9),
    "action_dim": st.integers(1, 4),
    "state_dim": st.integers(0, 6),
    "chunk_bytes": st.sampled_from([96, 1024, 1 << 16]),
    "camera": st.sampled_from([None, 4]),
    "seed": st.integers(0, 2**16),
})


def _episodes(s: dict) -> list[dict]:
    rng = np.random.default_rng(s["seed"])
    cams = {"c": s["camera"]} if s["camera"] else None
    return [random_episode(rng, n, s["obs_dim"], s["action_dim"], s["state_dim"], cams, seed=i)
            for i, n in enumerate(s["lengths"])]


def _write(path: Path, s: dict, eps: list[dict]) -> Path:
    attrs = default_attrs(s["obs_dim"], s["action_dim"], physics_state_dim=s["state_dim"])
    with EpisodeWriter(path, attrs, chunk_bytes=s["chunk_bytes"]) as w:
        for ep in eps:
            w.append_episode(**ep)
    return path


def _check(path: Path, eps: list[dict]) -> None:
    ds = open_dataset(path)
    assert ds.num_episodes == len(eps)
    assert ds.episode_ends.tolist() == np.cumsum([len(e["obs"]) for e in eps]).tolist()
    for i, ep in enumerate(eps):
        got = ds.episode(i, rgb=bool(ds.cameras))
        for k in ("obs", "action", "reward", "terminated", "physics_state", "final_obs", "final_physics_state"):
            assert np.array_equal(got[k], np.asarray(ep[k], dtype=got[k].dtype)), k
        if ds.cameras:
            assert np.array_equal(got["rgb"]["c"], ep["rgb"]["c"])
            assert np.array_equal(got["final_rgb"]["c"], ep["final_rgb"]["c"])


@SETTINGS
@given(shapes)
def test_writer_reader_round_trip(s):
    eps = _episodes(s)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "d.zarr", s, eps)
        assert validate(path) == []
        _check(path, eps)
        loaded = load_episodes(path)
        for got, ep in zip(loaded, eps):
            assert np.array_equal(got["obs"], np.concatenate([ep["obs"], ep["final_obs"][None]]))


@SETTINGS
@given(shapes, st.data())
def test_resume_after_crash_at_any_episode(s, data):
    eps = _episodes(s)
    k = data.draw(st.integers(0, len(eps) - 1), label="last flushed episode")
    attrs = default_attrs(s["obs_dim"], s["action_dim"], physics_state_dim=s["state_dim"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.zarr"
        w = EpisodeWriter(path, attrs, chunk_bytes=s["chunk_bytes"])
        for i, ep in enumerate(eps):
            w.append_episode(**ep)
            if i == k:
                w.flush()
        w._lock.release()  # a crash: what was appended after the flush is only in memory and is lost
        del w
        w = EpisodeWriter.resume(path, attrs, chunk_bytes=s["chunk_bytes"])
        assert w.num_episodes >= k + 1  # whole chunks written on the way may commit more, never fewer
        for ep in eps[w.num_episodes:]:
            w.append_episode(**ep)
        w.close()
        assert validate(path) == []
        _check(path, eps)


@settings(SETTINGS, max_examples=6)
@given(shapes)
def test_converters_round_trip(s):
    eps = _episodes(s)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = _write(tmp / "d.zarr", s, eps)
        for exported in (export_hdf5(path, tmp / "d.hdf5"), export_parquet(path, tmp / "d.parquet")):
            back = import_file(exported, tmp / f"{exported.name}.zarr")
            a, b = open_dataset(path), open_dataset(back)
            assert a.keys() == b.keys()
            for key in a.keys():
                x, y = a.array(key)[:], b.array(key)[:]
                assert x.dtype == y.dtype and np.array_equal(x, y), key
