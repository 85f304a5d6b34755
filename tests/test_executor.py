"""The executor interface (docs/design.md §7) on real processes, a real local Ray instance,
real MuJoCo and real zarr stores.

Covers: local and process executors give the same results in unit order; a unit that fails once is
retried (local, process, Ray); a lost worker process is retried; a unit that keeps failing is a
one-line ExecutorError after the others finished (and were handed to ``on_result``); bad input
(CdredError) is never retried; ``--ray-address`` without Ray is a one-line MissingDependencyError;
``--gpus-per-run`` makes Ray place units on its GPU (CUDA_VISIBLE_DEVICES) and no more at once than
fit, and is a one-line error without Ray or without a GPU in the cluster; evaluate over (p, seed) blocks gives the same report, rows, key and video bytes with the local,
process and Ray executors; ``--num-envs`` gives the single-env per-episode results; collect-experts
over two seeds through the CLI on the test's Ray instance writes the same artifacts (keys, every
data/ and meta/ array, attrs) as the local executor.

The Ray tests start one local instance (``ray.init(num_cpus=2, num_gpus=1)``: Ray schedules the GPU it is
told of, whether or not the machine has one) and are skipped when Ray is not
installed (``pip install 'cdred[ray]'``; ``make test`` installs it).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned workers inherit sys.path
import executor_units as U  # noqa: E402
from cli_helpers import CDRED  # noqa: E402
from store_helpers import assert_same_zarr  # noqa: E402

from cdred_pipeline.agent import AgentConfig, TDMPC2Agent  # noqa: E402
from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.errors import MissingDependencyError, UsageError  # noqa: E402
from cdred_pipeline.executor import ExecutorError, check_gpus, executor_for, make_executor  # noqa: E402
from cdred_pipeline.stages import collect_experts as ce  # noqa: E402
from cdred_pipeline.stages import evaluate as ev  # noqa: E402

torch.set_num_threads(1)
try:
    importlib.import_module("ray")
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'cdred[ray]'; `make test` installs it)")
TASK, LENGTH = "dmc:cartpole-balance", 30


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance with 2 CPUs for this module; the test units travel by value."""
    if not HAVE_RAY:
        pytest.skip("Ray is not installed (pip install 'cdred[ray]'; `make test` installs it)")
    import ray

    ctx = ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # one GPU for Ray to schedule
    ray.cloudpickle.register_pickle_by_value(U)
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def agent_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("exec_agent") / "agent.pt"
    agent = TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=LENGTH, seed=0), (5,), 1, device="cpu")
    agent.save(path, extra={"task": TASK, "obs": "state", "episode_length": LENGTH})
    return path


def _executors(kinds: list[str]):
    return [make_executor(k, workers=2) for k in kinds]


# ------------------------------------------------------------------------------------- generic
def test_local_and_process_give_the_same_results_in_unit_order():
    units = list(range(7))
    seen: dict[str, list[int]] = {}
    outs = {}
    for ex in _executors(["local", "process"]):
        with ex:
            got: list[int] = []
            outs[ex.kind] = ex.map(U.square, units, progress=False, on_result=lambda i, r: got.append(i))
            seen[ex.kind] = got
    assert outs["local"] == outs["process"] == [u * u for u in units]
    assert seen["local"] == units and sorted(seen["process"]) == units  # every unit handed over once


@pytest.mark.parametrize("kind", ["local", "process"])
def test_unit_that_fails_once_is_retried(kind, tmp_path):
    units = [(str(tmp_path / f"m{i}"), i) for i in range(3)]
    with make_executor(kind, workers=2) as ex:
        assert ex.map(U.fail_once, units, retries=1, progress=False) == [0, 1, 2]
    assert [U.attempts(m) for m, _ in units] == [2, 2, 2]


def test_lost_worker_process_is_retried_and_finished_units_are_kept(tmp_path):
    units = [(str(tmp_path / f"d{i}"), i) for i in range(3)]
    with make_executor("process", workers=2) as ex:
        assert ex.map(U.die_once, units, progress=False) == [0, 1, 2]


def test_worker_that_always_dies_fails_its_unit_only(tmp_path):
    done: list[int] = []
    with make_executor("process", workers=2) as ex, pytest.raises(ExecutorError) as info:
        ex.map(U.always_dies, list(range(4)), retries=0, progress=False, on_result=lambda i, r: done.append(i))
    msg = str(info.value)  # units in flight with it when the pool broke reran alone and were not charged
    assert "work unit 1 failed after 1 attempts" in msg and "more units failed" not in msg, msg
    assert sorted(done) == [0, 2, 3]


@pytest.mark.parametrize("kind", ["local", "process"])
def test_unit_failing_every_time_is_a_one_line_error_after_the_others(kind, tmp_path):
    units = [(str(tmp_path / f"a{i}"), i) for i in range(3)]
    done: list[int] = []
    with make_executor(kind, workers=2) as ex, pytest.raises(ExecutorError) as info:
        ex.map(U.always_fails, units, retries=2, progress=False, on_result=lambda i, r: done.append(i))
    msg = str(info.value)
    assert "\n" not in msg and "work unit 1 failed after 3 attempts" in msg and "unit 1 is broken" in msg
    assert sorted(done) == [0, 2] and U.attempts(units[1][0]) == 3


@pytest.mark.parametrize("kind", ["local", "process"])
def test_bad_input_is_not_retried(kind, tmp_path):
    units = [(str(tmp_path / "b0"), 0)]
    with make_executor(kind, workers=2) as ex, pytest.raises(UsageError, match="bad input"):
        ex.map(U.bad_input, units, progress=False)
    assert U.attempts(units[0][0]) == 1


def test_bad_executor_options_are_usage_errors():
    with pytest.raises(UsageError, match="choose one of local, process, ray"):
        make_executor("threads")
    with pytest.raises(UsageError, match="--workers"):
        make_executor("process", workers=0)
    assert executor_for(None, None).kind == "local" and executor_for(1, None).kind == "local"
    assert executor_for(2, None).kind == "process"


def test_ray_address_without_ray_is_a_one_line_missing_dependency_error(agent_path, tmp_path):
    # a real CLI process in which `import ray` fails, as on a machine without the extra
    code = "import sys; sys.modules['ray'] = None; from cli import main; sys.argv[0] = 'cdred'; main()"
    res = subprocess.run([sys.executable, "-c", code, "--workdir", str(tmp_path), "-q", "evaluate", str(agent_path),
                          "--episodes", "1", "--ray-address", "local"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MUJOCO_GL": "egl"})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == MissingDependencyError.exit_code, res.stderr
    assert len(lines) == 1 and "pip install 'cdred[ray]'" in lines[0] and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------- evaluate
def _eval(agent_path: Path, root: Path, executor=None, **kw) -> tuple[object, dict]:
    cfg = ev.EvalConfig(**{"tremble": (0.0, 0.3), "seeds": (0, 1), "episodes": 2, "device": "cpu", **kw})
    art = ev.run(cfg, str(agent_path), ArtifactStore(root), progress=False, executor=executor)
    return art, json.loads((art.path / "report.json").read_text())


def _videos(art) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((art.path / "videos").glob("*.mp4"))}


def test_evaluate_blocks_give_the_same_report_with_every_executor(agent_path, tmp_path, request):
    kinds = ["local", "process"] + (["ray"] if HAVE_RAY else [])
    results = {}
    for kind in kinds:
        if kind == "ray":
            request.getfixturevalue("ray_address")  # the module's local Ray instance
        with make_executor(kind, workers=2) as ex:
            results[kind] = _eval(agent_path, tmp_path / kind, ex, videos=3, video_size=64)
    ref_art, ref = results["local"]
    assert len(ref["rows"]) == 8 and [(r["p"], r["seed"], r["episode"]) for r in ref["rows"]] == sorted(
        (p, s, i) for p in (0.0, 0.3) for s in (0, 1) for i in range(2))
    assert sorted(_videos(ref_art)) == ["p0_seed0_ep0.mp4", "p0_seed0_ep1.mp4", "p0_seed1_ep0.mp4"]
    for kind, (art, rep) in results.items():
        assert art.key == ref_art.key, kind
        assert rep["rows"] == ref["rows"] and rep["aggregates"] == ref["aggregates"], kind
        assert _videos(art) == _videos(ref_art), kind
        assert (art.path / "episodes.csv").read_bytes() == (ref_art.path / "episodes.csv").read_bytes(), kind
        assert art.manifest["execution"]["executor"] == kind


def test_num_envs_gives_the_single_env_episodes(agent_path, tmp_path):
    one_art, one = _eval(agent_path, tmp_path, tremble=(0.3,), seeds=(0,), episodes=5)
    k_art, many = _eval(agent_path, tmp_path, tremble=(0.3,), seeds=(0,), episodes=5, num_envs=3)
    assert k_art.key != one_art.key and many["config"]["num_envs"] == 3 and "num_envs" not in one["config"]
    assert len(many["rows"]) == 5
    for a, b in zip(one["rows"], many["rows"]):
        # same episode, same reset seed, same tremble draws; the batched matmul rounds differently
        # from the one-row one (~1e-7 in the action), so returns agree to float precision
        assert {k: a[k] for k in a if k != "return"} == {k: b[k] for k in b if k != "return"}
        assert b["return"] == pytest.approx(a["return"], rel=1e-5, abs=1e-5)


def test_num_envs_with_mppi_runs_one_plan_per_env(tmp_path):
    path = tmp_path / "mppi.pt"
    cfg = AgentConfig.preset("tiny", plan=True, episode_length=10, seed=0, num_samples=32, iterations=2)
    TDMPC2Agent(cfg, (5,), 1, device="cpu").save(path, extra={"task": TASK, "obs": "state", "episode_length": 10})
    _, rep = _eval(path, tmp_path / "wd", tremble=(0.0,), seeds=(0,), episodes=3, num_envs=2)
    assert [r["length"] for r in rep["rows"]] == [10, 10, 10] and rep["config"]["num_envs"] == 2


# ------------------------------------------------------------------------------------- Ray
@needs_ray
def test_ray_retries_a_unit_that_fails_once(ray_address, tmp_path):
    units = [(str(tmp_path / f"r{i}"), i) for i in range(3)]
    with make_executor("ray", ray_address=ray_address) as ex:
        assert ex.map(U.fail_once, units, retries=1, progress=False) == [0, 1, 2]
        assert ex.map(U.die_once, [(str(tmp_path / f"k{i}"), i) for i in range(2)], progress=False) == [0, 1]
    assert [U.attempts(m) for m, _ in units] == [2, 2, 2]
    import ray

    assert ray.is_initialized()  # an instance the executor did not start is left running


@needs_ray
def test_gpus_per_run_places_units_on_the_gpu_and_no_more_at_once_than_fit(ray_address):
    def slots(gpus: float | None) -> list[tuple[str | None, float, float]]:
        with make_executor("ray", ray_address=ray_address, gpus_per_unit=gpus) as ex:
            return ex.map(U.gpu_slot, [1.0, 1.0], progress=False)

    def overlap(res: list[tuple[str | None, float, float]]) -> float:
        (_, s0, e0), (_, s1, e1) = res
        return min(e0, e1) - max(s0, s1)

    whole = slots(1.0)  # one unit per GPU: the second waits for the first
    assert [v for v, _, _ in whole] == ["0", "0"] and overlap(whole) < 0
    halves = slots(0.5)  # two share it (and the 2 CPUs): they run together
    assert [v for v, _, _ in halves] == ["0", "0"] and overlap(halves) > 0.5


def test_gpus_per_run_needs_ray_and_a_gpu_in_the_cluster():
    with pytest.raises(UsageError, match="through Ray: add --ray-address"):
        executor_for(2, None, gpus_per_run=0.5)
    with pytest.raises(UsageError, match="through Ray"):
        executor_for(None, None, gpus_per_run=0.5)
    with pytest.raises(UsageError, match=r"has 0 GPUs; start its nodes with GPUs"):
        check_gpus(0.25, 0.0, "auto")
    with pytest.raises(UsageError, match=r"in \(0, 1\], got 2"):
        check_gpus(2.0)
    check_gpus(0.125, 1.0, "auto")  # eight runs share one GPU


@needs_ray
def test_collect_experts_over_seeds_on_ray_equals_the_local_executor(ray_address, tmp_path):
    cfg = ce.CollectConfig(task=TASK, preset="tiny", train_env_steps=200, episodes=2, random_episodes=1,
                           episode_length=25, plan=False, device="cpu")  # the CLI's defaults otherwise
    local = ce.run_seeds(cfg, [0, 1], ArtifactStore(tmp_path / "local"), progress=False)
    res = subprocess.run(
        [str(CDRED), "--workdir", str(tmp_path / "ray"), "-q", "collect-experts", TASK, "--preset", "tiny",
         "--train-steps", "200", "--episodes", "2", "--random-episodes", "1", "--episode-length", "25",
         "--no-plan", "--device", "cpu", "--seeds", "0,1", "--ray-address", ray_address],
        capture_output=True, text=True, timeout=600, env={**os.environ, "MUJOCO_GL": "egl"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["seed 0", "seed 1"]
    for seed, art in zip((0, 1), local):
        assert f"key: {art.key}" in lines[seed]
        other = tmp_path / "ray" / ce.DEMO_STAGE / art.key
        # bitwise equal arrays; attrs equal except the checkpoint's sha256 (the trainer stores its
        # wall time in agent.pt, so two runs of the same expert never hash alike)
        arrays = assert_same_zarr(art.path / ce.DATASET_NAME, other / ce.DATASET_NAME, ignore_sha=True)
        assert any(k.startswith("meta/") for k in arrays)
        man_a = json.loads((art.path / "manifest.json").read_text())
        man_b = json.loads((other / "manifest.json").read_text())
        assert man_a["inputs"] == man_b["inputs"] and man_a["scores"] == man_b["scores"]
        # the Ray workers' artifacts record the command for `cdred rerun`; a library call records none
        assert man_b["replay"]["command"] == "collect-experts" and "replay" not in man_a
        ck_a, ck_b = (torch.load(d / ce.EXPERT_STAGE / man_a["inputs"]["expert"] / "agent.pt", weights_only=True)
                      for d in (tmp_path / "local", tmp_path / "ray"))
        for ck in (ck_a, ck_b):
            ck["extra"]["trainer"].pop("elapsed_s")
        assert _same(ck_a, ck_b)


def _same(x, y) -> bool:
    """Deep equality of checkpoint dicts (tensors bitwise)."""
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y
