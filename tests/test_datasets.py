"""The zarr episode store on a real disk: write/read round trips, the documented layout through plain
zarr, random access, resume after an interrupted writer, the writer lock, atomic publication,
RgbWriter/copy_dataset, frame stacking against a real MuJoCo env, and append linearity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from cdred_pipeline.datasets import (
    EpisodeSampler, EpisodeWriter, RgbWriter, copy_dataset, fill_buffer, load_episodes, open_dataset, stack_frames,
    validate, write_array,
)
from cdred_pipeline.datasets import layout as L
from cdred_pipeline.datasets.synthetic import default_attrs, random_episode, write_random_dataset
from cdred_pipeline.errors import DatasetError
from store_helpers import file_stamps

STEP_KEYS = ("obs", "action", "reward", "terminated", "physics_state")


def _assert_episode(got: dict, ep: dict) -> None:
    for k in STEP_KEYS + ("final_obs", "final_physics_state"):
        want = np.asarray(ep[k], dtype=got[k].dtype)
        assert got[k].shape == want.shape, k
        assert np.array_equal(got[k], want), k
    assert got["seed"] == ep["seed"] and got["success"] == ep["success"]
    assert got["length"] == len(ep["obs"])
    assert got["return"] == pytest.approx(float(np.sum(ep["reward"], dtype=np.float64)))


def test_round_trip_varying_lengths_small_chunks(tmp_path):
    lengths = [1, 7, 64, 3, 200, 1, 129, 50]
    # 1 KB chunks: every array spans many chunks and episodes straddle chunk boundaries
    path, eps = write_random_dataset(tmp_path / "d.zarr", lengths, chunk_bytes=1024, seed=1)
    ds = open_dataset(path)
    assert ds.num_episodes == len(lengths) and ds.num_steps == sum(lengths)
    assert ds.episode_ends.tolist() == np.cumsum(lengths).tolist()
    assert ds.array("data/obs").chunks[0] < 64
    for i, ep in enumerate(eps):
        _assert_episode(ds.episode(i), ep)
    _assert_episode(ds[-1], eps[-1])
    assert validate(path) == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["d.zarr"]


def test_plain_zarr_reads_the_documented_layout(tmp_path):
    path, eps = write_random_dataset(tmp_path / "d.zarr", [5, 9, 4], obs_dim=6, action_dim=3, state_dim=7,
                                     cameras={"front": 8}, seed=2)
    root = zarr.open_group(str(path), mode="r")  # plain zarr, no cdred code
    assert root.attrs["cdred_dataset_version"] == 1
    for section in ("env", "sim", "source", "scores"):
        assert isinstance(root.attrs[section], dict)
    assert set(root.attrs["scores"]) >= {"random", "expert"}
    assert root.attrs["env"]["obs_dim"] == 6 and root.attrs["env"]["action_dim"] == 3
    assert root.attrs["env"]["physics_state_dim"] == 7
    expect = {
        "data/obs": ((18, 6), "float32"), "data/action": ((18, 3), "float32"), "data/reward": ((18,), "float32"),
        "data/terminated": ((18,), "bool"), "data/physics_state": ((18, 7), "float64"),
        "data/rgb/front": ((18, 8, 8, 3), "uint8"),
        "meta/episode_ends": ((3,), "int64"), "meta/seed": ((3,), "int64"), "meta/length": ((3,), "int64"),
        "meta/return": ((3,), "float64"), "meta/success": ((3,), "bool"), "meta/final_obs": ((3, 6), "float32"),
        "meta/final_physics_state": ((3, 7), "float64"), "meta/final_rgb/front": ((3, 8, 8, 3), "uint8"),
    }
    for key, (shape, dtype) in expect.items():
        arr = root[key]
        assert arr.shape == shape and str(arr.dtype) == dtype, key
        assert arr.chunks[1:] == tuple(max(1, s) for s in shape[1:]), f"{key}: chunked along time only"
        codecs = json.loads((path / key / "zarr.json").read_text())["codecs"]
        want = "zstd" if dtype == "uint8" else "lz4"  # compression="auto" (docs/dataset-layout.md)
        assert [c["name"] for c in codecs] == ["bytes", "blosc"], key
        assert codecs[1]["configuration"]["cname"] == want and codecs[1]["configuration"]["shuffle"] == "shuffle", key
    ends = root["meta/episode_ends"][:]
    assert ends.tolist() == [5, 14, 18]
    obs = root["data/obs"][:]
    np.testing.assert_array_equal(obs[5:14], eps[1]["obs"])  # episode i = rows ends[i-1]:ends[i]
    np.testing.assert_array_equal(root["data/rgb/front"][14:18], eps[2]["rgb"]["front"])
    assert "consolidated_metadata" in json.loads((path / "zarr.json").read_text())
    assert json.loads((path / "zarr.json").read_text())["zarr_format"] == 3


def test_compression_zstd_everywhere_reads_the_same(tmp_path):
    a, eps = write_random_dataset(tmp_path / "a.zarr", [30, 7], cameras={"c": 8}, compression="zstd", seed=9)
    b, _ = write_random_dataset(tmp_path / "b.zarr", [30, 7], cameras={"c": 8}, seed=9)
    for key in open_dataset(a).keys():
        codecs = json.loads((a / key / "zarr.json").read_text())["codecs"]
        assert codecs[1]["configuration"]["cname"] == "zstd", key
        np.testing.assert_array_equal(open_dataset(a).array(key)[:], open_dataset(b).array(key)[:])
    with pytest.raises(DatasetError, match="compression 'gzip'"):
        EpisodeWriter(tmp_path / "c.zarr", default_attrs(), compression="gzip")


def test_chunk_files_decode_with_plain_zarr(tmp_path):
    """Every chunk the writer wrote in batches and tail flushes is on disk and decodes, edge chunks too."""
    path, eps = write_random_dataset(tmp_path / "d.zarr", [333, 1, 250], obs_dim=3, chunk_bytes=120, seed=4)
    root = zarr.open_group(str(path), mode="r")
    obs = root["data/obs"]
    assert obs.chunks[0] == 10 and obs.nchunks == 59 and obs.nchunks_initialized == 59
    np.testing.assert_array_equal(obs[:], np.concatenate([e["obs"] for e in eps]))
    np.testing.assert_array_equal(root["data/terminated"][:], np.concatenate([e["terminated"] for e in eps]))


def test_random_access_by_step_and_episode(tmp_path):
    path, eps = write_random_dataset(tmp_path / "d.zarr", [10, 3, 20], chunk_bytes=256, seed=3)
    ds = open_dataset(path)
    idx = np.array([12, 0, 32, 12, 9, 13])
    rows = ds.steps(idx, keys=("obs", "reward", "physics_state"))
    flat = {k: np.concatenate([e[k] for e in eps]) for k in ("obs", "reward", "physics_state")}
    for k in flat:
        np.testing.assert_array_equal(rows[k], flat[k][idx])
    assert rows["episode"].tolist() == [1, 0, 2, 1, 0, 2]
    assert rows["t"].tolist() == [2, 0, 19, 2, 9, 0]
    sparse = ds.steps([0, 32], keys=("obs",))  # orthogonal selection path
    np.testing.assert_array_equal(sparse["obs"], flat["obs"][[0, 32]])
    with pytest.raises(IndexError):
        ds.steps([33])
    with pytest.raises(IndexError):
        ds.episode(3)


def test_load_episodes_state(tmp_path):
    path, eps = write_random_dataset(tmp_path / "d.zarr", [4, 6, 2], seed=4)
    out = load_episodes(path, num_demos=2)
    assert len(out) == 2
    for got, ep in zip(out, eps):
        assert got["obs"].shape == (len(ep["obs"]) + 1, 5) and got["obs"].dtype == np.float32
        np.testing.assert_array_equal(got["obs"][:-1], ep["obs"])
        np.testing.assert_array_equal(got["obs"][-1], ep["final_obs"])
        np.testing.assert_array_equal(got["action"], ep["action"])
        np.testing.assert_array_equal(got["reward"], ep["reward"])
    assert len(load_episodes(path)) == 3
    with pytest.raises(DatasetError, match="asked for 4 demos"):
        load_episodes(path, num_demos=4)
    with pytest.raises(DatasetError, match="no rendered frames"):
        load_episodes(path, obs="rgb")


def test_stack_frames_repeats_first_frame_channels_first():
    frames = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    st = stack_frames(frames)
    assert st.shape == (4, 9, 2, 2)
    chw = frames.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(st[0], np.concatenate([chw[0], chw[0], chw[0]]))
    np.testing.assert_array_equal(st[1], np.concatenate([chw[0], chw[0], chw[1]]))
    np.testing.assert_array_equal(st[3], np.concatenate([chw[1], chw[2], chw[3]]))


def test_load_episodes_rgb_matches_a_real_frame_stacking_env(tmp_path):
    """Frames rendered per step and stacked by the reader equal what make_env(obs="rgb") returns."""
    envs = pytest.importorskip("cdred_pipeline.envs")
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = envs.make_env("dmc:cartpole-balance", obs="rgb", seed=0, image_size=16)
        obs, info = env.reset(seed=0)
    except Exception as exc:  # noqa: BLE001 - no GL / simulator on this machine: nothing to compare with
        pytest.skip(f"rgb env unavailable: {type(exc).__name__}: {exc}")
    spec = env.spec_info
    rng = np.random.default_rng(0)
    observed, frames, states, actions = [obs], [env.render_frame()], [], []
    for _ in range(5):
        states.append(env.get_physics_state())
        a = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        actions.append(a)
        observed.append(obs)
        frames.append(env.render_frame())
    t = len(actions)
    attrs = default_attrs(spec.obs_dim, spec.action_dim, spec.task, image_size=16)
    with EpisodeWriter(tmp_path / "d.zarr", attrs) as w:
        w.append_episode(np.zeros((t, spec.obs_dim)), np.stack(actions), np.zeros(t), np.zeros(t, bool),
                         np.stack(states), np.zeros(spec.obs_dim), env.get_physics_state(), seed=0, success=False,
                         rgb={"cam0": np.stack(frames[:t])}, final_rgb={"cam0": frames[t]})
    got = load_episodes(tmp_path / "d.zarr", obs="rgb")[0]["obs"]
    assert got.shape == (t + 1, 9, 16, 16) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.stack(observed))


def test_writer_refuses_bad_episodes_and_attrs(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(DatasetError, match="attrs.env is missing obs_dim"):
        EpisodeWriter(tmp_path / "x.zarr", {"env": {"task": "dmc:cheetah-run", "action_dim": 2}})
    with pytest.raises(DatasetError, match="not a plain Python type"):
        EpisodeWriter(tmp_path / "x.zarr", {**default_attrs(), "sim": {"obj": object()}})
    w = EpisodeWriter(tmp_path / "x.zarr", default_attrs())
    ep = random_episode(rng, 5)
    for change, msg in [
        ({"obs": np.zeros((5, 4))}, r"obs: shape \(5, 4\)"),
        ({"action": np.full((5, 2), 1.5)}, r"outside \[-1, 1\]"),
        ({"reward": np.array([0, 0, np.nan, 0, 0])}, "reward: NaN/inf"),
        ({"obs": np.zeros((0, 5)), "action": np.zeros((0, 2))}, "at least one step"),
        ({"rgb": {"c": np.zeros((5, 4, 4, 3), np.uint8)}}, "final_rgb"),
    ]:
        with pytest.raises(DatasetError, match=msg):
            w.append_episode(**{**ep, **change})
    w.append_episode(**ep)
    with pytest.raises(DatasetError, match="physics_state"):
        w.append_episode(**{**ep, "physics_state": np.zeros((5, 3)), "final_physics_state": np.zeros(3)})
    assert w.num_episodes == 1
    w.close()
    with pytest.raises(DatasetError, match="already exists"):
        EpisodeWriter(tmp_path / "x.zarr", default_attrs())


def test_output_only_appears_complete_and_lock_is_exclusive(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.zarr"
    w = EpisodeWriter(path, default_attrs())
    w.append_episode(**random_episode(rng, 10))
    w.flush()
    assert not path.exists() and L.partial_path(path).is_dir()  # nothing with the final name yet
    with pytest.raises(DatasetError, match="another process is writing"):
        EpisodeWriter(path, default_attrs())
    with pytest.raises(DatasetError, match="not finished by a writer|no such file"):
        open_dataset(L.partial_path(path))
    w.close()
    assert path.is_dir() and not L.partial_path(path).exists()
    assert open_dataset(path).num_episodes == 1


_KILLED_WRITER = """
import os, sys, numpy as np
from cdred_pipeline.datasets import EpisodeWriter
from cdred_pipeline.datasets.synthetic import default_attrs, random_episode
rng = np.random.default_rng(7)
w = EpisodeWriter(sys.argv[1], default_attrs(), chunk_bytes=2048)
for i in range(12):
    w.append_episode(**random_episode(rng, 37, seed=i))
    if i == 6:
        w.flush()      # episodes 0..6 are durable
os.kill(os.getpid(), 9)  # killed before close: episodes 7..11 were only buffered
"""


def test_resume_after_sigkill_keeps_flushed_episodes(tmp_path):
    path = tmp_path / "d.zarr"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not path.exists() and L.partial_path(path).is_dir()
    rng = np.random.default_rng(7)
    eps = [random_episode(rng, 37, seed=i) for i in range(12)]
    w = EpisodeWriter.resume(path, default_attrs(), chunk_bytes=2048)
    assert w.num_episodes == 7 and w.num_steps == 7 * 37
    for ep in eps[w.num_episodes:]:
        w.append_episode(**ep)
    w.close()
    ds = open_dataset(path)
    assert ds.num_episodes == 12 and validate(path) == []
    for i, ep in enumerate(eps):
        _assert_episode(ds.episode(i), ep)
    # appending to a finished store reopens it as partial, then publishes it again
    w = EpisodeWriter.resume(path)
    assert w.num_episodes == 12 and not path.exists()
    w.append_episode(**eps[0])
    w.close()
    assert open_dataset(path).num_episodes == 13
    with pytest.raises(DatasetError, match="another task"):
        EpisodeWriter.resume(path, default_attrs(task="mw:box-close"))


def test_resume_drops_rows_beyond_the_last_committed_episode(tmp_path):
    """A writer killed between flushing step data and episode_ends: the extra rows are discarded."""
    rng = np.random.default_rng(1)
    path = tmp_path / "d.zarr"
    w = EpisodeWriter(path, default_attrs(), chunk_bytes=512)
    eps = [random_episode(rng, n, seed=i) for i, n in enumerate([9, 30, 4])]
    for ep in eps[:2]:
        w.append_episode(**ep)
    w.flush()
    w.append_episode(**eps[2])
    for k, col in w._columns.items():  # simulate the kill: step data on disk, meta not yet
        if k.startswith("data/"):
            col.flush()
    w._lock.release()
    w = EpisodeWriter.resume(path)
    assert (w.num_episodes, w.num_steps) == (2, 39)
    w.append_episode(**eps[2])
    w.close()
    ds = open_dataset(path)
    assert validate(path) == [] and ds.num_steps == 43
    _assert_episode(ds.episode(2), eps[2])


def test_resume_ignores_episode_ends_grown_but_not_written(tmp_path):
    """A writer killed after growing meta/episode_ends and before writing it leaves the fill value (0)
    there: resume keeps the committed episodes instead of reading that 0 as an end."""
    rng = np.random.default_rng(2)
    path = tmp_path / "d.zarr"
    w = EpisodeWriter(path, default_attrs(), chunk_bytes=512)
    eps = [random_episode(rng, n, seed=i) for i, n in enumerate([9, 30, 4])]
    for ep in eps[:2]:
        w.append_episode(**ep)
    w.abort()  # flushes what was appended
    meta = zarr.open_group(w.tmp, mode="r+", use_consolidated=False)["meta"]
    for _, arr in meta.arrays():  # the kill: the next flush grew every per-episode array (the others'
        arr.resize((3, *arr.shape[1:]))  # rows durable), episode_ends last, whose value was never written
    w = EpisodeWriter.resume(path)
    assert (w.num_episodes, w.num_steps) == (2, 39)
    w.append_episode(**eps[2])
    w.close()
    assert validate(path) == [] and open_dataset(path).num_steps == 43


def test_empty_store_closes_valid(tmp_path):
    EpisodeWriter(tmp_path / "e.zarr", default_attrs(physics_state_dim=3)).close()
    ds = open_dataset(tmp_path / "e.zarr")
    assert (ds.num_episodes, ds.num_steps, ds.physics_state_dim) == (0, 0, 3)
    assert load_episodes(tmp_path / "e.zarr") == []


def test_rgb_writer_copies_and_resumes(tmp_path):
    src, eps = write_random_dataset(tmp_path / "s.zarr", [6, 11, 3], seed=5)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (len(e["obs"]) + 1, 8, 8, 3), dtype=np.uint8) for e in eps]
    dst = tmp_path / "v.zarr"
    rw = RgbWriter(src, dst, "corner", attrs={"render_profile": "fast"}, chunk_bytes=1024)
    assert rw.num_episodes == 0
    rw.append_episode(frames[0])
    rw.append_episode(frames[1][:-1], final_frame=frames[1][-1])
    rw.flush()
    with pytest.raises(DatasetError, match="frame shape"):
        rw.append_episode(np.zeros((4, 4, 4, 3), np.uint8))
    rw.abort()  # a kill after the flush
    assert not dst.exists()
    rw = RgbWriter(src, dst, "corner", attrs={"render_profile": "fast"}, chunk_bytes=1024)
    assert rw.num_episodes == 2 and rw.num_frames == 17
    with pytest.raises(DatasetError, match="frames for 2 of 3"):
        rw.close()
    rw = RgbWriter(src, dst, "corner", attrs={"render_profile": "fast"}, chunk_bytes=1024)
    rw.append_episode(frames[2])
    rw.close()
    ds = open_dataset(dst)
    assert ds.cameras == ["corner"] and validate(dst) == []
    assert dict(ds.array("data/rgb/corner").attrs)["render_profile"] == "fast"
    for i, e in enumerate(eps):
        got = ds.episode(i, rgb=True)
        _assert_episode(got, e)
        np.testing.assert_array_equal(got["rgb"]["corner"], frames[i][:-1])
        np.testing.assert_array_equal(got["final_rgb"]["corner"], frames[i][-1])
    assert open_dataset(src).cameras == []  # the source is untouched
    st = load_episodes(dst, obs="rgb", camera="corner")
    np.testing.assert_array_equal(st[1]["obs"], stack_frames(frames[1]))
    # copy without the camera
    copy = copy_dataset(dst, tmp_path / "c.zarr", exclude=["data/rgb/corner", "meta/final_rgb/corner"])
    assert open_dataset(copy).cameras == [] and validate(copy) == []


def test_rgb_writer_resumes_after_the_flushed_episodes_not_the_grown_arrays(tmp_path):
    """Frame arrays grow before their rows are written: a kill in between leaves zero frames that the
    arrays' lengths would count; resume goes by the episodes the last flush recorded."""
    src, eps = write_random_dataset(tmp_path / "s.zarr", [6, 11, 3], seed=5)
    rng = np.random.default_rng(0)
    frames = [rng.integers(1, 256, (len(e["obs"]) + 1, 8, 8, 3), dtype=np.uint8) for e in eps]
    dst = tmp_path / "v.zarr"
    rw = RgbWriter(src, dst, "corner", chunk_bytes=1024)
    rw.append_episode(frames[0])
    rw.append_episode(frames[1])
    rw.abort()  # flushes two episodes
    g = zarr.open_group(rw.tmp, mode="r+", use_consolidated=False)
    g["data/rgb/corner"].resize((20, 8, 8, 3))  # the kill: episode 3's rows reserved, never written
    g["meta/final_rgb/corner"].resize((3, 8, 8, 3))
    rw = RgbWriter(src, dst, "corner", chunk_bytes=1024)
    assert rw.num_episodes == 2
    rw.append_episode(frames[2])
    rw.close()
    got = open_dataset(dst).episode(2, rgb=True)
    np.testing.assert_array_equal(got["rgb"]["corner"], frames[2][:-1])
    assert "cdred_flushed_episodes" not in dict(open_dataset(dst).array("data/rgb/corner").attrs)


def test_write_array_adds_a_chunked_array(tmp_path):
    path, _ = write_random_dataset(tmp_path / "d.zarr", [5, 5], seed=0)
    blocks = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((7, 2), np.float32)]
    write_array(path, "data/extra", iter(blocks), attrs={"note": "x"}, chunk_bytes=16)
    root = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(root["data/extra"][:], np.concatenate(blocks))
    assert root["data/extra"].chunks == (2, 2) and root["data/extra"].attrs["note"] == "x"
    assert validate(path) == []  # consolidated again


def test_append_never_rewrites_a_whole_chunk(tmp_path):
    """Appending is linear in the data: once a chunk is whole it is never written again, however many
    episodes follow, so only each array's partial tail chunk is rewritten (benchmarks/speed/dataset_io.py
    measures the time per episode over 1000 episodes)."""
    rng = np.random.default_rng(0)
    ep = random_episode(rng, 50, obs_dim=17, action_dim=6, state_dim=18)
    w = EpisodeWriter(tmp_path / "d.zarr", default_attrs(17, 6), chunk_bytes=16 * 1024)
    for _ in range(100):
        w.append_episode(**ep)
    w.flush()
    before = {k: v for k, v in file_stamps(w.tmp).items() if "/c/" in k}  # the chunk files
    for i in range(400):
        w.append_episode(**ep)
        if i % 50 == 49:
            w.flush()
    after = file_stamps(w.tmp)
    w.close()
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    tails = {k.rsplit("/c/", 1)[0] for k in changed}
    assert len(tails) == len(changed), f"an array rewrote more than its tail chunk: {changed[:6]}"
    assert changed, "the partial tail chunks must have been rewritten (else the check sees no writes)"
    assert len(before) > 4 * len(changed) and sum("/c/" in k for k in after) > 4 * len(before)
    assert open_dataset(tmp_path / "d.zarr").num_steps == 500 * 50


def _tagged_dataset(path: Path, lengths: list[int]) -> Path:
    """obs row = (episode, t): a sampled window is inside one episode iff its tags are consecutive."""
    with EpisodeWriter(path, default_attrs(2, 1, physics_state_dim=0)) as w:
        for i, n in enumerate(lengths):
            tags = np.stack([np.full(n + 1, i), np.arange(n + 1)], axis=1).astype(np.float32)
            w.append_episode(tags[:n], np.zeros((n, 1)), np.arange(n, dtype=np.float32), np.zeros(n, bool), None,
                             tags[n], None, seed=i, success=False)
    return path


def test_sampler_windows_never_cross_episode_ends(tmp_path):
    path = _tagged_dataset(tmp_path / "d.zarr", [1, 2, 3, 10, 4])
    smp = EpisodeSampler(load_episodes(path), horizon=3, seed=0)
    assert smp.num_windows == (0 + 0 + 1 + 8 + 2)  # T - H + 1 per episode with T >= H
    b = smp.sample(4096)
    assert b["obs"].shape == (4, 4096, 2) and b["action"].shape == (3, 4096, 1) and b["reward"].shape == (3, 4096, 1)
    ep, t = b["obs"][..., 0], b["obs"][..., 1]
    assert (ep == ep[0]).all() and (np.diff(t, axis=0) == 1).all()
    np.testing.assert_array_equal(b["reward"][..., 0], t[:-1])  # reward t belongs to obs t
    assert set(np.unique(ep[0])) == {2.0, 3.0, 4.0}
    assert smp.nbytes > 0


def test_fill_agent_replay_buffer(tmp_path):
    torch = pytest.importorskip("torch")
    try:
        from cdred_pipeline.agent.buffer import ReplayBuffer
    except ImportError as exc:
        pytest.skip(f"agent ReplayBuffer not available: {exc}")
    path = _tagged_dataset(tmp_path / "d.zarr", [3, 10, 4])
    buf = ReplayBuffer(100, (2,), 1, "cpu", torch.float32)
    info = fill_buffer(buf, path)
    assert info["episodes"] == 3 and info["steps"] == 17 and info["bytes"] == 20 * 2 * 4 + 17 * 4 + 17 * 4
    batch = buf.sample(256, 3)
    obs = batch["obs"].numpy()
    assert obs.shape == (4, 256, 2)
    assert (obs[..., 0] == obs[0, :, 0]).all() and (np.diff(obs[..., 1], axis=0) == 1).all()


def test_docs_example_reads_a_store_with_plain_zarr(tmp_path, monkeypatch):
    """The plain-zarr snippet in docs/dataset-layout.md runs and agrees with the cdred reader."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "dataset-layout.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    write_random_dataset(tmp_path / "demos.zarr", [5, 8, 3, 9, 2], cameras={"cam0": 8}, seed=6)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "dataset-layout.md", "exec"), ns)  # noqa: S102 - our own documentation
    ref = load_episodes(tmp_path / "demos.zarr")[3]
    np.testing.assert_array_equal(ns["ep_obs"], ref["obs"])
    np.testing.assert_array_equal(ns["ep_act"], ref["action"])
    np.testing.assert_array_equal(ns["stacked"], load_episodes(tmp_path / "demos.zarr", obs="rgb")[3]["obs"])
    assert len(ns["episodes"]) == 5


def test_writer_works_in_a_forked_child_after_the_parent_wrote(tmp_path):
    """Process pools fork: the child must not reuse the parent's (thread-less) fsync thread pool."""
    import multiprocessing as mp

    write_random_dataset(tmp_path / "parent.zarr", [300, 200], chunk_bytes=512, seed=0)  # starts the pool here
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        res = pool.apply_async(_child_write, (str(tmp_path / "child.zarr"),))
        assert res.get(timeout=30) == 500
    assert open_dataset(tmp_path / "child.zarr").num_steps == 500


def _child_write(path: str) -> int:
    write_random_dataset(path, [300, 200], chunk_bytes=512, seed=1)
    return open_dataset(path).num_steps


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fsynced files through /proc/self/fd")
def test_every_file_is_fsynced_before_the_store_is_published(tmp_path, monkeypatch):
    """Durability with deferred fsyncs: a flush fsyncs every chunk file and chunk
    folder it wrote before meta/episode_ends commits them; close fsyncs every file and folder of the
    store before the rename that publishes it, without a second fsync of chunk files the last flush
    synced. os.fsync and os.replace are the real calls, only recorded."""
    import threading

    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src, dst, *args, **kwargs) -> None:
        real_replace(src, dst, *args, **kwargs)
        with lock:
            events.append(("replace", os.path.realpath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rng = np.random.default_rng(3)
    eps = [random_episode(rng, n, seed=i) for i, n in enumerate([40, 7, 90])]
    path = tmp_path / "d.zarr"
    w = EpisodeWriter(path, default_attrs(), chunk_bytes=1024)
    tmp = os.path.realpath(L.partial_path(path))
    for ep in eps[:2]:
        w.append_episode(**ep)
    w.flush()

    def synced_before(i: int) -> set[str]:
        return {p for kind, p in events[:i] if kind == "fsync"}

    commit = next(i for i, (kind, p) in enumerate(events)
                  if kind == "replace" and p.startswith(os.path.join(tmp, "meta", "episode_ends", "c")))
    data_chunks = {p for kind, p in events[:commit] if kind == "replace" and "/data/" in p and "/c/" in p}
    assert data_chunks and data_chunks | {os.path.dirname(p) for p in data_chunks} <= synced_before(commit)

    w.append_episode(**eps[2])
    w.close()
    publish = next(i for i, (kind, p) in enumerate(events) if kind == "replace" and p == os.path.realpath(path))
    on_disk = {os.path.join(r, n) for r, ds, fs in os.walk(path) for n in ds + fs} | {str(path)}
    as_partial = {os.path.realpath(p).replace(os.path.realpath(path), tmp, 1) for p in on_disk}
    assert as_partial <= synced_before(publish), sorted(as_partial - synced_before(publish))[:5]
    for chunk in {p for kind, p in events[:publish] if kind == "replace" and "/c/" in p}:
        writes = sum(1 for kind, p in events[:publish] if kind == "replace" and p == chunk)
        syncs = sum(1 for kind, p in events[:publish] if kind == "fsync" and p == chunk)
        assert syncs == writes, f"{chunk}: written {writes}x, fsynced {syncs}x"
    ds = open_dataset(path)
    assert validate(path) == []
    for i, ep in enumerate(eps):
        _assert_episode(ds.episode(i), ep)
