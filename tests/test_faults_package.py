"""Faults of dataset files and `cdred package`, each through real zarr stores on disk and real subprocesses
of the installed console script: a failing command exits non-zero with exactly one line on stderr and no
traceback, and leaves no partial or temporary output behind.

Covers: concurrent writers of one output (export, merge, import) and the output lock; outputs that are,
contain or lie inside an input; datasets labelled with another task (probe, task table), imports whose
dims do not fit ``--task`` and empty datasets; truncated and corrupt chunks met by every reader
(validate, export, merge, imitate, render-visual); the notice of a trusted pickle import; ``package
inspect`` of an artifact key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import cdred_command, cli_env, one_line_error, run_cli

from cdred_pipeline.artifacts import ArtifactStore
from cdred_pipeline.datasets import EpisodeWriter, check_readable, load_episodes, open_dataset, validate
from cdred_pipeline.datasets import layout as L
from cdred_pipeline.datasets.reader import DatasetReadError
from cdred_pipeline.datasets.synthetic import default_attrs, write_random_dataset
from cdred_pipeline.errors import CdredError, DatasetError
from cdred_pipeline.stages import package

os.environ.setdefault("MUJOCO_GL", "egl")


# ----------------------------------------------------------------------------------- helpers
def _leftovers(folder: Path) -> list[str]:
    """Temporary names a writer may leave next to its output (partial stores, temp files, moved-aside
    old outputs); lock files are not outputs and stay, as the artifact store's do."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def _popen(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*cdred_command(), "--workdir", str(workdir), "-q", *args], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _blocked_on(lock: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``proc`` waits for the flock on ``lock`` (a ``->`` waiter line for its inode in
    /proc/locks); fails if it exits first."""
    ino = os.stat(lock).st_ino
    deadline = time.time() + timeout
    while True:
        waiting = [ln for ln in Path("/proc/locks").read_text().splitlines()
                   if "->" in ln and "FLOCK" in ln and ln.split()[-3].endswith(f":{ino}")]
        if waiting:
            return
        assert proc.poll() is None, _finish(proc)
        assert time.time() < deadline, f"{proc.args} never waited for {lock.name}"
        time.sleep(0.05)


def _chunk_file(store: Path, key: str, index: int = 0) -> Path:
    """The file of chunk ``index`` of the array ``key`` (read from its zarr.json: the store may be damaged)."""
    ndim = len(json.loads((store / key / "zarr.json").read_text())["shape"])
    return store / key / L.chunk_key(index, ndim)


def _truncate(store: Path, key: str, index: int = 0) -> Path:
    """Cut a chunk file of ``key`` to half its size, as a copy or a disk that filled up does."""
    f = _chunk_file(store, key, index)
    os.truncate(f, f.stat().st_size // 2)
    return f


def _corrupt(store: Path, key: str, index: int = 0) -> Path:
    """Zero a chunk file's compressed bytes after its Blosc header: the file keeps its size."""
    f = _chunk_file(store, key, index)
    raw = bytearray(f.read_bytes())
    raw[16:] = bytes(len(raw) - 16)
    f.write_bytes(bytes(raw))
    return f


def _relabel(store: Path, task: str) -> None:
    """Set ``attrs.env.task`` by hand (plain zarr), as a user relabelling a dataset does."""
    import zarr

    g = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    env = dict(g.attrs["env"])
    env["task"] = task
    g.attrs["env"] = env
    L.consolidate(store)


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A tiny synthetic store: 3 episodes, several chunks per array (1 KB chunks)."""
    path, _ = write_random_dataset(tmp_path_factory.mktemp("small") / "d.zarr", [20, 30, 40], obs_dim=4,
                                   action_dim=2, state_dim=3, seed=0, chunk_bytes=1024)
    return path


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory) -> Path:
    """A real dmc:cartpole-balance store (random actions, physics states, probe frames): 2 x 50 steps,
    enough sub-trajectories for a tiny imitation batch."""
    from cdred_pipeline.render import write_random_dataset as real_dataset

    return real_dataset(tmp_path_factory.mktemp("cart") / "cart.zarr", "dmc:cartpole-balance", episodes=2,
                        episode_length=50, seed=3)


@pytest.fixture(scope="module")
def reach(tmp_path_factory) -> Path:
    """A real mw:reach store with its probe record (attrs.sim.probe)."""
    from cdred_pipeline.render import write_random_dataset as real_dataset

    return real_dataset(tmp_path_factory.mktemp("reach") / "reach.zarr", "mw:reach", episodes=1, episode_length=8,
                        seed=1)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------- 1. concurrent writers of one output
def test_concurrent_forced_exports_publish_one_whole_file(small, tmp_path):
    out = tmp_path / "out.hdf5"
    procs = [_popen(tmp_path / "wd", "package", "export", str(small), "--format", "hdf5", "-o", str(out), "--force")
             for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert all(r.stderr == "" and f"wrote {out}" in r.stdout for r in results)
    with h5py.File(out, "r") as f:
        assert sorted(f["data"].keys()) == ["demo_0", "demo_1", "demo_2"] and f["data"].attrs["total"] == 90
    assert _leftovers(tmp_path) == []


def _export(small: Path, out: Path, force: bool) -> tuple[str, ...]:
    return ("package", "export", str(small), "--format", "hdf5", "-o", str(out)) + (("--force",) if force else ())


def _merge(small: Path, out: Path, force: bool) -> tuple[str, ...]:
    return ("package", "merge", str(small), str(small), "-o", str(out)) + (("--force",) if force else ())


def _import(small: Path, out: Path, force: bool) -> tuple[str, ...]:
    h5 = out.parent / "in" / "d.hdf5"
    if not h5.exists():
        h5.parent.mkdir()
        package.export(small, "hdf5", h5)
    return ("package", "import", str(h5), "-o", str(out)) + (("--force",) if force else ())


@pytest.mark.parametrize("force", [True, False])
@pytest.mark.parametrize("command, name", [(_export, "out.hdf5"), (_merge, "out.zarr"), (_import, "out.zarr")])
def test_second_writer_waits_for_the_lock_then_replaces_or_fails(small, tmp_path, command, name, force):
    """A writer that finds the output locked waits; once the other is done it replaces the finished
    output atomically under --force, and without it fails with one line, leaving the output."""
    out = tmp_path / name
    args = command(small, out, force)
    lock = out.with_name(f".{out.name}.lock")
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = _popen(tmp_path / "wd", *args)
        _blocked_on(lock, proc)
        out.write_text("the output of the writer that held the lock")
    res = _finish(proc)
    if not force:
        assert res.returncode == 4
        assert "already exists" in one_line_error(res) and "--force" in res.stderr
        return
    assert res.returncode == 0 and res.stderr == "", res.stderr
    if name.endswith(".hdf5"):
        with h5py.File(out, "r") as f:
            assert f["data"].attrs["total"] == 90
    else:
        assert validate(out) == [] and open_dataset(out).num_episodes in (3, 6)
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ 2. outputs overlapping an input
def test_export_onto_its_input_is_refused_and_the_input_kept(small, tmp_path):
    src = _copy(small, tmp_path / "src.zarr")
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    for out in (src, src / "inside.hdf5", tmp_path):
        res = run_cli(tmp_path / "wd", "package", "export", str(src), "--format", "hdf5", "-o", str(out), "--force")
        assert res.returncode == 2, res.stderr
        line = one_line_error(res)
        assert str(out) in line and "input" in line
    assert validate(src) == [] and sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before
    assert _leftovers(tmp_path) == []


def test_merge_and_import_onto_an_input_are_refused(small, tmp_path):
    a = _copy(small, tmp_path / "a.zarr")
    for out in (a, a / "data" / "m.zarr"):
        res = run_cli(tmp_path / "wd", "package", "merge", str(small), str(a), "-o", str(out), "--force")
        assert res.returncode == 2 and "the output" in one_line_error(res)
    assert validate(a) == []
    h5 = package.export(small, "hdf5", tmp_path / "in" / "d.hdf5")
    for out in (h5, h5.parent):
        res = run_cli(tmp_path / "wd", "package", "import", str(h5), "-o", str(out), "--force")
        assert res.returncode == 2 and "input" in one_line_error(res)
    with h5py.File(h5, "r") as f:
        assert f["data"].attrs["total"] == 90
    assert _leftovers(tmp_path) == [] and _leftovers(h5.parent) == []


# ------------------------------------------------------------ 5. data that does not fit its task
def test_relabelled_dataset_fails_validate_and_imitate(reach, tmp_path):
    push = _copy(reach, tmp_path / "push.zarr")
    _relabel(push, "mw:push")
    res = run_cli(tmp_path / "wd", "package", "validate", str(push))
    assert res.returncode == 4
    assert "attrs.env.task: 'mw:push' but the probe frames" in res.stdout and "'mw:reach'" in res.stdout
    one_line_error(res)
    res = run_cli(tmp_path / "wd", "imitate", str(push), "--preset", "tiny", "--steps", "10", "--device", "cpu")
    assert res.returncode == 4
    line = one_line_error(res)
    assert "mw:reach" in line and "cdred package validate" in line
    assert not (tmp_path / "wd" / "imitate").exists()
    with pytest.raises(DatasetError, match="probe frames"):
        load_episodes(push)


def test_import_whose_dims_do_not_fit_the_task_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "r.hdf5", "w") as f:
        for i in range(2):
            f.create_dataset(f"data/demo_{i}/obs/state", data=rng.normal(size=(6, 10)))
            f.create_dataset(f"data/demo_{i}/actions", data=rng.uniform(-1, 1, (6, 7)))
            f.create_dataset(f"data/demo_{i}/rewards", data=np.zeros(6))
    res = run_cli(tmp_path / "wd", "package", "import", str(tmp_path / "r.hdf5"), "-o", str(tmp_path / "o.zarr"),
                  "--task", "mw:reach")
    assert res.returncode == 2
    line = one_line_error(res)
    assert "obs_dim 10, action_dim 7 but mw:reach has obs_dim 39, action_dim 4" in line
    assert not (tmp_path / "o.zarr").exists() and _leftovers(tmp_path) == []


def test_dims_that_do_not_fit_the_labelled_task_fail_validate(tmp_path):
    path, _ = write_random_dataset(tmp_path / "odd.zarr", [12], obs_dim=10, action_dim=7, state_dim=0, task="mw:reach")
    res = run_cli(tmp_path / "wd", "package", "validate", str(path), "--quick")
    assert res.returncode == 4 and "attrs.env: obs_dim 10, action_dim 7 but mw:reach has" in res.stdout
    with pytest.raises(DatasetError, match="cdred package validate"):
        load_episodes(path)


def test_empty_dataset_fails_validate(tmp_path):
    with EpisodeWriter(tmp_path / "empty.zarr", default_attrs(4, 2, physics_state_dim=3)):
        pass
    res = run_cli(tmp_path / "wd", "package", "validate", str(tmp_path / "empty.zarr"))
    assert res.returncode == 4 and "meta/episode_ends: 0 episodes" in res.stdout
    assert "1 problem(s)" in one_line_error(res)


# --------------------------------------------------------------------- 7. truncated and corrupt chunks
def test_truncated_chunk_is_one_line_for_validate_export_and_merge(small, tmp_path):
    bad = _copy(small, tmp_path / "bad.zarr")
    _truncate(bad, "data/obs", 1)
    res = run_cli(tmp_path / "wd", "package", "validate", str(bad), "--quick")
    assert res.returncode == 4 and "data/obs: chunk c/1/0" in res.stdout
    for args in (("export", str(bad), "--format", "hdf5", "-o", str(tmp_path / "o.hdf5")),
                 ("export", str(bad), "--format", "parquet", "-o", str(tmp_path / "o.pq")),
                 ("merge", str(small), str(bad), "-o", str(tmp_path / "m.zarr"))):
        res = run_cli(tmp_path / "wd", "package", *args)
        assert res.returncode == 4, res.stderr
        line = one_line_error(res)
        assert "data/obs" in line and "c/1/0" in line and "cdred package validate" in line
    assert not any((tmp_path / n).exists() for n in ("o.hdf5", "o.pq", "m.zarr")) and _leftovers(tmp_path) == []


def test_corrupt_chunk_is_a_one_line_read_error(small, tmp_path):
    bad = _copy(small, tmp_path / "bad.zarr")
    _corrupt(bad, "data/obs", 1)
    assert validate(bad, deep=False) == []  # the file keeps its size: only decoding finds it
    problems = validate(bad)
    assert any("data/obs: chunk c/1/0" in p and "unreadable" in p for p in problems), problems
    with pytest.raises(DatasetReadError, match=r"data/obs: chunk c/1/0 \(rows 64-89\) cannot be read"):
        load_episodes(bad)
    with pytest.raises(DatasetReadError, match="cdred package validate"):
        open_dataset(bad).steps(np.arange(90), keys=("obs",))
    res = run_cli(tmp_path / "wd", "package", "export", str(bad), "--format", "hdf5", "-o", str(tmp_path / "o.hdf5"))
    assert res.returncode == 4
    line = one_line_error(res)
    assert "data/obs: chunk c/1/0" in line and "cdred package validate" in line
    assert not (tmp_path / "o.hdf5").exists() and _leftovers(tmp_path) == []


def test_check_readable_decodes_what_load_episodes_reads(small, tmp_path):
    bad = _copy(small, tmp_path / "bad.zarr")
    _corrupt(bad, "data/obs", 1)  # rows 64-89: episode 2 only
    _corrupt(bad, "data/physics_state", 1)  # load_episodes does not read the states
    check_readable(bad, num_demos=2)
    with pytest.raises(DatasetReadError, match=r"data/obs: chunk c/1/0 \(rows 64-89\)"):
        check_readable(bad)
    with pytest.raises(DatasetReadError, match=r"data/physics_state: chunk c/1/0 \(rows 42-83\)"):
        check_readable(bad, keys=("data/physics_state", "meta/final_physics_state"))
    check_readable(small, keys=("data/physics_state", "meta/final_physics_state"))
    ds = open_dataset(small)
    np.testing.assert_array_equal(np.asarray(ds.array("data/obs")), ds.group["data/obs"][:])


def test_corrupt_chunk_stops_imitate_before_its_artifact(cartpole, tmp_path):
    """A chunk that keeps its size but does not decode: imitate reads the demos before it opens its
    artifact (stages/imitate.py calls check_readable before store.begin), so no partial is left."""
    bad = _copy(cartpole, tmp_path / "bad.zarr")
    _corrupt(bad, "data/obs")
    wd = tmp_path / "wd"
    res = run_cli(wd, "imitate", str(bad), "--preset", "tiny", "--steps", "10", "--device", "cpu")
    assert res.returncode == 4, res.stderr
    line = one_line_error(res)
    assert "data/obs: chunk c/0/0" in line and "cdred package validate" in line
    assert ArtifactStore(wd).list() == []


def test_corrupt_states_stop_render_visual_before_its_artifact(cartpole, tmp_path):
    """Render-visual decodes the stored states before it opens its artifact (stages/render_visual.py calls
    check_readable on them), so a corrupt chunk is one line and leaves no folder."""
    bad = _copy(cartpole, tmp_path / "bad.zarr")
    _corrupt(bad, "meta/final_physics_state")
    wd = tmp_path / "wd"
    res = run_cli(wd, "render-visual", str(bad), "--no-verify")
    assert res.returncode == 4, res.stderr
    line = one_line_error(res)
    assert "meta/final_physics_state: chunk c/0/0" in line and "cdred package validate" in line
    assert ArtifactStore(wd).list() == []


def test_truncated_chunk_stops_imitate_and_render_visual_before_their_artifact(cartpole, tmp_path):
    bad = _copy(cartpole, tmp_path / "bad.zarr")
    _truncate(bad, "data/obs")
    _truncate(bad, "data/physics_state")
    wd = tmp_path / "wd"
    for args in (("imitate", str(bad), "--preset", "tiny", "--steps", "10", "--device", "cpu"),
                 ("render-visual", str(bad), "--no-verify")):
        res = run_cli(wd, *args)
        assert res.returncode == 4, res.stderr
        line = one_line_error(res)
        assert "chunk c/0/0" in line and "cdred package validate" in line
    assert ArtifactStore(wd).list() == []
    assert not (wd / "imitate").exists() and not (wd / "render-visual").exists()


# ------------------------------------------------------------------------ 10. trusted pickle imports
def test_trusted_pickle_import_says_its_code_ran_with_the_file_hash(tmp_path):
    marker = tmp_path / "code-ran"

    class _Runs:  # unpickling calls Path.touch(marker): code chosen by whoever wrote the file
        def __reduce__(self):
            return (Path.touch, (marker,))

    eps = [(np.zeros((3, 4)), np.zeros((3, 2)), np.zeros(3), np.zeros((3, 4)), _Runs())]
    f = tmp_path / "d.pkl"
    f.write_bytes(pickle.dumps(eps))
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    s = package.import_(f, tmp_path / "api.zarr", task="dmc:point_mass-easy", trust_pickle=True)
    assert marker.exists() and digest in s["notice"] and "ran code" in s["notice"]
    assert open_dataset(tmp_path / "api.zarr").attrs["source"]["sha256"] == digest
    marker.unlink()
    res = run_cli(tmp_path / "wd", "package", "import", str(f), "-o", str(tmp_path / "o.zarr"),
                  "--task", "dmc:point_mass-easy", "--trust-pickle")
    assert res.returncode == 0 and marker.exists(), res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if digest in ln]
    assert len(lines) == 1 and "ran code" in lines[0], res.stdout + res.stderr


# ---------------------------------------------------------------------- 16. inspect by artifact key
def _artifact_with(store: ArtifactStore, stage: str, src: Path | None) -> str:
    art = store.begin(stage, 1, {"from": str(src)})
    if src is not None:
        shutil.copytree(src, art.path / "demos.zarr")
    art.complete_with()
    return art.key


def test_inspect_takes_a_demos_artifact_key(small, tmp_path):
    store = ArtifactStore(tmp_path / "wd")
    key = _artifact_with(store, "demos", small)
    s = package.inspect(key[:6], store)
    assert s["episodes"] == 3 and s["path"] == str(store.folder("demos", key) / "demos.zarr")
    other = _artifact_with(store, "imitate", None)
    with pytest.raises(CdredError, match="holds no demos.zarr"):
        package.inspect(other, store)
    with pytest.raises(DatasetError, match="no such file or directory"):
        package.inspect(tmp_path / "nope.zarr", store)
    res = run_cli(tmp_path / "wd", "package", "inspect", key[:6], "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["episodes"] == 3


def test_a_zero_step_hdf5_demo_is_one_line_and_writes_nothing(tmp_path):
    """A robomimic file with an empty demo: the import names the demo, exit 4, no output."""
    src = tmp_path / "zero.hdf5"
    with h5py.File(src, "w") as f:
        for i, steps in enumerate((3, 0)):
            d = f.create_group(f"data/demo_{i}")
            d.attrs["num_samples"] = steps
            d.create_dataset("obs/state", data=np.zeros((steps, 39), np.float32))
            d.create_dataset("actions", data=np.zeros((steps, 4), np.float32))
            d.create_dataset("rewards", data=np.zeros(steps, np.float32))
            d.create_dataset("dones", data=np.zeros(steps, np.uint8))
    out = tmp_path / "out.zarr"
    res = run_cli(tmp_path / "wd", "package", "import", str(src), "-o", str(out), "--task", "mw:reach")
    assert res.returncode == 4 and "data/demo_1 has no steps" in one_line_error(res)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] in ([], [".out.zarr.lock"])
