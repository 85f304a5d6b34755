"""Installation layout: the folders datasets/ and stages/ install as cdred_pipeline.* only, both for a
regular (wheel) install and the editable install the tests run against."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import importlib.util, cdred_pipeline.datasets as d, cdred_pipeline.stages as s, cli;"
         "print(d.__file__); print(s.__file__); print(importlib.util.find_spec('datasets'));"
         "print(importlib.util.find_spec('stages'))")


def _probe(cwd: Path, env: dict | None = None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return out.stdout.strip().splitlines()


def test_editable_install_maps_folders_under_cdred_pipeline(tmp_path):
    ds, st, top_ds, top_st = _probe(tmp_path)  # cwd outside the repo: only the installed mapping counts
    assert Path(ds) == ROOT / "datasets" / "__init__.py"
    assert Path(st) == ROOT / "stages" / "__init__.py"
    assert top_ds == "None" or "site-packages" in top_ds  # never this project (HF datasets may be installed)
    assert top_st == "None"


@pytest.mark.slow
def test_wheel_install_has_no_top_level_datasets_or_stages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("cdred-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"cdred_pipeline", "cli.py"}, tops
    assert "cdred_pipeline/datasets/__init__.py" in names and "cdred_pipeline/stages/__init__.py" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    # run with -I-like isolation from the editable finder: put the extracted wheel first on the path
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(target)!r});" + PROBE],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120, check=True)
    ds, st, top_ds, top_st = out.stdout.strip().splitlines()
    assert Path(ds) == target / "cdred_pipeline" / "datasets" / "__init__.py"
    assert top_ds == "None" or "site-packages" in top_ds
    assert top_st == "None"
