"""`cdred package ...` through the installed console script in real subprocesses: output, exit codes,
one-line errors for bad input, and no partial outputs left behind."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CDRED, cli_env

from cdred_pipeline.datasets.synthetic import SYNTHETIC_TASK, write_random_dataset


def cdred(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``cdred ARGS...`` (the console script next to this interpreter) run in ``cwd``, output captured."""
    return subprocess.run([str(CDRED), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=cli_env())


def one_line_error(proc: subprocess.CompletedProcess, code: int, *parts: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for p in parts:
        assert p in lines[0], (p, lines[0])
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    path, _ = write_random_dataset(tmp_path_factory.mktemp("cli") / "demos.zarr", [10, 20, 30], obs_dim=4,
                                   action_dim=2, state_dim=3, seed=0)
    return path


def test_inspect_text_and_json(ds, tmp_path):
    p = cdred("package", "inspect", str(ds), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for text in (SYNTHETIC_TASK, "episodes        3   steps 60", "obs 4   action 2   physics_state 3",
                 "return", "±", "success", "size on disk", "ratio", "data/obs", "meta/episode_ends"):
        assert text in out, text
    j = json.loads(cdred("package", "inspect", str(ds), "--json", cwd=tmp_path).stdout)
    assert j["episodes"] == 3 and j["steps"] == 60 and j["compression_ratio"] > 0
    assert set(j["return"]) == {"mean", "std"} and j["size_on_disk"] > 0
    assert "data/physics_state" in j["arrays"]


def test_inspect_shows_no_success_rate_for_dmcontrol(tmp_path):
    """DMControl has no success flag: the stored all-False flags are not reported as a success rate of 0."""
    path, _ = write_random_dataset(tmp_path / "dmc.zarr", [20, 20], obs_dim=5, action_dim=1, state_dim=4,
                                   task="dmc:cartpole-balance")
    out = cdred("package", "inspect", str(path), cwd=tmp_path).stdout
    assert next(ln for ln in out.splitlines() if ln.strip().startswith("success")).split() == ["success", "-"]
    j = json.loads(cdred("package", "inspect", str(path), "--json", cwd=tmp_path).stdout)
    assert j["success"] == {"mean": None, "std": None} and j["return"]["mean"] is not None


def test_validate_ok_and_problems(ds, tmp_path):
    p = cdred("package", "validate", str(ds), cwd=tmp_path)
    assert p.returncode == 0 and "valid" in p.stdout
    bad = tmp_path / "bad.zarr"
    shutil.copytree(ds, bad)
    shutil.rmtree(bad / "data/obs/c")
    import zarr
    g = zarr.open_group(str(bad), mode="r+", use_consolidated=False)
    g["data/action"][3] = 5.0
    p = cdred("package", "validate", str(bad), cwd=tmp_path)
    assert p.returncode == 4
    assert "data/obs: 1 chunk file(s) missing" in p.stdout and "data/action: values outside [-1, 1]" in p.stdout
    one_line_error(p, 4, "bad.zarr", "2 problem(s) found")
    one_line_error(cdred("package", "inspect", str(bad), cwd=tmp_path), 4, "bad.zarr: data/obs", "chunk file(s) missing")


def test_inspect_errors_are_one_line(tmp_path):
    one_line_error(cdred("package", "inspect", str(tmp_path / "nope.zarr"), cwd=tmp_path), 4,
                   "nope.zarr", "no such file or directory")
    (tmp_path / "file.txt").write_text("x")
    one_line_error(cdred("package", "inspect", str(tmp_path / "file.txt"), cwd=tmp_path), 4, "not a zarr store")


def test_export_import_merge_round_trip(ds, tmp_path):
    for fmt, out in (("hdf5", "d.hdf5"), ("parquet", "d.parquet")):
        p = cdred("package", "export", str(ds), "--format", fmt, "-o", out, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        p = cdred("package", "import", out, "-o", f"{fmt}.zarr", cwd=tmp_path)
        assert p.returncode == 0 and "3 episodes, 60 steps" in p.stdout, p.stderr
    one_line_error(cdred("package", "export", str(ds), "--format", "hdf5", "-o", "d.hdf5", cwd=tmp_path), 4,
                   "already exists", "--force")
    p = cdred("package", "merge", str(ds), "hdf5.zarr", "-o", "m.zarr", cwd=tmp_path)
    assert p.returncode == 0 and "6 episodes, 120 steps from 2 datasets" in p.stdout, p.stderr
    other, _ = write_random_dataset(tmp_path / "other.zarr", [5], obs_dim=4, action_dim=2, state_dim=3,
                                    task="synthetic:other-walk")
    one_line_error(cdred("package", "merge", str(ds), str(other), "-o", "m2.zarr", cwd=tmp_path), 4,
                   "attrs.env.task", "differs")
    assert not (tmp_path / "m2.zarr").exists()


def test_import_error_paths(tmp_path):
    eps = [(np.zeros((3, 4)), np.zeros((3, 2)), np.zeros(3), np.zeros((3, 4)))]
    (tmp_path / "d.pkl").write_bytes(pickle.dumps(eps))
    one_line_error(cdred("package", "import", "d.pkl", "-o", "o.zarr", "--task", "dmc:point_mass-easy", cwd=tmp_path), 2,
                   "d.pkl", "arbitrary code", "--trust-pickle")
    p = cdred("package", "import", "d.pkl", "-o", "o.zarr", "--task", "dmc:point_mass-easy", "--trust-pickle", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps([(np.zeros((3, 4)), np.zeros((2, 2)), np.zeros(3), np.zeros((3, 4)))]))
    one_line_error(cdred("package", "import", "bad.pkl", "-o", "b.zarr", "--task", "dmc:point_mass-easy", "--trust-pickle",
                         cwd=tmp_path), 4, "bad.pkl: episode 0: shapes")
    one_line_error(cdred("package", "import", "d.pkl", "-o", "x.zarr", "--task", "dmc:chetah-run", "--trust-pickle",
                         cwd=tmp_path), 2, "closest", "dmc:cheetah-run")
    import h5py
    with h5py.File(tmp_path / "r.hdf5", "w") as f:
        f.create_dataset("data/demo_0/obs/x", data=np.zeros((3, 2)))
        f.create_dataset("data/demo_0/rewards", data=np.zeros(3))
    one_line_error(cdred("package", "import", "r.hdf5", "-o", "r.zarr", "--task", "mw:box-close", cwd=tmp_path), 4,
                   "r.hdf5: data/demo_0/actions: missing key")
    one_line_error(cdred("package", "import", "missing.hdf5", "-o", "r.zarr", cwd=tmp_path), 4, "no such file")
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert left == ["bad.pkl", "d.pkl", "o.zarr", "r.hdf5"]  # no partial outputs


def test_export_valid_fraction_and_task_dims(ds, tmp_path):
    import h5py

    p = cdred("package", "export", str(ds), "--format", "hdf5", "-o", "d.hdf5", "--valid-fraction", "0.5", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    with h5py.File(tmp_path / "d.hdf5", "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["type"] == 2
        assert [n.decode() for n in f["mask/train"][:]] == ["demo_0"]
        assert [n.decode() for n in f["mask/valid"][:]] == ["demo_1", "demo_2"]  # the last ceil(0.5 * 3) demos
    one_line_error(cdred("package", "export", str(ds), "--format", "hdf5", "-o", "e.hdf5", "--valid-fraction", "1",
                         cwd=tmp_path), 2, "--valid-fraction", "0<=x<1")
    one_line_error(cdred("package", "export", str(ds), "--format", "parquet", "-o", "e_pq", "--valid-fraction", "0.2",
                         cwd=tmp_path), 2, "--valid-fraction", "only --format hdf5")
    p = cdred("package", "import", "d.hdf5", "-o", "back.zarr", cwd=tmp_path)
    assert p.returncode == 0 and "3 episodes, 60 steps" in p.stdout, p.stderr
    one_line_error(cdred("package", "import", "d.hdf5", "-o", "x.zarr", "--task", "mw:reach", cwd=tmp_path), 2,
                   "d.hdf5", "synthetic:random-walk", "mw:reach")
    with h5py.File(tmp_path / "d.hdf5", "r+") as f:  # a foreign file: no cdred attrs, dims checked against --task
        del f["data"].attrs["cdred_attrs"]
        f["data"].attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
    one_line_error(cdred("package", "import", "d.hdf5", "-o", "y.zarr", "--task", "mw:reach", cwd=tmp_path), 2,
                   "--task mw:reach", "obs_dim 4, action_dim 2 but mw:reach has obs_dim 39, action_dim 4")
    assert not (tmp_path / "e.hdf5").exists() and not (tmp_path / "e_pq").exists()
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
