"""`cdred package export` and `merge` draw a bar of episodes on stderr, never on stdout (real subprocesses);
``progress=False`` draws none."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli_helpers import CDRED, cli_env

from cdred_pipeline.datasets.synthetic import write_random_dataset
from cdred_pipeline.stages import package


def _cdred(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``cdred ARGS...`` (no -q: bars on) run in ``cwd``, output captured."""
    return subprocess.run([str(CDRED), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=cli_env())


def test_export_and_merge_bars_go_to_stderr_not_stdout(tmp_path):
    write_random_dataset(tmp_path / "a.zarr", [10, 20, 30], obs_dim=4, action_dim=2, state_dim=3, seed=0)
    write_random_dataset(tmp_path / "b.zarr", [5, 5, 5], obs_dim=4, action_dim=2, state_dim=3, seed=1)
    p = _cdred("package", "export", "a.zarr", "--format", "parquet", "-o", "out_pq", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "export parquet:" in p.stderr and "3/3" in p.stderr and "ep/s" in p.stderr, p.stderr
    assert p.stdout == f"wrote {Path('out_pq')}\n", p.stdout  # the result alone
    p = _cdred("package", "merge", "a.zarr", "b.zarr", "-o", "m.zarr", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "merge:" in p.stderr and "/6" in p.stderr, p.stderr
    assert p.stdout == "m.zarr: 6 episodes, 75 steps from 2 datasets\n", p.stdout
    p = _cdred("package", "inspect", "m.zarr", "--json", cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["episodes"] == 6, p.stdout


def test_progress_false_draws_nothing(tmp_path, capfd):
    src, _ = write_random_dataset(tmp_path / "a.zarr", [4, 6], obs_dim=4, action_dim=2, state_dim=3, seed=0)
    capfd.readouterr()
    package.export(src, "hdf5", tmp_path / "d.hdf5", progress=False)
    package.merge([src, src], tmp_path / "m.zarr", progress=False)
    s = package.import_(tmp_path / "d.hdf5", tmp_path / "back.zarr", progress=False)
    assert s["episodes"] == 2 and package.inspect(tmp_path / "m.zarr")["episodes"] == 4
    out, err = capfd.readouterr()
    assert "ep/s" not in err and "export hdf5" not in err and "merge:" not in err and "import hdf5" not in err, err
    package.export(src, "hdf5", tmp_path / "e.hdf5")  # the default draws the bar
    assert "export hdf5:" in capfd.readouterr().err
