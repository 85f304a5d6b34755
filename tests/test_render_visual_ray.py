"""render-visual's episode ranges as executor units on a real local Ray instance (docs/design.md §7),
with real MuJoCo rendering and real zarr stores.

Covers: ``cdred render-visual DATASET --ray-address ADDR`` through the CLI gives the artifact of the
run without an executor given (same cache key, same files, every zarr array and attr bitwise, same contact sheet);
a Ray worker that dies on one range is retried, and when it keeps dying the ranges that finished are
recorded (merged, or kept as parts) so the rerun renders only the lost range and ends bitwise equal.
Without Ray, ``--ray-address`` is the executor's one-line MissingDependencyError (exit 3).

The datasets and comparison helpers are those of tests/test_render_visual.py. The module
starts one local Ray instance (``ray.init(num_cpus=2)``, as tests/test_executor.py does); its tests
are skipped when Ray is not installed (``pip install 'cdred[ray]'``; ``make test`` installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.errors import MissingDependencyError  # noqa: E402
from cdred_pipeline.executor import ExecutorError, make_executor  # noqa: E402
from cdred_pipeline.stages import render_visual as rv  # noqa: E402
from test_render_visual import DMC, assert_same_store, cdred_cli, make_datasets  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_datasets(tmp_path_factory.mktemp("render-ray"))


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance with 2 CPUs for this module; this module's unit wrappers travel by value."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cdred[ray]'; `make test` installs it)")
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(data):
    """The run without an executor given (``workers=1``: the local executor, this process): the reference."""
    return rv.run(rv.RenderConfig(chunk_episodes=1), data[DMC], ArtifactStore(data["root"] / "ray-ref"), progress=False)


def test_ray_address_without_ray_is_a_one_line_missing_dependency_error(data):
    # a real CLI process in which `import ray` fails, as on a machine without the extra
    code = "import sys; sys.modules['ray'] = None; from cli import main; sys.argv[0] = 'cdred'; main()"
    res = subprocess.run([sys.executable, "-c", code, "--workdir", str(data["root"] / "no-ray"), "-q", "render-visual",
                          str(data[DMC]), "--ray-address", "local"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MUJOCO_GL": "egl"})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == MissingDependencyError.exit_code, res.stderr
    assert len(lines) == 1 and "pip install 'cdred[ray]'" in lines[0] and "Traceback" not in res.stderr
    assert not (data["root"] / "no-ray" / rv.STAGE).exists()  # nothing started, nothing written


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")


def test_an_explicit_local_executor_equals_the_default_run(data, local_run):
    # the caller's own executor (the caller closes it) without Ray: runs everywhere
    with make_executor("local") as ex:
        art = rv.run(rv.RenderConfig(), data[DMC], ArtifactStore(data["root"] / "units-local"), progress=False,
                     executor=ex)
    assert art.key == local_run.key and art.manifest["render"]["executor"] == "local"
    assert _files(art.path) == _files(local_run.path)
    assert_same_store(art.path / rv.DATASET_NAME, local_run.path / rv.DATASET_NAME)


def test_cli_on_ray_equals_the_local_run(data, local_run, ray_address):
    root = data["root"] / "ray-cli"
    res = cdred_cli("--workdir", str(root), "-q", "render-visual", str(data[DMC]), "--chunk-episodes", "1",
               "--ray-address", ray_address, cwd=data["root"])
    assert res.returncode == 0, res.stderr
    art = ArtifactStore(root).get(rv.STAGE, local_run.key)  # the executor is not part of the cache key
    assert art is not None and art.complete and str(art.path / rv.DATASET_NAME) in res.stdout
    assert "workers 2 (ray)" in res.stdout
    assert [p.name for p in (root / rv.STAGE).iterdir()] == [local_run.key]
    assert _files(art.path) == _files(local_run.path)  # same artifact layout, no parts left behind
    assert_same_store(art.path / rv.DATASET_NAME, local_run.path / rv.DATASET_NAME)
    sheet = f"contact_sheet_{local_run.manifest['render']['camera']}.png"
    assert (art.path / sheet).read_bytes() == (local_run.path / sheet).read_bytes()
    m = art.manifest
    assert m["render"]["executor"] == "ray" and m["verification"]["status"] == "ok"
    assert sorted(m["units"]) == sorted(local_run.manifest["units"]) == [rv.unit_name(i, i + 1) for i in range(3)]
    assert all(u["pid"] != os.getpid() for u in m["unit_info"].values())  # rendered in Ray workers
    assert m["render_runs"][-1]["frames_rendered"] == m["render"]["frames"]


class _DiesOn:
    """A real Ray executor whose unit function kills its worker process on the range starting at
    ``start`` (fault injection: everything else is the stage's own unit)."""

    def __init__(self, ex, start: int, retries: int) -> None:
        self.ex, self.start, self.retries = ex, start, retries
        self.kind, self.workers = ex.kind, ex.workers

    def map(self, fn, units, **kw):
        assert fn is rv.render_unit
        return self.ex.map(_die_on_range, [(u, self.start) for u in units], **{**kw, "retries": self.retries})


def _die_on_range(arg):
    unit, start = arg
    if unit.job.start == start:
        os._exit(1)  # a lost worker: no exception, the process is gone
    return rv.render_unit(unit)


def test_lost_ray_worker_keeps_finished_ranges_and_the_rerun_renders_only_the_rest(data, local_run, ray_address):
    store = ArtifactStore(data["root"] / "ray-lost")
    cfg = rv.RenderConfig(chunk_episodes=1)
    with make_executor("ray", ray_address=ray_address) as ex:
        with pytest.raises(ExecutorError, match="work unit 1 failed after 2 attempts"):
            rv.run(cfg, data[DMC], store, progress=False, executor=_DiesOn(ex, start=1, retries=1))
        partial = next((store.root / rv.STAGE).glob(".*.partial"))
        first = json.loads((partial / "manifest.json").read_text())
        assert sorted(first["units"]) == [rv.unit_name(0, 1), rv.unit_name(2, 3)]  # the finished ranges
        assert [p.name for p in (partial / "parts").glob("*.zarr")] == [f"{rv.unit_name(2, 3)}.zarr"]  # not merged yet
        art = rv.run(cfg, data[DMC], store, progress=False, executor=ex)  # the rerun, on the same Ray
    assert art.key == local_run.key and art.manifest["resumed"] >= 1
    lengths = _lengths(data[DMC])
    assert art.manifest["render_runs"][-1]["frames_rendered"] == lengths[1] + 1  # only range 1 was rendered again
    assert_same_store(art.path / rv.DATASET_NAME, local_run.path / rv.DATASET_NAME)
    assert not (art.path / "parts").exists()


def _lengths(path: Path) -> list[int]:
    from cdred_pipeline.datasets import open_dataset

    return [int(x) for x in open_dataset(path).lengths]
