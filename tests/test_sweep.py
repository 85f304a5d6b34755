"""cdred sweep on real MuJoCo envs with the smoke preset (each run takes seconds).

A 2-task (dmc:cartpole-balance, mw:reach-wall) x 2-seed x 2-method (cdred, red) sweep through the real
``cdred`` console script writes results.csv, summary.md and one figure per task, making each task's
expert and demos once. The same sweep SIGKILLed after its first finished run and rerun resumes: the
finished runs' artifacts are untouched, results.csv equals the uninterrupted sweep's in every column
but the recorded wall time, and a further rerun writes the same bytes again. A run that fails for a
real reason (a pixel method on a state dataset, registered through ``METHODS``) is recorded while the
others finish, the summary lists it and the CLI exits 1. A method that differs only in its evaluation
(``cdred-mppi-eval``) takes the finished run from the cache and adds one evaluation acting with MPPI.
The IQM and its stratified-bootstrap CI match rliable's numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.artifacts import ArtifactStore  # noqa: E402
from cdred_pipeline.errors import UsageError  # noqa: E402
from cdred_pipeline.logging_sinks import TB_DIR  # noqa: E402
from cdred_pipeline.presets import PIPELINE_PRESETS  # noqa: E402
from cdred_pipeline.stages import sweep as sw  # noqa: E402
from cli_helpers import kill_cli_when, one_line_error, run_cli  # noqa: E402

torch.set_num_threads(1)
TASKS = ("dmc:cartpole-balance", "mw:reach-wall")
ARGS = ("--threads", "1", "sweep", "--tasks", ",".join(TASKS), "--seeds", "0,1", "--methods", "cdred,red",
        "--preset", "smoke", "--device", "cpu", "--log", "tensorboard")
PNG_HEADER = b"\x89PNG\r\n\x1a\n"
SMOKE = PIPELINE_PRESETS["smoke"]
CURVE_STEPS = [str(s) for s in range(SMOKE["eval_every"], SMOKE["imitate_env_steps"] + 1, SMOKE["eval_every"])]


def _complete(root: Path, stage: str) -> list[Path]:
    d = root / stage
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []


def _csv(root: Path, name: str = "sweep") -> list[dict[str, str]]:
    with open(root / "sweeps" / name / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The 2 x 2 x 2 smoke sweep, uninterrupted, through the console script."""
    root = tmp_path_factory.mktemp("sweep") / "wd"
    res = run_cli(root, *ARGS, timeout=600)
    return {"root": root, "res": res}


# ------------------------------------------------------------------------------ a whole sweep
def test_sweep_writes_results_csv(full):
    res, root = full["res"], full["root"]
    assert res.returncode == 0, res.stderr
    rows = _csv(root)
    assert tuple(rows[0]) == sw.CSV_COLUMNS
    assert len(rows) == 2 * 2 * 2 * (len(CURVE_STEPS) + 1)  # 8 runs x (the curve's points + the final row)
    for task in TASKS:
        for method in ("cdred", "red"):
            for seed in ("0", "1"):
                run = [r for r in rows if (r["task"], r["method"], r["seed"]) == (task, method, seed)]
                final_steps = str(SMOKE["imitate_env_steps"])
                assert [(r["point"], r["env_steps"]) for r in run] == [("curve", s) for s in CURVE_STEPS] + [
                    ("final", final_steps)]
                assert run[-1]["episodes"] == str(SMOKE["eval_episodes"])  # the preset's final evaluation episodes
                assert len({r["imitate_key"] for r in run}) == 1 and len({r["eval_key"] for r in run}) == 1
    for r in rows:
        for col in ("return", "normalized_score", "wall_time_s"):
            assert math.isfinite(float(r[col])), (col, r)
        assert float(r["wall_time_s"]) > 0
        if r["task"].startswith("mw:"):
            assert 0.0 <= float(r["success"]) <= 1.0
        else:  # DMControl has no success flag: an empty cell, not a success rate of 0
            assert r["success"] == "", r
    assert rows == sorted(rows, key=sw.sort_key)


def test_sweep_makes_each_expert_once_and_one_run_per_cell(full):
    root = full["root"]
    assert len(_complete(root, "experts")) == 2 and len(_complete(root, "demos")) == 2  # one per task
    assert len(_complete(root, "imitate")) == 8 and len(_complete(root, "eval")) == 8
    finals = [r for r in _csv(root) if r["point"] == "final"]
    assert {r["imitate_key"] for r in finals} == {p.name for p in _complete(root, "imitate")}
    for stage in ("experts", "demos", "imitate", "eval"):  # each records the sweep, for `cdred rerun`
        for folder in _complete(root, stage):
            replay = json.loads((folder / "manifest.json").read_text())["replay"]
            assert replay["command"] == "sweep" and replay["params"]["seeds"] in ("0,1", [0, 1]), replay
    trained = [f for f in _complete(root, "experts") if (f / "metrics.jsonl").is_file()]  # not the scripted one
    assert len(trained) == 1 and all(any((f / TB_DIR).glob("events.*")) for f in trained + _complete(root, "imitate"))


def test_sweep_summary_and_printed_table(full):
    res, root = full["res"], full["root"]
    folder = root / "sweeps" / "sweep"
    text = (folder / "summary.md").read_text()
    assert f"--tasks {','.join(TASKS)} --seeds 0,1 --methods cdred,red --preset smoke --num-demos {SMOKE['num_demos']} " \
           f"--env-steps {SMOKE['imitate_env_steps']} --eval-episodes {SMOKE['eval_episodes']} --expert-seed 0 " \
           f"--expert-env-steps {SMOKE['expert_env_steps']}" in text
    assert "8 runs, 8 finished" in text
    for task in TASKS:
        for method in ("cdred", "red"):
            assert f"| {task} | {method} | 2 | " in text, (task, method)
            assert any(ln.split()[:3] == [task, method, "2"] for ln in res.stdout.splitlines()), res.stdout
        assert f"| {task} | " in text.split("## Expert and random policy")[1].split("##")[0]
    experts = text.split("## Expert and random policy")[1].split("##")[0]
    dmc_row = next(ln for ln in experts.splitlines() if ln.startswith("| dmc:cartpole-balance |"))
    assert dmc_row.split("|")[3].strip() == "-" and dmc_row.split("|")[5].strip() == "-", dmc_row
    assert "| dmc:cartpole-balance | cdred | 2 | n/a | " in text
    for method in ("cdred", "red"):
        assert f"- IQM normalised score of {method}: " in text
        assert f"- IQM success (Meta-World) of {method}: " in text
    assert text.rstrip().endswith("## Failed runs\n\nNone.")
    assert f"results: {folder / 'results.csv'}" in res.stdout and f"summary: {folder / 'summary.md'}" in res.stdout


def test_sweep_figures(full):
    figures = full["root"] / "sweeps" / "sweep" / "figures"
    assert sorted(p.name for p in figures.iterdir()) == ["dmc_cartpole-balance.png", "mw_reach-wall.png"]
    assert not (figures.parent / "tremble.csv").exists()  # no --eval-tremble: no table under noise
    for png in figures.iterdir():
        data = png.read_bytes()
        assert data[:8] == PNG_HEADER and len(data) > 5000


def test_eval_tremble_evaluates_every_run_at_each_p(full, tmp_path):
    """``--eval-tremble 0,0.3`` with ``cdred`` and ``cdred-tremble``: the cached cdred run is evaluated anew at
    both p, cdred-tremble trains at p = 0.1, and tremble.csv, the summary's table and the figure hold every
    (run, p); the p = 0 rows are results.csv's final rows."""
    root = tmp_path / "wd"
    shutil.copytree(full["root"], root)
    res = run_cli(root, "--threads", "1", "sweep", "--tasks", TASKS[0], "--seeds", "0", "--methods",
                  "cdred,cdred-tremble", "--preset", "smoke", "--device", "cpu", "--eval-tremble", "0,0.3",
                  "--name", "noisy", timeout=600)
    assert res.returncode == 0, res.stderr
    folder = root / "sweeps" / "noisy"
    finals = {r["method"]: r for r in _csv(root, "noisy") if r["point"] == "final"}
    with open(folder / "tremble.csv", newline="") as fh:
        trows = list(csv.DictReader(fh))
    assert tuple(trows[0]) == sw.TREMBLE_COLUMNS
    assert [(r["method"], r["p"]) for r in trows] == [("cdred", "0.0"), ("cdred", "0.3"), ("cdred-tremble", "0.0"),
                                                      ("cdred-tremble", "0.3")]
    for r in trows:
        assert r["eval_key"] == finals[r["method"]]["eval_key"] and r["episodes"] == str(SMOKE["eval_episodes"])
        if r["p"] == "0.0":
            assert r["return"] == finals[r["method"]]["return"]
    report = json.loads((root / "eval" / finals["cdred"]["eval_key"] / "report.json").read_text())
    assert sum(e["trembles"] for e in report["rows"] if e["p"] == 0.3) > 0  # the noise is real
    assert all(e["trembles"] == 0 for e in report["rows"] if e["p"] == 0.0)
    first = {r["method"]: r for r in _csv(root) if r["point"] == "final" and r["task"] == TASKS[0] and r["seed"] == "0"}
    assert finals["cdred"]["imitate_key"] == first["cdred"]["imitate_key"]  # the cached run, evaluated anew
    assert finals["cdred"]["eval_key"] != first["cdred"]["eval_key"]
    trained = json.loads((root / "imitate" / finals["cdred-tremble"]["imitate_key"] / "manifest.json").read_text())
    assert trained["config"]["tremble"] == 0.1
    text = (folder / "summary.md").read_text()
    assert "--eval-tremble 0,0.3 " in text and "without tremble and at tremble p = 0.3;" in text
    table = text.split("## Under tremble noise")[1].split("##")[0]
    assert "| p = 0 | p = 0.3 |" in table and f"| {TASKS[0]} | cdred-tremble | 1 | " in table
    assert sorted(p.name for p in (folder / "figures").iterdir()) == ["dmc_cartpole-balance.png",
                                                                      "tremble_dmc_cartpole-balance.png"]


def test_pixel_sweep_renders_the_demos_once_and_learns_from_pixels(full, tmp_path):
    """``--obs rgb``: each task's demos (taken from the cache) are rendered once by render-visual, and every
    run imitates the rendered dataset from pixels."""
    root = tmp_path / "wd"
    shutil.copytree(full["root"], root)
    res = run_cli(root, "--threads", "1", "sweep", "--tasks", TASKS[0], "--seeds", "0,1", "--methods", "cdred",
                  "--preset", "smoke", "--device", "cpu", "--obs", "rgb", "--name", "pixels", timeout=600)
    assert res.returncode == 0, res.stderr
    assert len(_complete(root, "experts")) == 2 and len(_complete(root, "demos")) == 2  # nothing collected again
    (rendered,) = _complete(root, "render-visual")
    finals = [r for r in _csv(root, "pixels") if r["point"] == "final"]
    assert [r["seed"] for r in finals] == ["0", "1"]
    for r in finals:
        manifest = json.loads((root / "imitate" / r["imitate_key"] / "manifest.json").read_text())
        assert manifest["config"]["obs"] == "rgb" and manifest["inputs"]["dataset"] == rendered.name
    text = (root / "sweeps" / "pixels" / "summary.md").read_text()
    assert "--preset smoke --obs rgb --num-demos" in text and "per run from pixels" in text


def test_ablation_methods_reach_the_imitate_config():
    """Each ablation method changes its one ImitateConfig field and nothing else of the cdred run's."""
    cfg = sw.SweepConfig(tasks=(TASKS[0],), seeds=(0,), preset="cpu", num_demos=100, methods=(
        "cdred", "cdred-obs", "cdred-gexp", "cdred-demos5", "cdred-demos10", "cdred-tremble"))
    units = {u.method: u.imitate for u in sw.plan_units(cfg, {TASKS[0]: "demos.zarr"}, "wd", progress=False)}
    changed = {m: {k: v for k, v in dataclasses.asdict(icfg).items() if v != getattr(units["cdred"], k)}
               for m, icfg in units.items()}
    assert changed == {"cdred": {}, "cdred-obs": {"reward_space": "obs"}, "cdred-gexp": {"g": "exp"},
                       "cdred-demos5": {"num_demos": 5}, "cdred-demos10": {"num_demos": 10},
                       "cdred-tremble": {"tremble": 0.1}}


def test_report_only_writes_the_finished_runs_and_starts_none(full):
    """--report-only over a grid with one seed more than was run: the finished runs' outputs, byte for byte
    the sweep's CSV; the others listed as not made; no artifact folder (complete or partial) appears."""
    root = full["root"]
    before = {stage: sorted(p.name for p in (root / stage).iterdir()) for stage in ("imitate", "eval")}
    args = tuple("0,1,2" if a == "0,1" else a for a in ARGS) + ("--report-only", "--name", "report")
    res = run_cli(root, *args, timeout=600)
    assert res.returncode == 0, res.stderr
    assert {stage: sorted(p.name for p in (root / stage).iterdir()) for stage in before} == before
    assert (root / "sweeps" / "report" / "results.csv").read_bytes() == (root / "sweeps" / "sweep" / "results.csv").read_bytes()
    text = (root / "sweeps" / "report" / "summary.md").read_text()
    missing = [ln for ln in text.split("## Runs not made yet")[1].splitlines() if ln.startswith("- ")]
    assert sorted(missing) == sorted(f"- {t} {m} seed 2" for t in TASKS for m in ("cdred", "red"))
    assert "## Failed runs\n\nNone." in text and "4 of 12 runs are not made yet" in res.stdout


# ------------------------------------------------------------------------------ sweep-merge
def _split_by_method(full_root: Path, dest: Path) -> list[Path]:
    """The full sweep's results.csv cut into one sweep folder per method (a grid made in two parts)."""
    header, *lines = (full_root / "sweeps" / "sweep" / "results.csv").read_text().splitlines(keepends=True)
    parts = []
    for method in ("red", "cdred"):
        folder = dest / method
        folder.mkdir(parents=True)
        (folder / "results.csv").write_text(header + "".join(ln for ln in lines if ln.split(",")[1] == method))
        parts.append(folder)
    return parts


def _section(text: str, start: str, end: str) -> str:
    return text.split(start)[1].split(end)[0]


def test_sweep_merge_of_a_grid_made_in_parts_equals_the_whole_sweep(full, tmp_path):
    """Two sweeps of one method each merge into the whole sweep's CSV byte for byte and its results table and
    IQMs; a run found in two sources as the same artifacts is taken once."""
    whole = full["root"] / "sweeps" / "sweep"
    parts = _split_by_method(full["root"], tmp_path / "parts")
    res = run_cli(tmp_path / "unused", "sweep-merge", *map(str, parts), str(whole), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "merged"
    assert (out / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()
    text, ref = (out / "summary.md").read_text(), (whole / "summary.md").read_text()
    assert _section(text, "## Final evaluation", "## Across") == _section(ref, "## Final evaluation", "## Across")
    assert _section(text, "## Across", "IQM: the") == _section(ref, "## Across", "IQM: the")
    assert f"- `{parts[0] / 'results.csv'}`: 4 runs; tasks {', '.join(TASKS)}; methods red" in text
    assert "8 runs; env steps at the final evaluation: " in text
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["dmc_cartpole-balance.png", "mw_reach-wall.png"]
    assert all((out / "figures" / p).read_bytes()[:8] == PNG_HEADER for p in os.listdir(out / "figures"))
    assert any(ln.split()[:3] == [TASKS[0], "cdred", "2"] for ln in res.stdout.splitlines()), res.stdout


def test_sweep_merge_labels_keep_one_method_of_two_settings_apart(full, tmp_path):
    """The same sweep given twice as FOLDER:LABEL: every run twice, under ``method (label)``, one figure per
    task with both; the labelled merge's results table is the sweep's with the methods renamed."""
    whole = full["root"] / "sweeps" / "sweep"
    res = run_cli(tmp_path / "unused", "sweep-merge", f"{whole}:state", f"{whole / 'results.csv'}:pixels",
                  "--out", str(tmp_path / "m"))
    assert res.returncode == 0, res.stderr
    header, *lines = (whole / "results.csv").read_text().splitlines()
    merged = (tmp_path / "m" / "results.csv").read_text().splitlines()
    assert merged[0] == header and len(merged) == 1 + 2 * len(lines)
    for label in ("state", "pixels"):
        mine = sorted(ln.replace(",cdred (" + label + "),", ",cdred,").replace(",red (" + label + "),", ",red,")
                      for ln in merged[1:] if f" ({label})," in ln)
        assert mine == sorted(lines)
    text = (tmp_path / "m" / "summary.md").read_text()
    assert f"| {TASKS[0]} | cdred (state) |" in text and f"| {TASKS[0]} | cdred (pixels) |" in text
    assert len(list((tmp_path / "m" / "figures").iterdir())) == len(TASKS)


def test_sweep_merge_says_when_a_method_lacks_tasks(full, tmp_path):
    """A method run on one of two tasks: its IQM says over how many tasks it is taken."""
    whole = full["root"] / "sweeps" / "sweep" / "results.csv"
    header, *lines = whole.read_text().splitlines(keepends=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.csv").write_text(header + "".join(
        ln for ln in lines if ln.split(",")[1] == "cdred" or ln.startswith(TASKS[1] + ",")))
    res = run_cli(tmp_path / "unused", "sweep-merge", str(tmp_path / "a"), "--out", str(tmp_path / "m"))
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "m" / "summary.md").read_text()
    assert "- IQM normalised score of red: " in text and "(over 1 of 2 tasks)" in text.split("of red: ")[1].splitlines()[0]
    assert "(over" not in text.split("of cdred: ")[1].splitlines()[0]
    assert f"| {TASKS[0]} | red | 0 | n/a | n/a | n/a |" in text


def test_sweep_merge_bad_input_is_one_line(full, tmp_path):
    """A different run under the same (task, method, seed), a foreign CSV, a missing source and --out onto a
    source: exit 2, one line, and no output folder."""
    whole = full["root"] / "sweeps" / "sweep"
    other = tmp_path / "other"
    other.mkdir()
    header, first, *rest = (whole / "results.csv").read_text().splitlines(keepends=True)
    key = first.split(",")[10]
    (other / "results.csv").write_text(header + first.replace(key, "0" * len(key)) + "".join(rest))
    task, method, seed = first.split(",")[:3]
    (tmp_path / "foreign.csv").write_text("a,b\n1,2\n")
    cases = [((str(whole), str(other)), f"{task} {method} seed {seed} is a different run in"),
             ((str(tmp_path / "foreign.csv"),), "is not a cdred sweep results.csv: its columns are a,b"),
             ((str(tmp_path / "nowhere"),), "nowhere not found: give a sweep folder"),
             ((str(whole),), "is a source of the merge"),
             ((f"{whole}:",), "a label after ':' must be a non-empty name")]
    for sources, words in cases:
        out = whole if words == "is a source of the merge" else tmp_path / "out"
        res = run_cli(tmp_path / "unused", "sweep-merge", *sources, "--out", str(out))
        assert res.returncode == 2 and words in one_line_error(res), (sources, res.stderr)
        assert not (tmp_path / "out").exists()


def test_mppi_eval_method_evaluates_the_same_run_acting_with_mppi(full, tmp_path):
    """``cdred-mppi-eval`` takes the finished ``cdred`` run from the cache and adds only an evaluation of
    it acting with MPPI (the smoke preset trains and evaluates with the policy prior)."""
    root = tmp_path / "wd"
    shutil.copytree(full["root"], root)
    res = run_cli(root, "--threads", "1", "sweep", "--tasks", TASKS[1], "--seeds", "0", "--methods",
                  "cdred,cdred-mppi-eval", "--preset", "smoke", "--device", "cpu", "--name", "mppi", timeout=600)
    assert res.returncode == 0, res.stderr
    finals = {r["method"]: r for r in _csv(root, "mppi") if r["point"] == "final"}
    assert finals["cdred-mppi-eval"]["imitate_key"] == finals["cdred"]["imitate_key"]
    assert finals["cdred-mppi-eval"]["eval_key"] != finals["cdred"]["eval_key"]
    assert len(_complete(root, "imitate")) == 8 and len(_complete(root, "eval")) == 9  # one new evaluation
    plans = {m: json.loads((root / "eval" / r["eval_key"] / "report.json").read_text())["config"]["plan"]
             for m, r in finals.items()}
    assert plans == {"cdred": None, "cdred-mppi-eval": True}


# ------------------------------------------------------------------------------ killed and rerun
def test_killed_sweep_resumes_with_the_same_results(full, tmp_path):
    root = tmp_path / "wd"
    code = kill_cli_when(root, ARGS, lambda: bool(_complete(root, "imitate")), timeout=400,
                         what="the sweep finished no imitate run")
    assert code == -signal.SIGKILL
    done = {p.name: ((p / "manifest.json").read_bytes(), p.stat().st_mtime_ns) for p in _complete(root, "imitate")}
    assert 1 <= len(done) < 8 and not (root / "sweeps").exists()
    res = run_cli(root, *ARGS, timeout=600)
    assert res.returncode == 0, res.stderr
    for name, (manifest, mtime) in done.items():  # finished runs come from the cache, untouched
        folder = root / "imitate" / name
        assert (folder / "manifest.json").read_bytes() == manifest and folder.stat().st_mtime_ns == mtime
    resumed, uninterrupted = _csv(root), _csv(full["root"])
    drop = lambda rows: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]  # noqa: E731
    assert drop(resumed) == drop(uninterrupted)  # the same runs, the same numbers, whatever the kill
    first = (root / "sweeps" / "sweep" / "results.csv").read_bytes()
    again = run_cli(root, *ARGS, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (root / "sweeps" / "sweep" / "results.csv").read_bytes() == first  # rebuilt from the artifacts alone


# ------------------------------------------------------------------------------ a failing run
def test_failed_run_is_recorded_and_the_others_finish(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli

    # a pixel method: its imitate run finds no rendered pixels in the state demos (a DatasetError)
    monkeypatch.setitem(sw.METHODS, "red-pixels", sw.Method({"reward": "red", "obs": "rgb"}))
    cfg = sw.SweepConfig(tasks=(TASKS[0],), seeds=(0,), methods=("cdred", "red-pixels"), preset="smoke",
                         device="cpu", name="failing")
    store = ArtifactStore(tmp_path / "wd")
    result = sw.run(cfg, store, progress=False)
    assert result.failures == 1 and result.runs == 2
    (failed,) = result.failed
    assert (failed["task"], failed["method"], failed["seed"]) == (TASKS[0], "red-pixels", 0)
    assert failed["error"].startswith("DatasetError: ") and "no data/rgb" in failed["error"]
    rows = _csv(tmp_path / "wd", "failing")
    assert {r["method"] for r in rows} == {"cdred"} and [r["point"] for r in rows][-1] == "final"
    text = result.summary.read_text()
    assert f"- {TASKS[0]} red-pixels seed 0: DatasetError: " in text and "2 runs, 1 finished" in text
    assert f"| {TASKS[0]} | red-pixels | 0 | n/a | n/a | n/a |" in text
    res = CliRunner().invoke(cli.main, ["--workdir", str(tmp_path / "wd"), "-q", "--threads", "1", "sweep",
                                        "--tasks", TASKS[0], "--seeds", "0", "--methods", "cdred,red-pixels",
                                        "--preset", "smoke", "--device", "cpu", "--name", "failing"])
    assert res.exit_code == 1, res.output
    assert f"error: 1 of 2 runs failed; see {result.summary}" in res.output


# ------------------------------------------------------------------------------ bad input, statistics
@pytest.mark.parametrize("kw, words", [
    ({"methods": ("cdred", "gail")}, "--methods 'gail': choose from cdred, red, iqmpc, bc"),
    ({"preset": "huge"}, "--preset 'huge': choose one of smoke, quickstart, cpu, paper"),
    ({"tasks": ("dmc:nope",)}, "unknown task id 'dmc:nope'"),
    ({"seeds": (0, 0)}, "--seeds needs distinct integers"),
    ({"name": "../x"}, "--name '../x'"),
    ({"expert_env_steps": 0}, "--expert-env-steps must be >= 1, got 0"),
    ({"obs": "depth"}, "--obs 'depth': choose state or rgb"),
    ({"eval_tremble": (0.1, 0.2)}, "--eval-tremble needs distinct p including 0"),
    ({"eval_tremble": (0.0, 1.5)}, "tremble probability must be in .0, 1., got 1.5"),
])
def test_bad_config_is_a_usage_error(kw, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        sw.SweepConfig(**{"tasks": (TASKS[0],), **kw})


def test_expert_env_steps_changes_the_experts_training_and_nothing_else():
    from cdred_pipeline.stages.pipeline import collect_config, imitate_config

    base, short = (sw.SweepConfig(tasks=(TASKS[0],), preset="cpu", **kw) for kw in ({}, {"expert_env_steps": 30_000}))
    pb, ps = base.pipeline_config(TASKS[0], 0), short.pipeline_config(TASKS[0], 0)
    assert collect_config(pb).train_env_steps == PIPELINE_PRESETS["cpu"]["expert_env_steps"]
    assert collect_config(ps) == dataclasses.replace(collect_config(pb), train_env_steps=30_000)
    assert imitate_config(ps) == imitate_config(pb)
    assert "--expert-env-steps 30000 " in short.command("wd")
    assert f"--expert-env-steps {PIPELINE_PRESETS['cpu']['expert_env_steps']} " in base.command("wd")


def test_cli_unknown_method_is_one_line_before_anything_runs(tmp_path):
    res = run_cli(tmp_path / "wd", "sweep", "--tasks", TASKS[0], "--methods", "cdred,gail", "--preset", "smoke")
    assert res.returncode == 2
    assert one_line_error(res) == ("error: --methods 'gail': choose from cdred, red, iqmpc, bc, cdred-plan, "
                                   "cdred-rnd-init, cdred-sigma5, cdred-obs, cdred-gexp, cdred-demos5, "
                                   "cdred-demos10, cdred-tremble, cdred-mppi-eval, cdred-rnd-init-mppi-eval, "
                                   "iqmpc-mppi-eval")
    assert not (tmp_path / "wd").exists() or not any((tmp_path / "wd").iterdir())


def test_iqm_and_its_stratified_bootstrap_ci_match_rliable():
    scores = np.random.default_rng(0).random((5, 3)) * 100  # 5 runs x 3 tasks
    # rliable 1.2.0: metrics.aggregate_iqm(scores) and get_interval_estimates(..., reps=2000) on this matrix
    point, lo, hi = sw.iqm_ci([scores[:, j] for j in range(3)])
    assert point == pytest.approx(57.625094366554094, abs=1e-9) == sw.iqm(scores)
    assert lo == pytest.approx(29.86, abs=3.0) and hi == pytest.approx(77.30, abs=3.0)
    assert sw.iqm_ci([scores[:, j] for j in range(3)]) == (point, lo, hi)  # seeded: the same every time
    assert sw.iqm_ci([np.full(4, 7.0), np.full(2, 7.0)]) == (7.0, 7.0, 7.0)
    assert sw.iqm(np.arange(8.0)) == pytest.approx(3.5)  # the middle four of eight
