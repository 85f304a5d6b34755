"""Faults of the command line, each through the real ``cdred`` console script (real MuJoCo, real stores).

Covers: comma lists with empty items or repeats, out-of-range counts and seeds, unknown presets and an
unusable --workdir are one-line errors (exit 2) that leave nothing in the work dir; bad input is never
retried; a missing or foreign checkpoint or dataset is exit 4 in every command, in one complete line;
with MUJOCO_GL unset and no display the CLI renders with a headless backend it names, and a backend
that cannot render fails before any work; reruns say "cached"; render-visual prints its contact sheet
and says when it renders an already-rendered dataset again; evaluate prints its videos folder; the
tremble plot and the contact sheet carry their labels; the exit-code table of docs/cli.md is the code's.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from cdred_pipeline.agent import AgentConfig, TDMPC2Agent  # noqa: E402
from cdred_pipeline.envs.gl import loadable  # noqa: E402
from cdred_pipeline.errors import EXIT_CODES, UsageError  # noqa: E402
from cdred_pipeline.executor import ExecutorError, make_executor  # noqa: E402
from cdred_pipeline.stages import collect_experts as ce  # noqa: E402
from cdred_pipeline.stages import evaluate as ev  # noqa: E402
from cli_helpers import cdred_command, cli_env, one_line_error, run_cli  # noqa: E402
from demo_helpers import checkpoint_demos  # noqa: E402

torch.set_num_threads(1)
TASK, LENGTH = "dmc:cartpole-balance", 20
DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


# ------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny untrained cartpole agent checkpoint (20-step episodes)."""
    path = tmp_path_factory.mktemp("faults") / "agent.pt"
    agent = TDMPC2Agent(AgentConfig.preset("tiny", plan=False, episode_length=LENGTH, seed=0), (5,), 1, device="cpu")
    agent.save(path, extra={"task": TASK, "obs": "state", "episode_length": LENGTH})
    return path


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict:
    """Two 20-step cartpole demos collected from a tiny checkpoint (with probe frames)."""
    return checkpoint_demos(tmp_path_factory.mktemp("demos"), TASK, LENGTH)


def _files(workdir: Path) -> list[Path]:
    """Every file or folder left under the work dir (an artifact, a .partial, a lock)."""
    return sorted(workdir.rglob("*")) if workdir.exists() else []


def _failed(res: subprocess.CompletedProcess, code: int, workdir: Path) -> str:
    """The one-line error of a run that failed with ``code`` and left nothing in ``workdir``."""
    assert res.returncode == code, (res.returncode, res.stderr)
    line = one_line_error(res)
    assert _files(workdir) == [], _files(workdir)
    return line


def _headless_env(**extra: str) -> dict[str, str]:
    """The CLI environment with MUJOCO_GL, PYOPENGL_PLATFORM and the display unset."""
    env = {k: v for k, v in cli_env().items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY",
                                                           "WAYLAND_DISPLAY")}
    return {**env, **extra}


def _run(workdir: Path, *args: str, env: dict[str, str], quiet: bool = True) -> subprocess.CompletedProcess:
    flags = ["-q"] if quiet else []
    return subprocess.run([*cdred_command(), "--workdir", str(workdir), *flags, *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _loads(*names: str) -> bool:
    return loadable(names)


# --------------------------------------------------------------- options read strictly (exit 2)
BAD_OPTIONS = [
    (("--tremble", "0.1,,0.2"), "empty item"),
    (("--tremble", "0.1,0.1"), "twice"),
    (("--tremble", "0.1,0.10"), "twice"),
    (("--tremble", "0.1,"), "empty item"),
    (("--seeds", "1,1"), "twice"),
    (("--seeds", "0,,1"), "empty item"),
    (("--seeds", "-5"), ">= 0"),
    (("--episode-length", "0"), "--episode-length"),
    (("--episodes", "0"), "--episodes"),
    (("--videos", "-1"), "--videos"),
]


@pytest.mark.parametrize("opt,why", BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_evaluate_options_are_read_strictly(ckpt, tmp_path, opt, why):
    line = _failed(run_cli(tmp_path / "wd", "evaluate", str(ckpt), *opt), 2, tmp_path / "wd")
    assert why in line and opt[0] in line
    assert "attempts" not in line and "rerun" not in line  # bad input is never retried


OTHER_BAD = [
    ("collect-experts", TASK, "--seed", "-1"),
    ("collect-experts", TASK, "--seeds", "0,0"),
    ("collect-experts", f"{TASK},{TASK}"),
    ("collect-experts", f"{TASK},"),
    ("collect-experts", "mw:reach-wall", "--policy", "scripted", "--preset", "huge"),
    ("collect-experts", TASK, "--episode-length", "0"),
    ("imitate", "somewhere.zarr", "--preset", "huge"),
    ("imitate", "somewhere.zarr", "--seed", "-1"),
    ("pipeline", TASK, "--preset", "huge"),
    ("pipeline", TASK, "--tremble", "0,0"),
    ("sweep", "--tasks", f"{TASK},,mw:reach"),
    ("sweep", "--tasks", TASK, "--methods", "cdred,cdred"),
    ("sweep", "--tasks", TASK, "--preset", "huge"),
    ("sweep", "--tasks", TASK, "--seeds", "0,1,0"),
    ("sweep", "--tasks", TASK, "--workers", "2", "--gpus-per-run", "0.5"),
    ("sweep", "--tasks", TASK, "--gpus-per-run", "1.5"),
    ("collect-experts", TASK, "--seeds", "0,1", "--gpus-per-run", "0.25"),
    ("evaluate",),
]


@pytest.mark.parametrize("args", OTHER_BAD, ids=[" ".join(a) for a in OTHER_BAD])
def test_bad_options_are_one_line_before_any_work(tmp_path, args):
    _failed(run_cli(tmp_path / "wd", *args), 2, tmp_path / "wd")


def test_configs_check_their_values_before_any_work():
    with pytest.raises(UsageError, match="empty item"):
        ev.parse_tremble_list("0.1,,0.2")
    with pytest.raises(UsageError, match="twice"):
        ev.EvalConfig(tremble=(0.1, 0.1))
    with pytest.raises(UsageError, match=">= 0"):
        ev.EvalConfig(seeds=(-5,))
    with pytest.raises(UsageError, match="--episode-length"):
        ev.EvalConfig(episode_length=0)
    with pytest.raises(UsageError, match="--seed"):
        ce.CollectConfig(task=TASK, seed=-1)


# ------------------------------------------------------------------------- work dir and retries
@pytest.mark.parametrize("kind", ["proc", "file"])
def test_unusable_workdir_is_one_line(ckpt, tmp_path, kind):
    if kind == "proc":
        workdir = Path("/proc/cdred-cannot-create")
    else:
        workdir = tmp_path / "a-file"
        workdir.write_text("not a folder")
    res = run_cli(workdir, "evaluate", str(ckpt))
    assert res.returncode == 2, res.stderr
    assert "--workdir" in one_line_error(res)


def _value_error(x: int) -> int:
    _value_error.calls += 1  # type: ignore[attr-defined]
    raise ValueError(f"unit {x}: expected non-negative integer")


def _runtime_error(x: int) -> int:
    _runtime_error.calls += 1  # type: ignore[attr-defined]
    raise RuntimeError(f"unit {x}: the device ran out of memory")


def test_errors_of_the_arguments_are_not_retried():
    _value_error.calls = _runtime_error.calls = 0  # type: ignore[attr-defined]
    with make_executor("local") as ex, pytest.raises(ExecutorError) as info:
        ex.map(_value_error, [0], retries=2, progress=False)
    assert _value_error.calls == 1  # type: ignore[attr-defined]
    assert "not retried" in str(info.value) and "rerun" not in str(info.value)
    with make_executor("local") as ex, pytest.raises(ExecutorError) as info:
        ex.map(_runtime_error, [0], retries=2, progress=False)
    assert _runtime_error.calls == 3 and "rerun the same command" in str(info.value)  # type: ignore[attr-defined]


# ------------------------------------------------------------------- input files: exit 4 everywhere
def test_missing_inputs_are_exit_4_in_every_command(tmp_path):
    missing = str(tmp_path / "missing")
    for args in (("evaluate", f"{missing}.pt"), ("evaluate", "nosuchkey"), ("imitate", f"{missing}.zarr"),
                 ("package", "inspect", f"{missing}.zarr"),
                 ("collect-experts", TASK, "--checkpoint", f"{missing}.pt")):
        res = run_cli(tmp_path / "wd", *args)
        assert res.returncode == 4, (args, res.stderr)
        assert "missing" in one_line_error(res) or "nosuchkey" in res.stderr
        assert not any(p.is_file() for p in _files(tmp_path / "wd")), args


@pytest.mark.parametrize("command", ["evaluate", "collect-experts"])
def test_a_file_that_is_not_a_checkpoint_is_one_complete_line(tmp_path, command):
    bad = tmp_path / "notes.pt"
    bad.write_text("these are my notes, not weights\n")
    args = ("evaluate", str(bad)) if command == "evaluate" else ("collect-experts", TASK, "--checkpoint", str(bad))
    line = _failed(run_cli(tmp_path / "wd", *args), 4, tmp_path / "wd")
    assert str(bad) in line and "not a cdred agent checkpoint" in line
    assert "Weights only" not in line and line.endswith("imitate")  # cdred's own line, not torch's cut short


def test_docs_exit_code_table_is_the_code_table():
    rows = re.findall(r"^\| (\d+) \| ", DOCS.read_text(), flags=re.M)
    assert [int(r) for r in rows] == list(EXIT_CODES)
    res = subprocess.run([*cdred_command(), "--help"], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert all(re.search(rf"^\s+{code}\s+", res.stdout, flags=re.M) for code in EXIT_CODES), res.stdout


# ------------------------------------------------------------------------------ rendering backend
def test_unset_mujoco_gl_renders_headless_and_says_which(ckpt, tmp_path):
    if not _loads("libEGL.so.1", "libEGL.so", "libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so"):
        pytest.skip("neither libEGL nor libOSMesa is installed here")
    res = _run(tmp_path / "wd", "evaluate", str(ckpt), "--episodes", "1", "--videos", "1", env=_headless_env())
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"note: MUJOCO_GL is unset .* MUJOCO_GL=(egl|osmesa) ", lines[0]), res.stderr
    (videos,) = [ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("videos:")]
    assert len(list(Path(videos).glob("*.mp4"))) == 1
    rerun = _run(tmp_path / "wd", "evaluate", str(ckpt), "--episodes", "1", "--videos", "1", env=_headless_env())
    assert rerun.returncode == 0 and "cached: eval/" in rerun.stdout, rerun.stdout


def test_scripted_collection_with_unset_mujoco_gl(tmp_path):
    if not _loads("libEGL.so.1", "libEGL.so", "libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so"):
        pytest.skip("neither libEGL nor libOSMesa is installed here")
    args = ("collect-experts", "mw:reach", "--policy", "scripted", "--episodes", "1", "--random-episodes", "0")
    res = _run(tmp_path / "wd", *args, env=_headless_env())
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("note: MUJOCO_GL is unset") and len(res.stderr.strip().splitlines()) == 1
    assert "cached" not in res.stdout
    again = _run(tmp_path / "wd", *args, env=_headless_env())
    assert again.returncode == 0 and "cached: demos/" in again.stdout, again.stdout


def test_a_backend_that_cannot_render_fails_before_any_work(ckpt, tmp_path):
    if _loads("libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so"):
        pytest.skip("libOSMesa is installed here: MUJOCO_GL=osmesa renders")
    env = _headless_env(MUJOCO_GL="osmesa")
    for args in (("collect-experts", "mw:reach", "--policy", "scripted", "--episodes", "1"),
                 ("collect-experts", TASK, "--checkpoint", str(ckpt), "--episodes", "1"),
                 ("evaluate", str(ckpt), "--videos", "1")):
        res = _run(tmp_path / "wd", *args, env=env)
        assert res.returncode == 3, (args, res.stderr)
        assert "MUJOCO_GL=osmesa" in one_line_error(res)
        assert not any(p.is_file() for p in _files(tmp_path / "wd")), (args, _files(tmp_path / "wd"))


# ------------------------------------------------------------------------------------ render-visual
def test_render_visual_prints_its_sheet_says_cached_and_names_rendered_input(demos, tmp_path):
    wd = tmp_path / "wd"
    res = _run(wd, "render-visual", str(demos["path"]), "--size", "32", "--no-verify", env=_headless_env())
    assert res.returncode == 0, res.stderr
    (sheet,) = [ln.split(": ", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("contact sheet: ")]
    assert Path(sheet).is_file()
    again = run_cli(wd, "render-visual", str(demos["path"]), "--size", "32", "--no-verify")
    assert again.returncode == 0 and "cached" in again.stdout, again.stdout
    rendered = res.stdout.splitlines()[0]
    twice = run_cli(wd, "render-visual", rendered, "--size", "32", "--no-verify")
    assert twice.returncode == 0, twice.stderr
    lines = twice.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: ") and "already holds camera" in lines[0], twice.stderr
    assert twice.stdout.splitlines()[0] != rendered  # a new dataset, and the note says so
    cached = run_cli(wd, "render-visual", rendered, "--size", "32", "--no-verify")
    assert "cached" in cached.stdout and cached.stderr.strip() == "", cached.stderr  # nothing rendered: no note


def test_collect_and_imitate_reruns_say_cached(demos, ckpt, tmp_path):
    wd = tmp_path / "wd"
    args = ("collect-experts", TASK, "--checkpoint", str(ckpt), "--episodes", "1", "--random-episodes", "0",
            "--episode-length", str(LENGTH), "--no-plan", "--device", "cpu")
    first = run_cli(wd, *args)
    assert first.returncode == 0 and "cached" not in first.stdout, first.stderr
    assert "cached: demos/" in run_cli(wd, *args).stdout
    im = ("imitate", str(demos["path"]), "--preset", "tiny", "--steps", "40", "--seed-steps", "10",
          "--eval-every", "40", "--eval-episodes", "1", "--device", "cpu", "--no-plan")
    first = run_cli(wd, *im)
    assert first.returncode == 0 and "cached" not in first.stdout, first.stderr
    assert "cached: imitate/" in run_cli(wd, *im).stdout


# ------------------------------------------------------------------------------------------ plots
def _aggs(means: list[float], std: float, episodes: int) -> list[dict]:
    return [{"p": p, "episodes": episodes, "return_mean": m, "return_std": std, "success_rate": 0.5}
            for p, m in zip((0.0, 0.1, 0.2), means)]


def test_tremble_plot_labels_its_error_bars_and_does_not_zoom_on_a_drop():
    import matplotlib.pyplot as plt

    scores = {"expert": {"return_mean": 900.0}, "random": {"return_mean": 40.0}}
    fig = ev.tremble_figure(_aggs([880.0, 860.0, 850.0], 10.0, 30), scores, "t")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("std over 30 episodes" in t for t in labels), labels
    assert any(t.startswith("expert") for t in labels) and any(t.startswith("random") for t in labels)
    assert ax.get_ylim()[0] == 0.0  # a 3% drop is drawn as 3%, not across the whole axis
    assert "30 episodes per p" in fig.texts[0].get_text()
    plt.close(fig)
    assert len(ev.tremble_figure(_aggs([1.0, 1.0, 1.0], 0.0, 3), scores, "t", success=False).axes) == 1
    plt.close("all")
    lo, _ = ev.return_axis_limits(_aggs([-300.0, -350.0, -400.0], 5.0, 4), {"random": -500.0, "expert": -100.0})
    assert lo <= -500.0  # negative returns: the axis reaches the random level


def test_contact_sheet_labels_episode_and_step_on_each_tile(tmp_path):
    import imageio.v3 as iio

    from cdred_pipeline.render import contact_sheet

    grey = np.full((11, 64, 64, 3), 128, dtype=np.uint8)  # 10 steps: frames t = 0..10
    path = contact_sheet(lambda i: grey, 3, tmp_path / "sheet.png", episodes=3, columns=3, gap=2)
    sheet = iio.imread(path)
    tiles = [[sheet[2 + r * 66:2 + r * 66 + 64, 2 + c * 66:2 + c * 66 + 64] for c in range(3)] for r in range(3)]
    corners = [[t[:12, :40].copy() for t in row] for row in tiles]
    for row in tiles:
        for t in row:
            assert (t[:12, :20] > 200).any() and (t[:12, :20] == 0).any()  # light text on a black box
            assert (t[32:, 32:] == 128).all()  # the rest of the frame is untouched
    assert not np.array_equal(corners[0][0], corners[0][1])  # another step, another label
    assert not np.array_equal(corners[0][0], corners[1][0])  # another episode, another label
