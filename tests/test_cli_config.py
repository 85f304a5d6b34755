"""``--config FILE.yaml`` of the stage commands, ``cdred rerun``, ``-v`` logging and task-id shell completion,
through the real ``cdred`` console script in a subprocess (and the option parser's own functions)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

import cli  # noqa: E402
from cdred_pipeline.errors import UsageError  # noqa: E402
from cli_helpers import cdred_command, cli_env, one_line_error, run_cli  # noqa: E402

COLLECT = ("--threads", "1", "collect-experts", "mw:reach")
TASK, LENGTH = "dmc:cartpole-balance", 50


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _only(workdir: Path, stage: str) -> Path:
    """The one complete artifact folder of ``stage``."""
    (folder,) = [p for p in (workdir / stage).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


def _arrays(zarr_path: Path) -> dict[str, np.ndarray]:
    """Every array of a dataset store, by name."""
    import zarr

    root = zarr.open_group(str(zarr_path), mode="r")
    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str) -> None:
        for name, arr in group.arrays():
            out[prefix + name] = np.asarray(arr[...])
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(root, "")
    return out


# ----------------------------------------------------------------------------------- config values
def test_config_keys_take_dashes_underscores_and_lists():
    """A key may be the option's spelling or its parameter name, with dashes or underscores; a YAML list is
    the comma list the option parses."""
    command = cli.main.commands["evaluate"]
    values = cli.config_values({"episode-length": 20, "num_envs": 2, "seeds": [0, 1], "tremble": "0,0.1"},
                               command, "test.yaml")
    assert values == {"episode_length": 20, "num_envs": 2, "seeds": "0,1", "tremble": "0,0.1"}
    assert cli.config_values({"steps": 500}, cli.main.commands["imitate"], "x")["env_steps"] == 500


def test_unknown_config_key_lists_the_valid_ones():
    with pytest.raises(UsageError) as exc:
        cli.config_values({"episodez": 3}, cli.main.commands["collect-experts"], "c.yaml")
    message = str(exc.value)
    assert "unknown key 'episodez'" in message and "random-episodes" in message and "\n" not in message


def test_bad_config_files_are_one_line_errors(tmp_path):
    """An unknown key, a YAML syntax error and a non-mapping file exit 2 with one line, nothing written."""
    cases = {"unknown.yaml": ("policy: scripted\nepisodez: 3\n", "valid keys:"),
             "broken.yaml": ("policy: [scripted\n", "not valid YAML"),
             "list.yaml": ("- scripted\n", "must be a mapping")}
    for name, (text, expected) in cases.items():
        res = run_cli(tmp_path / "w", *COLLECT, "--config", str(_write(tmp_path / name, text)))
        assert res.returncode == 2, res.stderr
        assert expected in one_line_error(res)
    assert not (tmp_path / "w" / "demos").exists()


# ----------------------------------------------------------------------------------- collect + rerun
@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> dict:
    """A 3-episode scripted mw:reach dataset collected with options from a config file and a flag that
    overrides one of them, with -v."""
    root = tmp_path_factory.mktemp("config")
    config = _write(root / "collect.yaml", "policy: scripted\nepisodes: 5\nrandom_episodes: 1\n")
    res = subprocess.run([*cdred_command(), "--workdir", str(root / "w"), "-v", *COLLECT, "--config", str(config),
                          "--episodes", "3"], env=cli_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    folder = _only(root / "w", "demos")
    return {"root": root, "workdir": root / "w", "folder": folder, "res": res,
            "manifest": json.loads((folder / "manifest.json").read_text())}


def test_config_file_sets_options_and_flags_win(collected):
    m = collected["manifest"]
    assert m["config"]["episodes"] == 3 and m["config"]["random_episodes"] == 1  # the flag beat the file's 5
    assert m["replay"]["command"] == "collect-experts"
    assert m["replay"]["params"]["policy"] == "scripted" and m["replay"]["params"]["task"] == "mw:reach"


def test_verbose_logs_progress_on_stderr_not_stdout(collected):
    res = collected["res"]
    key = collected["manifest"]["key"]
    assert f"INFO cdred_pipeline.artifacts: demos/{key}: new artifact" in res.stderr
    assert f"demos/{key}: complete in" in res.stderr
    assert "INFO" not in res.stdout and f"key: {key}" in res.stdout


def test_rerun_of_a_complete_artifact_is_a_cached_no_op(collected):
    key = collected["manifest"]["key"]
    res = run_cli(collected["workdir"], "--threads", "1", "rerun", key[:8])
    assert res.returncode == 0, res.stderr
    assert f"cached: demos/{key} was complete already" in res.stdout
    assert json.loads((collected["folder"] / "manifest.json").read_text())["finished"] == collected["manifest"]["finished"]


def test_rerun_of_a_copied_manifest_remakes_the_same_dataset(collected, tmp_path):
    """The artifact folder deleted, a copy of its manifest replays the collection: the same key, the same
    arrays."""
    before = _arrays(collected["folder"] / "demos.zarr")
    copy = tmp_path / "saved-manifest.json"
    shutil.copyfile(collected["folder"] / "manifest.json", copy)
    moved = tmp_path / "old"
    shutil.move(collected["folder"], moved)
    res = run_cli(collected["workdir"], "--threads", "1", "rerun", str(copy))
    assert res.returncode == 0, res.stderr
    assert "cached:" not in res.stdout and f"key: {collected['manifest']['key']}" in res.stdout
    after = _arrays(collected["folder"] / "demos.zarr")
    assert sorted(after) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_rerun_without_a_record_or_manifest_is_one_line(collected, tmp_path):
    manifest = dict(collected["manifest"])
    manifest.pop("replay")
    bare = _write(tmp_path / "bare.json", json.dumps(manifest))
    res = run_cli(collected["workdir"], "rerun", str(bare))
    assert res.returncode == 2 and "no replay record" in one_line_error(res)
    res = run_cli(collected["workdir"], "rerun", str(tmp_path / "missing.json"))
    assert res.returncode == 2 and "no such manifest file" in one_line_error(res)


# ----------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained cartpole agent checkpoint (policy prior, no planning)."""
    import torch

    from cdred_pipeline.agent import AgentConfig, TDMPC2Agent

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("agent") / "agent.pt"
    TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=LENGTH), (5,), 1, device="cpu").save(
        path, extra={"task": TASK, "obs": "state", "episode_length": LENGTH})
    return path


def test_evaluate_from_config_lists_then_rerun_remakes_the_report(checkpoint, tmp_path):
    """YAML lists and comma strings are the same settings (the flags' run is cached); a deleted report is
    made again by ``rerun`` of its manifest's copy, with the same key and rows."""
    config = _write(tmp_path / "eval.yaml", "tremble: [0, 0.5]\nepisodes: 2\nseeds: '0'\ndevice: cpu\n")
    workdir = tmp_path / "w"
    res = run_cli(workdir, "--threads", "1", "evaluate", str(checkpoint), "--config", str(config))
    assert res.returncode == 0, res.stderr
    res = run_cli(workdir, "--threads", "1", "evaluate", str(checkpoint), "--tremble", "0,0.5", "--episodes", "2",
                  "--device", "cpu")
    assert res.returncode == 0 and "cached: eval/" in res.stdout, res.stdout + res.stderr
    folder = _only(workdir, "eval")
    report = json.loads((folder / "report.json").read_text())
    copy = tmp_path / "eval-manifest.json"
    shutil.copyfile(folder / "manifest.json", copy)
    shutil.rmtree(folder)
    res = run_cli(workdir, "--threads", "1", "rerun", str(copy))
    assert res.returncode == 0, res.stderr
    assert "cached:" not in res.stdout and f"key:    {folder.name}" in res.stdout
    assert json.loads((folder / "report.json").read_text())["rows"] == report["rows"]


# ----------------------------------------------------------------------------------- completion
def _complete(words: str) -> list[str]:
    """What click's bash completion offers for the command line ``words`` (the last word being completed)."""
    env = {**cli_env(), "_CDRED_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    res = subprocess.run(cdred_command(), env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [line.split(",", 1)[1] for line in res.stdout.splitlines() if line.startswith("plain,")]


def test_task_arguments_complete_task_ids():
    assert {"mw:reach", "mw:reach-wall"} <= set(_complete("cdred collect-experts mw:rea"))
    assert all(t.startswith("mw:rea") for t in _complete("cdred pipeline mw:rea"))
    assert "dmc:cartpole-balance" in _complete("cdred pipeline dmc:cart")
    assert "mw:reach,dmc:cartpole-swingup" in _complete("cdred sweep --tasks mw:reach,dmc:cartpole-sw")
