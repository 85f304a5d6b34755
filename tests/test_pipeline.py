"""cdred pipeline end to end in real subprocesses: the smoke preset on dmc:cartpole-balance
completes and prints the summary table; a SIGKILL in the middle of the imitate stage and a rerun skip
the finished stages, asserted from the manifests (never from timing); a rerun with everything done is
served from the cache; a changed late-stage option redoes only that stage.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest

from cdred_pipeline.errors import UsageError
from cdred_pipeline.stages import pipeline as pl
from cli_helpers import kill_cli_when, run_cli as _cli

TASK = "dmc:cartpole-balance"
ARGS = ("pipeline", TASK, "--preset", "smoke", "--device", "cpu")
STAGES = {"expert": "experts", "demos": "demos", "imitate": "imitate", "evaluate": "eval"}


def _complete(root: Path, stage: str) -> list[Path]:
    d = root / stage
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []


def _partials(root: Path) -> list[Path]:
    return sorted(root.glob("*/.*.partial"))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _stage_lines(stdout: str) -> dict[str, tuple[str, str]]:
    """The summary table's stage rows: name -> (key, wall or 'cached')."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(expert|demos|render-visual|imitate|evaluate)\s+([0-9a-f]{16})\s+(cached|[\d.]+s)$",
                     line.strip())
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


# ------------------------------------------------------------------------------ module fixture
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Run the smoke pipeline, SIGKILL it once the imitate stage has written its first checkpoint into
    its partial folder (so experts and demos are complete), then rerun it to the end."""
    root = tmp_path_factory.mktemp("pipeline") / "wd"
    returncode = kill_cli_when(root, ARGS, lambda: bool(list((root / "imitate").glob(".*.partial/agent.pt"))),
                               timeout=300, what="the imitate stage wrote no checkpoint")
    assert returncode == -signal.SIGKILL
    at_kill = {s: [p.name for p in _complete(root, d)] for s, d in STAGES.items()}
    before = {s: _manifest(_complete(root, STAGES[s])[0]) for s in ("expert", "demos")}
    partial_imitate = _manifest(next((root / "imitate").glob(".*.partial")))
    res = _cli(root, *ARGS, timeout=400)
    return {"root": root, "at_kill": at_kill, "before": before, "partial_imitate": partial_imitate, "res": res}


# ------------------------------------------------------------------------------------- tests
def test_killed_inside_imitate(interrupted):
    k = interrupted["at_kill"]
    assert len(k["expert"]) == 1 and len(k["demos"]) == 1  # both complete before the kill
    assert k["imitate"] == [] and k["evaluate"] == []  # killed mid-imitate
    assert interrupted["partial_imitate"]["status"] == "partial"


def test_rerun_completes_and_prints_the_summary(interrupted):
    res = interrupted["res"]
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"cdred pipeline {TASK} (preset smoke, obs state, reward cdred)" in out
    for label in ("random", "expert (demos)", "CDRED imitation, p=0 ", "CDRED imitation, p=0.1"):
        assert any(line.startswith(label) for line in out.splitlines()), (label, out)
    imitation_rows = [ln.split() for ln in out.splitlines() if ln.startswith("CDRED imitation")]
    assert imitation_rows and all(r[-2] == "-" for r in imitation_rows), out  # DMControl: no success flag
    root = interrupted["root"]
    ev_dir = _complete(root, "eval")[0]
    assert f"report:          {ev_dir / 'report.json'}" in out and (ev_dir / "report.json").is_file()
    assert (ev_dir / "tremble.png").is_file() and (_complete(root, "imitate")[0] / "curve.png").is_file()
    rep = json.loads((ev_dir / "report.json").read_text())
    assert [a["p"] for a in rep["aggregates"]] == [0.0, 0.1]


def test_rerun_skipped_finished_stages(interrupted):
    root = interrupted["root"]
    res = interrupted["res"]
    assert res.returncode == 0, res.stderr
    # exactly one complete artifact per stage, nothing partial left
    for stage, d in STAGES.items():
        assert len(_complete(root, d)) == 1, stage
    assert _partials(root) == []
    # the stages finished before the kill were not redone: their manifests are untouched
    for s in ("expert", "demos"):
        now = _manifest(_complete(root, STAGES[s])[0])
        was = interrupted["before"][s]
        assert (now["created"], now["finished"], now["key"]) == (was["created"], was["finished"], was["key"]), s
        assert now.get("resumed", 0) == 0
    # the interrupted stage resumed from its partial folder and checkpoint
    imit = _manifest(_complete(root, "imitate")[0])
    assert imit["created"] == interrupted["partial_imitate"]["created"] and imit["resumed"] >= 1
    assert imit["train"]["resumed_from"] and imit["train"]["resumed_from"] > 0
    # and the chain is wired by keys: demos <- expert, imitate <- demos, eval <- imitate
    keys = {s: _complete(root, d)[0].name for s, d in STAGES.items()}
    assert _manifest(_complete(root, "demos")[0])["inputs"] == {"expert": keys["expert"]}
    assert imit["inputs"] == {"dataset": keys["demos"]}
    assert _manifest(_complete(root, "eval")[0])["inputs"] == {"agent": keys["imitate"]}
    rows = _stage_lines(res.stdout)
    assert rows["expert"] == (keys["expert"], "cached") and rows["demos"] == (keys["demos"], "cached")
    assert rows["imitate"][0] == keys["imitate"] and rows["imitate"][1] != "cached"


def test_rerun_with_everything_done_is_all_cached(interrupted, tmp_path):
    root = tmp_path / "wd"
    shutil.copytree(interrupted["root"], root)
    finished = {d: _manifest(_complete(root, d)[0])["finished"] for d in STAGES.values()}
    res = _cli(root, *ARGS, timeout=400)
    assert res.returncode == 0, res.stderr
    rows = _stage_lines(res.stdout)
    assert set(rows) == set(STAGES) and all(v[1] == "cached" for v in rows.values()), res.stdout
    assert {d: _manifest(_complete(root, d)[0])["finished"] for d in STAGES.values()} == finished
    assert _partials(root) == []


def test_changed_late_option_redoes_only_that_stage(interrupted, tmp_path):
    root = tmp_path / "wd"
    shutil.copytree(interrupted["root"], root)
    old = {d: [(p.name, _manifest(p)["finished"]) for p in _complete(root, d)] for d in STAGES.values()}
    res = _cli(root, *ARGS, "--tremble", "0,0.3", timeout=400)
    assert res.returncode == 0, res.stderr
    for d in ("experts", "demos", "imitate"):
        assert [(p.name, _manifest(p)["finished"]) for p in _complete(root, d)] == old[d], d
    evals = _complete(root, "eval")
    assert len(evals) == 2 and old["eval"][0][0] in [p.name for p in evals]
    rows = _stage_lines(res.stdout)
    assert [rows[s][1] == "cached" for s in ("expert", "demos", "imitate", "evaluate")] == [True, True, True, False]
    assert "CDRED imitation, p=0.3" in res.stdout


def test_bad_pipeline_settings_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="preset"):
        pl.PipelineConfig(task=TASK, preset="huge")
    with pytest.raises(UsageError, match="unknown pipeline setting"):
        pl.PipelineConfig(task=TASK, preset="smoke", overrides={"imitate_stepz": 5})
    res = _cli(tmp_path, "pipeline", TASK, "--preset", "smoke", "--tremble", "2")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tremble" in lines[0], res.stderr
    assert not (tmp_path / "experts").exists()
