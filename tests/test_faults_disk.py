"""A full disk: a stage that runs out of space stops with one line saying where and how much is free,
leaves nothing half-written in sight, and the same command resumes once there is room.

The disk is a small tmpfs, which needs root (CI runs as root); elsewhere the tests skip with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cdred_pipeline.artifacts import ArtifactStore


def _mount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True,
                   capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KB tmpfs at a fresh folder; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    try:
        _mount(where, "600k")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _cdred(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "-m", "cli", "--workdir", str(workdir), "-q", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def _visible(root: Path) -> list[str]:
    """Paths under ``root`` a user sees as results: nothing hidden (partials, temp files, locks)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts))


def test_collect_on_a_full_disk_says_so_in_one_line_and_resumes_after_space_is_freed(small_disk):
    workdir = small_disk / "wd"
    args = ("collect-experts", "mw:reach", "--policy", "scripted", "--episodes", "40", "--random-episodes", "2")
    full = _cdred(workdir, *args)
    assert full.returncode == 6, full.stderr
    assert full.stderr.count("\n") == 1 and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.startswith("error: no space left on the device of ") and " free there" in full.stderr
    assert "rerun the same command" in full.stderr
    assert [p for p in _visible(workdir) if p.startswith("demos/")] == []  # the demos only in their hidden partial
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = _cdred(workdir, *args)
    assert again.returncode == 0, again.stderr
    [demos] = [a for a in ArtifactStore(workdir).list() if a.stage == "demos"]
    assert demos.complete and demos.manifest["resumed"] >= 1
    assert ArtifactStore(workdir).problems(demos) == []


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """A real scripted mw:reach demos store (20 episodes, about 1 MB)."""
    workdir = tmp_path_factory.mktemp("src") / "wd"
    out = _cdred(workdir, "collect-experts", "mw:reach", "--policy", "scripted", "--episodes", "20",
                 "--random-episodes", "2")
    assert out.returncode == 0, out.stderr
    [store] = workdir.glob("demos/*/demos.zarr")
    return store


@pytest.mark.parametrize("fmt", ["hdf5", "parquet", "lerobot", "minari"])
def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(small_disk, demos, fmt):
    if fmt == "minari":
        pytest.importorskip("minari")
    out = small_disk / f"out.{fmt}"
    res = _cdred(small_disk / "wd", "package", "export", str(demos), "--format", fmt, "-o", str(out))
    assert res.returncode == 6, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(small_disk) in res.stderr and "free there" in res.stderr and "elsewhere" in res.stderr
    left = [p for p in small_disk.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == [], left  # no output, no temporary file
